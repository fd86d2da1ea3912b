"""Artefacts saved by the previous release (0.1.0 at commit 5d549b4) load with this one, or are refused in
one line: an explanation, a reference index and a concept dictionary, made by
``tests/data/release_0_1/make_release_artefacts.py`` with that release's code (the index and dictionary
of the built-in default model over 5 scikit-image photos, the explanation of a seeded tiny CNN)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from conceptree import Composite, ConceptExplainer, ConceptOptions, Explanation, InputError, load_model
from conceptree.compatibility import composite_key, key_mismatch
from conceptree.dictionary import ConceptDictionary
from conceptree.index import ConceptIndex
from conceptree.models.loading import model_hash

DATA = Path(__file__).parent / "data" / "release_0_1"


def tiny_model() -> nn.Module:  # as in make_release_artefacts.py
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 5)).eval()


def test_an_old_explanation_loads_renders_and_is_a_reference(tmp_path):
    old = Explanation.load(DATA / "explanation")
    assert old.composite == Composite()  # the default rules then are the default rules now
    assert old.concepts.k >= 2 and old.summary()
    old.save(tmp_path / "again")
    assert {"explanation.json", "maps.npz", "report.html", "concepts.png"} <= {p.name for p in (tmp_path / "again").iterdir()}
    model = tiny_model()
    assert model_hash(model) == old.model.hash
    x = torch.load(DATA / "input.pt", weights_only=True)
    comparison = ConceptExplainer.for_explanation(model, old).trace(old, [x])
    ratios = [trace.ratio for trace in comparison.images[0].concepts]
    assert ratios == pytest.approx([1.0] * len(ratios), abs=1e-4)  # the same input: each group keeps its relevance


def test_an_old_explanation_of_a_newer_format_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "future"
    shutil.copytree(DATA / "explanation", folder)
    data = json.loads((folder / "explanation.json").read_text())
    data["format"] = 99
    (folder / "explanation.json").write_text(json.dumps(data))
    with pytest.raises(InputError) as info:
        Explanation.load(folder)
    assert "\n" not in str(info.value)


def test_an_old_index_and_dictionary_pass_the_key_check_and_explain(tmp_path):
    shutil.copytree(DATA / "index", tmp_path / "index")  # the explainer caches the index's cell evidence there
    index = ConceptIndex(tmp_path / "index")
    dictionary = ConceptDictionary(DATA / "dictionary")
    spec = load_model("default")
    explainer = ConceptExplainer.from_spec(spec, index=index, dictionary=dictionary,
                                           options=ConceptOptions(hierarchy="none", graph=False))
    assert key_mismatch(index.key, explainer.model_info.hash, composite_key(explainer.engine.composite), [layer.name for layer in explainer.engine.layers],
                        spec.preprocessing.to_dict()) == []
    x = torch.load(DATA / "input.pt", weights_only=True)
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear")
    explanation = explainer.explain(x)
    assert explanation.concepts.method == "dictionary" and explanation.concepts.k >= 1
