"""ConceptExplainer: one traced engine, explain then trace from Python alone; model configs;
no global state; the CLI's uniform errors."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from conceptree import compare
from conceptree.concepts.options import ConceptOptions
from conceptree.errors import InputError
from conceptree.explain import explain
from conceptree.explainer import ConceptExplainer
from conceptree.explanation import Explanation
from conceptree.models.config import load_model_config
from conceptree.models.loading import Preprocessing

SMALL = ConceptOptions(k_range=(2, 4), max_neurons=100)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3),
    ).eval()


@pytest.fixture()
def photos(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_explain_then_trace_from_python_alone(photos, tmp_path):
    """The issue's round trip: ``ref = explain(model, "x.png"); compare(ref, model, ["x.png"])``."""
    model = tiny_model()
    ref = explain(model, photos[0], options=SMALL)
    assert ref.preprocessing is not None  # recorded by the library, not only by the CLI
    result = compare(ref, model, [photos[0], photos[1]])
    same, other = result.images
    assert [c.ratio for c in same.concepts] == pytest.approx([1.0] * ref.concepts.k, rel=1e-5)
    assert same.name == "p0.png" and other.name == "p1.png"

    explainer = ConceptExplainer(model, preprocessing=Preprocessing(resize=40, crop=32), options=SMALL)
    engine = explainer.engine
    first = explainer.explain(photos[0])
    traced = explainer.trace(first, photos[1:], explain_new=True)
    assert explainer.engine is engine  # traced once, reused by explain, trace and explain_new
    assert len(traced.images) == 2
    ref_sets = [{(n.layer, n.channel) for n in c.neurons} for c in first.concepts.concepts]
    for image, photo in zip(traced.images, photos[1:]):  # one flag per own concept, by the overlap rule
        own = explainer.explain(photo, target=first.target.index)
        assert [c.rank for c in image.new_concepts] == [c.rank for c in own.concepts.concepts]
        for flag, concept in zip(image.new_concepts, own.concepts.concepts):
            members = {(n.layer, n.channel) for n in concept.neurons}
            best = max(len(members & s) / len(members) for s in ref_sets)
            assert flag.best_overlap == pytest.approx(best) and flag.new == (best < 0.5)
    first.save(tmp_path / "ref")
    again = explainer.trace(tmp_path / "ref", [photos[0]])  # a saved explanation works the same
    assert [c.ratio for c in again.images[0].concepts] == pytest.approx([1.0] * first.concepts.k, rel=1e-5)


def test_trace_refuses_another_model_or_other_layers(photos):
    model = tiny_model()
    ref = explain(model, photos[0], options=SMALL)
    other = tiny_model()
    with torch.no_grad():
        other[0].weight.add_(1.0)
    with pytest.raises(InputError, match="hash mismatch"):
        ConceptExplainer(other).trace(ref, [photos[1]])
    with pytest.raises(InputError, match="for_explanation"):
        ConceptExplainer(model, layers=["0"], options=SMALL).trace(ref, [photos[1]])


def test_constructor_validates_its_parameters():
    model = tiny_model()
    with pytest.raises(InputError, match="torch.nn.Module"):
        ConceptExplainer("timm:resnet18")
    with pytest.raises(InputError, match="unknown preset"):
        ConceptExplainer(model, options="fast")
    with pytest.raises(InputError, match="batch_size"):
        ConceptExplainer(model, batch_size=0)
    with pytest.raises(InputError, match="class_names has 2 names"):
        ConceptExplainer(model, class_names=["a", "b"])
    with pytest.raises(TypeError):
        ConceptExplainer(model, None)  # keyword-only parameters
    explainer = ConceptExplainer(model, class_names=["a", "b", "c"], options=SMALL)
    with pytest.raises(InputError, match="matches 0 classes"):
        explainer.explain(torch.randn(1, 3, 32, 32), target="zebra")
    with pytest.raises(InputError, match="file path, a PIL image or a tensor"):
        explainer.explain(np.zeros((32, 32, 3)))


