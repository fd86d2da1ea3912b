"""The concept dictionary: every active neuron in exactly one concept, the same ids on every
image, concept relevance = the sum of its members' r_p, distances and features equal slow
formulas, the concise-list rule, and dictionaries of another model or index refused.

The flat dictionary route is ``hierarchy="none"`` (:data:`FLAT`); the hierarchies with a
dictionary are tested in tests/test_hierarchy.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from conceptree import ConceptExplainer, Explanation, InputError
from conceptree.concepts.options import DEFAULT_HIERARCHY, ConceptOptions
from conceptree.dictionary import (
    ConceptDictionary,
    DictionaryBuilder,
    concise_list,
    neuron_relevance,
)
from conceptree.dictionary.features import condensed_euclidean, index_features
from conceptree.index import build_index
from conceptree.runs import ModelSource

from .helpers import resnet10t_weights

SPEC = "timm:resnet10t"
FLAT = ConceptOptions(hierarchy="none")


@pytest.fixture
def setup(dictionary_setup):
    """``(folder, source, index, dictionary)``: the session's (tests/conftest.py)."""
    return dictionary_setup


def test_every_active_neuron_in_exactly_one_concept(setup, tmp_path):
    _, _, index, dictionary = setup
    assert dictionary.k == 12 and dictionary.n_neurons == index.n_neurons
    members = np.concatenate([c.columns for c in dictionary.concepts])
    assert len(members) == len(set(members.tolist())) == int((dictionary.labels >= 0).sum())
    inactive = np.flatnonzero(dictionary.labels < 0)
    assert not np.any(index.relevance[:, inactive])  # inactive = zero relevance on every reference image
    active = np.setdiff1d(np.arange(index.n_neurons), inactive)
    assert np.all(np.any(index.relevance[:, active] != 0, axis=0))
    # ids by decreasing mean share; representative = the member with the largest mean share
    shares = [c.mean_share for c in dictionary.concepts]
    assert shares == sorted(shares, reverse=True)
    for c in dictionary.concepts:
        assert dictionary.neuron_names()[int(c.columns[0])] == c.representative
        assert dictionary.neuron_share[c.columns[0]] == dictionary.neuron_share[c.columns].max()
    again = ConceptDictionary(dictionary.save(tmp_path / "d"))
    assert np.array_equal(again.labels, dictionary.labels) and again.key == dictionary.key
    assert [c.references for c in again.concepts] == [c.references for c in dictionary.concepts]
    assert [c.representative for c in again.concepts] == [c.representative for c in dictionary.concepts]


def test_same_ids_on_two_images_and_relevance_is_the_members_sum(setup):
    folder, source, index, dictionary = setup
    explainer = ConceptExplainer.from_spec(source.load(), dictionary=dictionary, index=index, options=FLAT)
    layers = [layer.name for layer in explainer.engine.layers]
    seen = []
    for name in ("chelsea.png", "coffee.png"):
        attribution = explainer.attribute(folder / name)
        r = neuron_relevance(attribution, dictionary)
        exact = torch.cat([attribution.layer_relevance[n].double().flatten(1).sum(1) for n in layers]).numpy()
        assert np.allclose(r, exact, rtol=0, atol=0)
        per_concept = dictionary.concept_relevance(r)
        slow = np.array([r[c.columns].sum() for c in dictionary.concepts])
        assert np.allclose(per_concept, slow, rtol=1e-12, atol=1e-12)
        explanation = explainer.explain(folder / name)
        for concept in explanation.concepts.concepts:
            members = dictionary.concepts[concept.concept_id]
            assert {f"{n.layer}:{n.channel}" for n in concept.neurons} == {dictionary.neuron_names()[int(c)] for c in members.columns}
            assert concept.relevance == pytest.approx(sum(n.relevance for n in concept.neurons), rel=1e-9, abs=1e-12)
            assert concept.relevance == pytest.approx(per_concept[concept.concept_id], rel=1e-9, abs=1e-12)
            assert concept.representative.relevance == max(n.relevance for n in concept.neurons)
        listed = [c.concept_id for c in explanation.concepts.concepts]
        assert listed == concise_list(per_concept).tolist()
        seen.append(per_concept)
        # the k strongest on request
        fixed = explainer.explain(folder / name, k=5)
        assert [c.concept_id for c in fixed.concepts.concepts] == np.argsort(-per_concept, kind="stable")[:5].tolist()
    # the same partition on both images: one id means the same neurons; the ranking may differ
    assert seen[0].shape == seen[1].shape == (dictionary.k,)


