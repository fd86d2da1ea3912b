"""conceptree.compare (conceptree.comparison): a reference's neuron groups traced on other images."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from conceptree import compare
from conceptree.comparison import OUTPUT_FILES
from conceptree.concepts.options import ConceptOptions
from conceptree.errors import InputError
from conceptree.explain import Explanation, explain
from conceptree.explainer import ConceptExplainer

from .helpers import randomize_batchnorm

SMALL = ConceptOptions(k_range=(3, 6), max_neurons=300)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = explain(model, x, target=3, options=SMALL)
    return model, x, ref


def test_same_image_gives_ratio_one_and_conserving_group_maps(setup):
    model, x, ref = setup
    result = compare(ref, model, [x])
    (im,) = result.images
    assert len(im.concepts) == ref.concepts.k
    for trace, concept, gmap in zip(im.concepts, ref.concepts.concepts, im.group_maps):
        assert trace.relevance == pytest.approx(concept.relevance, rel=1e-5)
        assert trace.ratio == pytest.approx(1.0, rel=1e-5) and not trace.missing
        assert gmap.sum() == pytest.approx(concept.relevance, rel=1e-3, abs=1e-4 * abs(im.total_relevance))
    # the group map is the sum of its neurons' maps: the representative's map is part of it
    assert im.group_maps.shape == (ref.concepts.k, 64, 64)


def test_changed_image_flags_missing_and_new(setup):
    model, x, ref = setup
    changed = x.clone()
    changed[..., :, 32:] = 0.0  # right half removed
    result = compare(ref, model, [x, changed], explain_new=True, max_neurons=300, missing_fraction=0.9)
    same, other = result.images
    assert not any(c.new for c in same.new_concepts)  # its own concepts are the reference's groups
    assert all(c.best_overlap == pytest.approx(1.0) for c in same.new_concepts)
    ratios = np.array([c.ratio for c in other.concepts])
    assert np.any(np.abs(ratios - 1) > 0.05)
    assert [c.missing for c in other.concepts] == [bool(r < 0.9) for r in ratios]
    assert all(0.0 <= c.best_overlap <= 1.0 for c in other.new_concepts)


def test_bad_inputs(setup, tmp_path):
    model, x, ref = setup
    other = torchvision.models.resnet18(weights=None).eval()
    with pytest.raises(InputError, match="hash mismatch"):
        compare(ref, other, [x])
    with pytest.raises(InputError, match="explained at"):
        compare(ref, model, [torch.randn(1, 3, 48, 48)])
    with pytest.raises(InputError, match="cannot read an explanation"):
        compare(tmp_path, model, [x])


def test_cli_round_trip_and_errors(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (80, 70, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    base = [sys.executable, "-m", "conceptree"]
    model = ["--model", "torchvision:resnet18", "--weights", str(weights)]
    proc = subprocess.run([*base, "explain", str(tmp_path / "a.png"), *model, "--resize", "72", "--crop", "64",
                           "--k-range", "3:5", "--max-neurons", "200", "--quiet", "--out", str(tmp_path / "ref")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "cmp"
    proc = subprocess.run([*base, "compare", str(tmp_path / "ref"), str(tmp_path / "b.png"), str(tmp_path / "a.png"),
                           *model, "--max-neurons", "200", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert all((out / name).is_file() for name in OUTPUT_FILES)
    data = json.loads((out / "comparison.json").read_text())
    assert [im["name"] for im in data["images"]] == ["b.png", "a.png"]
    ref = Explanation.load(tmp_path / "ref")
    again = data["images"][1]  # the reference image itself, preprocessed as the reference was
    assert [c["ratio"] for c in again["concepts"]] == pytest.approx([1.0] * ref.concepts.k, rel=1e-4)
    page = (out / "comparison.html").read_text()  # the default's maps are own-layer maps, and the page says so
    assert "comparison" in page and "own-layer relevance maps" in page and "conditional maps" not in page
    proc = subprocess.run([*base, "compare", str(tmp_path / "ref"), str(tmp_path / "broken.jpg"), *model,
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "cannot read image" in proc.stderr and not (tmp_path / "x").exists()
    proc = subprocess.run([*base, "compare", str(tmp_path / "ref"), str(tmp_path / "b.png"), "--model", "torchvision:resnet18",
                           "--out", str(tmp_path / "y")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "hash mismatch" in proc.stderr


def test_explain_reuses_precomputed_neurons(setup):
    from conceptree.explain import neuron_features, strongest_neurons

    model, x, ref = setup
    engine = ConceptExplainer(model, options=SMALL).engine  # the explainer's own engine (its precision)
    attribution = engine.attribute(x, 3)
    wanted = strongest_neurons(engine, attribution, 300)
    assert sum(len(v) for v in wanted.values()) == 300
    assert ref.options.features == "layer" and ref.options.max_neurons == 300
    neurons = neuron_features(engine, attribution, "layer", 300)  # what explain computes itself
    again = ConceptExplainer(model, options=SMALL).explain(x, target=3, neurons=neurons)
    assert again.concepts.k == ref.concepts.k
    assert [c.representative for c in again.concepts.concepts] == [c.representative for c in ref.concepts.concepts]
    np.testing.assert_allclose(again.concept_maps, ref.concept_maps, rtol=1e-5, atol=1e-8)
    # the paper's route: precomputed input-level maps give the same concepts as recomputing them
    paper_options = SMALL.replace(features="input", concept_map="representative")
    paper = explain(model, x, target=3, options=paper_options)
    inputs = engine.neuron_maps(attribution, channels=wanted, map_size=(56, 56))
    again = ConceptExplainer(model, options=paper_options).explain(x, target=3, neurons=inputs)
    assert [c.representative for c in again.concepts.concepts] == [c.representative for c in paper.concepts.concepts]
    np.testing.assert_allclose(again.concept_maps, paper.concept_maps, rtol=1e-5, atol=1e-8)
    with pytest.raises(InputError, match="max_neurons must be >= 1"):
        strongest_neurons(engine, attribution, 0)