def test_save_leaves_the_matplotlib_backend_alone(photos, tmp_path):
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice (a notebook would have its inline backend)
    try:
        explain(tiny_model(), photos[0], options=SMALL).save(tmp_path / "exp")
        assert matplotlib.get_backend() == "svg"
        assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
    finally:
        matplotlib.use(before)
    page = (tmp_path / "exp" / "report.html").read_text()
    assert page.count("class='card'") == Explanation.load(tmp_path / "exp").concepts.k


def test_model_config_json_and_toml(tmp_path):
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    cfg = {"spec": "torchvision:alexnet", "weights": "w.pth", "labels": "labels.txt",
           "preprocessing": {"resize": 40, "crop": 32, "mean": 0.5, "std": [0.2, 0.3, 0.4]}}
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    loaded = load_model_config(tmp_path / "m.json")
    assert loaded.weights == str(tmp_path / "w.pth") and loaded.labels == str(tmp_path / "labels.txt")
    (tmp_path / "m.toml").write_text('spec = "torchvision:alexnet"\nweights = "w.pth"\n[preprocessing]\nresize = 40\n')
    assert load_model_config(tmp_path / "m.toml").preprocessing == {"resize": 40}
    prep = Preprocessing.from_dict({**Preprocessing().to_dict(), **cfg["preprocessing"]})
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.2, 0.3, 0.4)
    bad = {
        "x.json": ("{not json", "not valid JSON"),
        "y.json": (json.dumps({"weights": "w.pth"}), "needs a 'spec' string"),
        "z.json": (json.dumps({"spec": "timm:resnet18", "colour": 1}), "unknown keys ['colour']"),
        "p.json": (json.dumps({"spec": "pickle:m.pth"}), "pickle: specs are refused"),
        "q.json": (json.dumps({"spec": "timm:resnet18", "preprocessing": {"resize": 256, "crop": 300}}), "0 <= crop <= resize"),
        "r.json": (json.dumps({"spec": "timm:resnet18", "preprocessing": {"interpolation": "nearest"}}),
                   "unknown interpolation 'nearest'"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_model_config(tmp_path / name)
    with pytest.raises(InputError, match="cannot read model config"):
        load_model_config(tmp_path / "missing.json")


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "conceptree", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize(
    "args,message",
    [
        (["explain"], "Missing argument 'IMAGE'"),
        (["explain", "x.jpg", "--no-such-option"], "No such option: --no-such-option"),
        (["explain", "x.jpg", "--k", "many"], "Invalid value for '--k'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["compare"], "Missing argument 'EXPLANATION'"),
        (["evaluate"], "Missing option '--data'"),
    ],
)
def test_cli_usage_mistakes_print_usage_and_exit_2(tmp_path, args, message):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Usage:" in proc.stderr and message.lower() in proc.stderr.lower()
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "config,message",
    [
        ("{not json", "error: model config bad.json is not valid JSON"),
        (json.dumps({"spec": "timm:resnet18", "colour": 1}), "error: model config bad.json: unknown keys"),
        (None, "error: cannot read model config bad.json"),
    ],
)
def test_cli_bad_model_config_is_one_error_line(tmp_path, config, message):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.jpg")
    if config is not None:
        (tmp_path / "bad.json").write_text(config)
    proc = run_cli("explain", "x.jpg", "--model-config", "bad.json", "--quiet", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    proc = run_cli("explain", "x.jpg", "--model-config", "bad.json", "--model", "timm:resnet18", cwd=tmp_path)
    assert proc.returncode == 2 and "drop --model" in proc.stderr


def test_cli_unexpected_error_says_where_to_report_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    from conceptree import cli

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli.explain, "_explain", broken)  # the command group module
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", "x.jpg"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("internal error: RuntimeError: boom") and "--debug" in err[0]
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", "explain", "x.jpg"])