def test_explanation_with_a_dictionary_saves_and_reloads(setup, tmp_path):
    folder, source, _, dictionary = setup
    explainer = ConceptExplainer.from_spec(source.load(), dictionary=dictionary, options=FLAT)
    explanation = explainer.explain(folder / "rocket.png")
    explanation.save(tmp_path / "e")
    again = Explanation.load(tmp_path / "e")
    assert [c.concept_id for c in again.concepts.concepts] == [c.concept_id for c in explanation.concepts.concepts]
    assert again.concepts.method == "dictionary" and again.concepts.dictionary["k"] == dictionary.k
    html = (tmp_path / "e" / "report.html").read_text()
    assert f"D{explanation.concepts.concepts[0].concept_id}" in html and "model&#x27;s dictionary" not in html
    assert "concepts of the model's dictionary" in html
    # saving without rendering writes the data only; rendering the reloaded data gives the same page
    explanation.save(tmp_path / "data", render=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["explanation.json", "maps.npz"]
    Explanation.load(tmp_path / "data").render(tmp_path / "data")
    assert (tmp_path / "data" / "report.html").read_text() == html


def test_dictionary_of_another_model_or_index_refused(setup, tmp_path):
    folder, source, index, dictionary = setup
    other = ModelSource(spec=SPEC, weights=resnet10t_weights(tmp_path / "other.pth", 1), kwargs={"num_classes": 10})
    with pytest.raises(InputError, match="dictionary at .* was built with other model parameters") as err:
        ConceptExplainer.from_spec(other.load(), dictionary=dictionary)
    assert "\n" not in str(err.value)
    other_index = build_index(folder, other, tmp_path / "other_idx", executor="local", progress=False)
    with pytest.raises(InputError, match="dictionary .* and the index at .* differ in model parameters"):
        dictionary.check_index(other_index)
    with pytest.raises(InputError, match="no concept dictionary at"):
        ConceptDictionary(tmp_path / "missing")
    with pytest.raises(InputError, match="cannot cut"):
        DictionaryBuilder(k=10**6).fit(index)
    with pytest.raises(InputError, match="k must be a positive int"):
        DictionaryBuilder(k=0)


def test_condensed_distances_equal_pdist_and_features_the_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 9)).astype(np.float32)
    assert np.allclose(condensed_euclidean(x, block=5), pdist(x.astype(np.float64)), atol=1e-5)
    relevance = rng.normal(size=(4, 6))
    relevance[:, 2] = 0.0  # an inactive neuron
    total = np.abs(relevance).sum(1)
    peaks = rng.integers(0, 56 * 56, size=(4, 6))
    feats, active = index_features(relevance, total, peaks, (56, 56), location_weight=2.0)
    assert active.tolist() == [True, True, False, True, True, True]
    p = 4  # slow formula for one neuron
    z = relevance[:, p] / total
    y = (peaks[:, p] // 56 + 0.5) / 56 - 0.5
    xx = (peaks[:, p] % 56 + 0.5) / 56 - 0.5
    f = np.concatenate([z, 2 * z * y, 2 * z * xx])
    assert np.allclose(feats[3], f / np.linalg.norm(f), atol=1e-6)


def test_concise_list_rule():
    r = np.array([0.05, 0.5, -0.1, 0.3, 0.1, 0.05])
    # positive total 1.0: 0.5 + 0.3 = 0.8 reaches 80 % with two concepts
    assert concise_list(r).tolist() == [1, 3]
    assert concise_list(r, share=0.9).tolist() == [1, 3, 4]
    assert concise_list(r, share=0.9, cap=2).tolist() == [1, 3]
    assert concise_list(r, k=4).tolist() == [1, 3, 4, 0]  # ties: smaller id first
    assert concise_list(-np.ones(3)).tolist() == [0]
    with pytest.raises(InputError, match="k must be in 1..6"):
        concise_list(r, k=7)


def test_dictionary_cli(setup, tmp_path):
    folder, _, index, _ = setup
    cmd = [sys.executable, "-m", "conceptree", "dictionary", str(index.path), "--out", str(tmp_path / "d"), "--k", "7"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "7 concepts of" in done.stdout and ConceptDictionary(tmp_path / "d").k == 7
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already holds a dictionary; pass --overwrite" in again.stderr
    assert "Traceback" not in again.stderr


def test_evaluation_scores_a_dictionary_at_every_k(setup, tmp_path):
    from conceptree.evaluation.runner import EvaluationConfig, _load_dictionaries, dictionary_maps

    folder, source, _, dictionary = setup
    spec = source.load()
    explainer = ConceptExplainer.from_spec(spec)
    attribution = explainer.attribute(folder / "astronaut.png")
    native, by_k = dictionary_maps(explainer.engine, attribution, dictionary, (5, 10, 20))
    listed = concise_list(dictionary.concept_relevance(neuron_relevance(attribution, dictionary)))
    size = tuple(attribution.forward.input.shape[-2:])
    assert native.shape == (len(listed), *size)
    assert sorted(by_k) == [5, 10] and by_k[5].shape == (5, *size)  # K = 20 > the dictionary's 12 concepts
    assert np.allclose(by_k[10][:5], by_k[5])  # the K strongest: nested
    # each map keeps its concept's relevance (layer-group maps conserve the members' sum)
    top = np.argsort(-dictionary.concept_relevance(neuron_relevance(attribution, dictionary)), kind="stable")[:5]
    sums = by_k[5].reshape(5, -1).sum(1)
    assert np.allclose(sums, dictionary.concept_relevance(neuron_relevance(attribution, dictionary))[top], rtol=1e-3, atol=1e-6)
    dictionary.save(tmp_path / "d")
    other = ModelSource(spec=SPEC, weights=resnet10t_weights(tmp_path / "o.pth", 2), kwargs={"num_classes": 10}).load()
    with pytest.raises(InputError, match="other model parameters"):
        _load_dictionaries({"dictionary": str(tmp_path / "d")}, ConceptExplainer.from_spec(other).engine, other)
    with pytest.raises(InputError, match="also a variant of ours"):
        EvaluationConfig(dictionaries={"ours": str(tmp_path / "d")})


def test_trace_flags_dictionary_concepts_new_by_id(setup):
    folder, source, _, dictionary = setup
    explainer = ConceptExplainer.from_spec(source.load(), dictionary=dictionary, options=FLAT)
    reference = explainer.explain(folder / "chelsea.png", k=3)
    comparison = explainer.trace(reference, [folder / "hubble_deep_field.png"], explain_new=True)
    own = explainer.explain(folder / "hubble_deep_field.png", target=reference.target.index)
    ref_ids = {c.concept_id for c in reference.concepts.concepts}
    flagged = {own.concepts.concepts[c.rank - 1].concept_id for c in comparison.images[0].new_concepts if c.new}
    assert flagged == {c.concept_id for c in own.concepts.concepts} - ref_ids


def test_references_are_the_dictionary_lookup_when_built_from_this_index(setup):
    folder, source, index, dictionary = setup
    explainer = ConceptExplainer.from_spec(source.load(), dictionary=dictionary, index=index, n_references=3,
                                           options=FLAT)
    explanation = explainer.explain(folder / "coffee.png")
    row = index.row_of_pixels(explanation.image_info.hash)
    assert row is not None  # coffee.png is in the index: it is left out of its own references
    for concept, refs in zip(explanation.concepts.concepts, explanation.references):
        stored = [r for r, _ in dictionary.concepts[concept.concept_id].references if r != row][:3]
        assert [ref.row for ref in refs.references] == stored


def test_explain_many_with_a_dictionary(setup, tmp_path):
    import json

    from conceptree.runs import explain_many

    folder, source, _, dictionary = setup
    path = dictionary.save(tmp_path / "d")
    result = explain_many([folder / "chelsea.png", folder / "rocket.png"], source, tmp_path / "run", executor="local",
                          progress=False, dictionary=str(path))
    assert [r.status for r in result.records] == ["ok", "ok"]
    for record in result.records:
        data = json.loads((tmp_path / "run" / record.folder / "explanation.json").read_text())
        # the default with a dictionary is the route measured best (docs/results/concise.md): a top level
        assert data["concept_set"]["hierarchy"]["route"] == DEFAULT_HIERARCHY["with_index"]
        assert data["concept_set"]["top_level"]
