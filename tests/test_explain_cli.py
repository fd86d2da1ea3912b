"""explain(): save/load round trip; CLI through the real entry point; bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conceptree.concepts.options import ConceptOptions
from conceptree.explain import Explanation, explain
from conceptree.explainer import ConceptExplainer
from conceptree.models.cifar_resnet import CIFAR10_CLASSES

from . import helpers


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "conceptree", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_save_load_round_trip(tmp_path, cifar_image):
    explainer = ConceptExplainer(helpers.cifar_model(), class_names=list(CIFAR10_CLASSES),
                                 options=ConceptOptions(k_range=(3, 12)))
    result = explainer.explain(cifar_image, keep_neuron_maps=True)
    assert result.target_name == "cat"
    assert 3 <= result.concepts.k <= 12 and len(result.concept_maps) == result.concepts.k
    result.save(tmp_path / "exp")
    for name in ("explanation.json", "maps.npz", "concepts.png"):
        assert (tmp_path / "exp" / name).is_file()
    again = Explanation.load(tmp_path / "exp")
    assert json.loads(json.dumps(again.to_dict())) == json.loads(json.dumps(result.to_dict()))
    assert np.array_equal(again.concept_maps, result.concept_maps.astype(np.float32))
    assert np.array_equal(again.concepts.linkage, result.concepts.linkage)
    assert again.neuron_maps.dtype == np.float16 and np.array_equal(again.neuron_maps, result.neuron_maps)
    assert again.neuron_names == result.neuron_names and len(again.neuron_names) == 688
    assert again.options == result.options and again.composite == result.composite and again.model == result.model
    assert again.member_maps.shape == (result.concepts.k, 4, 56, 56)  # the clustering grid
    assert np.array_equal(again.member_maps, result.member_maps)
    # the default concept map is its members' own-layer maps in input geometry: it sums to the
    # concept's relevance
    assert again.options.concept_map == "layer-group"
    for concept, cmap in zip(again.concepts.concepts, again.concept_maps):
        assert float(cmap.sum()) == pytest.approx(concept.relevance, rel=1e-3, abs=1e-6)


def test_cli_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "explain" in proc.stdout and "demo" in proc.stdout


@pytest.mark.parametrize(
    "setup,args,message",
    [
        (lambda p: None, ["explain", "missing.jpg"], "image missing.jpg not found"),
        (lambda p: (p / "bad.jpg").write_bytes(b"not an image"), ["explain", "bad.jpg"], "cannot read image bad.jpg"),
        (lambda p: None, ["explain", "x.jpg", "--model", "keras:foo"], "unknown model spec"),
        (lambda p: (p / "out").mkdir() or (p / "out" / "f").write_text("x"), ["explain", "x.jpg", "--out", "out"], "exists and is not empty"),
        (lambda p: torch.save({"conv.weight": torch.zeros(1)}, p / "w.pth"), ["explain", "x.jpg", "--model", "torchvision:resnet18", "--weights", "w.pth"], "do not match the architecture"),
        (lambda p: torch.save(torch.nn.Linear(2, 2), p / "m.pth"), ["explain", "x.jpg", "--model", "torchvision:resnet18", "--weights", "m.pth"], "not a plain state dict"),
        (lambda p: torch.save(torch.nn.Linear(2, 2), p / "m.pth"), ["explain", "x.jpg", "--model", "pickle:m.pth"], "--trust-checkpoint"),
        (lambda p: None, ["explain", "x.jpg", "--model", "torchvision:resnet18", "--target", "1000"], "outside the model's 1000 classes"),
        (lambda p: None, ["explain", "x.jpg", "--model", "torchvision:resnet18", "--target", "no such bird"], "matches 0 classes"),
        (lambda p: None, ["explain", "x.jpg", "--out", "x.jpg/sub"], "cannot write to"),
        (lambda p: None, ["explain", "x.jpg", "--preset", "fast"], "unknown preset 'fast'"),
        (lambda p: None, ["explain", "x.jpg", "--features", "pixels"], "unknown features 'pixels'"),
        (lambda p: None, ["explain", "x.jpg", "--concept-map", "mean"], "unknown concept map 'mean'"),
        (lambda p: None, ["explain", "x.jpg", "--coverage", "1.5"], "coverage must be in (0, 1]"),
        (lambda p: None, ["explain", "x.jpg", "--stability", "-1"], "--stability -1 must be >= 0"),
        (lambda p: None, ["explain", "x.jpg", "--k-rule", "gap"], "unknown k rule 'gap'"),
        (lambda p: None, ["explain", "x.jpg", "--k-rule", "stability", "--stability", "0"], "needs stability resamples"),
        (lambda p: None, ["explain", "x.jpg", "--precision", "half"], "unknown precision 'half'"),
    ],
)
def test_cli_bad_input_one_line_error(tmp_path, setup, args, message):
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.jpg")
    setup(tmp_path)
    proc = run_cli(*args, "--quiet", cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("note:", "  warnings.warn", "/"))]
    assert lines and lines[-1].startswith("error: ") and message in lines[-1], proc.stderr
    assert not (tmp_path / "conceptree-out").exists()  # nothing half-written


def test_grayscale_and_rgba_are_converted_with_a_note(tmp_path):
    from PIL import Image

    from conceptree.models.loading import load_image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.zeros((20, 20, 4), np.uint8)).save(tmp_path / "a.png")
    for name, mode in (("g.png", "L"), ("a.png", "RGBA")):
        image, note = load_image(str(tmp_path / name))
        assert image.mode == "RGB" and f"is {mode}; converted to RGB" in note


def test_target_by_unique_name():
    from conceptree.models.loading import LoadedModel, Preprocessing

    spec = LoadedModel("x", torch.nn.Identity(), Preprocessing(), ["Ara macao (Scarlet Macaw)", "Sula granti (Nazca Booby)"])
    assert spec.resolve_target("scarlet macaw") == 0
    assert spec.resolve_target("1") == 1
    assert spec.resolve_target("auto") is None


def test_explain_accepts_a_spec_and_an_image_file(tmp_path):
    """The Python API takes a model spec and a file, like the CLI (random torchvision weights)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3),
    ).eval()
    result = explain(model, tmp_path / "x.png", target="b", class_names=["a", "b", "c"],
                     options=ConceptOptions(k_range=(2, 5)))
    assert result.target.index == 1 and result.target_name == "b"
    assert result.image.shape == (224, 224, 3) and result.heatmap.shape == (224, 224)
