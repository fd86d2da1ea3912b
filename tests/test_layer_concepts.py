"""The one-pass concept route: own-layer maps as features, concept maps, cuts at K, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptree import InputError
from conceptree.attribution import CRPEngine
from conceptree.concepts import find_concepts
from conceptree.concepts.concepts import cut_concepts
from conceptree.concepts.layer_maps import layer_group_maps, layer_neuron_maps, to_grid
from conceptree.concepts.options import PRESETS, ConceptOptions, preset
from conceptree.evaluation.methods import ours_maps
from conceptree.explain import concept_maps, explain, neuron_features
from conceptree.models.cifar_resnet import cifar_resnet

from .helpers import randomize_batchnorm


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    with torch.no_grad():
        model = randomize_batchnorm(cifar_resnet(20))
    x = torch.randn(1, 3, 32, 32)
    engine = CRPEngine(model)
    attribution = engine.attribute(x)
    return model, x, engine, attribution


def test_layer_maps_sum_to_each_neurons_relevance(setup):
    _, _, engine, attribution = setup
    names = [layer.name for layer in engine.layers]
    neurons = layer_neuron_maps(attribution, names, map_size=(8, 8))
    assert len(neurons) == sum(attribution.layer_relevance[n].shape[0] for n in names)
    for name in names[:: max(1, len(names) // 5)]:
        rows = np.flatnonzero(np.array(neurons.layers)[neurons.layer_index] == name)
        expected = attribution.channel_relevance(name).double().numpy()
        np.testing.assert_allclose(neurons.relevance[rows], expected, atol=1e-6 * np.abs(expected).max())
    # area pooling keeps a larger map's total (times the cell-area ratio); 32x32 -> 8x8
    first = attribution.layer_relevance[names[0]][:3]
    np.testing.assert_allclose(to_grid(first, (8, 8)).sum((1, 2)).numpy() * 16, first.sum((1, 2)).numpy(), rtol=1e-4)
    picked = layer_neuron_maps(attribution, names, {names[-1]: [3, 1]})
    assert picked.channel.tolist() == [3, 1] and picked.maps.shape == (2, 56, 56)
    with pytest.raises(InputError, match="has no relevance"):
        layer_neuron_maps(attribution, names, {"fc": [0]})


def test_concept_maps_conserve_their_groups_relevance(setup):
    _, _, engine, attribution = setup
    neurons = neuron_features(engine, attribution, "layer", 300, (8, 8))
    concepts = find_concepts(neurons, k_range=(4, 8))
    groups = concepts.concepts
    for kind in ("layer-group", "group", "representative"):
        maps = concept_maps(engine, attribution, groups, kind)
        assert maps.shape == (concepts.k, 32, 32)
        expected = [c.relevance for c in groups] if kind != "representative" else [c.representative.relevance for c in groups]
        scale = max(abs(v) for v in expected)
        np.testing.assert_allclose(maps.sum((1, 2)), expected, atol=1e-4 * scale)
    with pytest.raises(InputError, match="unknown concept map"):
        concept_maps(engine, attribution, groups, "mean")


def test_cut_at_k_is_the_same_tree_with_exactly_k_concepts(setup):
    _, _, engine, attribution = setup
    neurons = neuron_features(engine, attribution, "layer", 200, (8, 8))
    concepts = find_concepts(neurons, k_range=(4, 8))
    for k in (2, concepts.k, 12):
        cut = cut_concepts(concepts, neurons, k)
        assert len(cut) == k
        members = np.sort(np.concatenate([c.index for c in cut]))
        np.testing.assert_array_equal(members, np.sort(concepts.active_index))  # a partition of the active neurons
        fixed = find_concepts(neurons, k=k)
        assert sorted(tuple(sorted(c.index)) for c in cut) == sorted(tuple(sorted(c.index)) for c in fixed.concepts)
    assert [c.rank for c in cut_concepts(concepts, neurons, concepts.k)] == list(range(1, concepts.k + 1))
    with pytest.raises(InputError, match="cannot cut"):
        cut_concepts(concepts, neurons, 10_000)
    result = ours_maps(engine, attribution, PRESETS["default"].replace(max_neurons=200, k_range=(4, 8)), ks=(3, 5, 9))
    assert {k: m.shape[0] for k, m in result.at_k.items()} == {3: 3, 5: 5, 9: 9}


def test_layer_group_maps_place_relevance_where_it_lies(setup):
    _, _, _, attribution = setup
    name = next(iter(attribution.layer_relevance))
    rel = attribution.layer_relevance[name]
    maps = layer_group_maps(attribution, [{name: [0]}, {name: [0, 1]}], (32, 32))
    np.testing.assert_allclose(maps[0], rel[0].numpy(), rtol=1e-5, atol=1e-9)  # same grid: the map itself
    np.testing.assert_allclose(maps[1], (rel[0] + rel[1]).numpy(), rtol=1e-5, atol=1e-9)


def test_options_and_presets():
    assert preset("paper").features == "input" and preset("paper").concept_map == "representative"
    assert preset("paper").max_neurons is None
    assert PRESETS["default"].features == "layer"
    with pytest.raises(InputError, match="unknown preset"):
        preset("fast")
    with pytest.raises(InputError, match="unknown features"):
        ConceptOptions(features="pixels")
    with pytest.raises(InputError, match="max_neurons"):
        ConceptOptions(max_neurons=0)


def test_explain_records_and_uses_the_route(setup):
    model, x, _, _ = setup
    small = ConceptOptions(k_range=(3, 5), max_neurons=150)
    result = explain(model, x, options=small)
    assert result.options.features == "layer" and result.options.concept_map == "layer-group"
    assert result.concept_maps.shape == (result.concepts.k, 32, 32)
    np.testing.assert_allclose(result.concept_maps.sum((1, 2)), [c.relevance for c in result.concepts.concepts],
                               atol=1e-4 * max(abs(c.relevance) for c in result.concepts.concepts))
    paper = explain(model, x, options=small.replace(features="input", concept_map="representative"))
    assert paper.options.features == "input"
    np.testing.assert_allclose(paper.concept_maps.sum((1, 2)), [c.representative.relevance for c in paper.concepts.concepts],
                               atol=1e-4 * max(abs(c.representative.relevance) for c in paper.concepts.concepts))
    with pytest.raises(InputError, match="unknown preset"):
        explain(model, x, options="pixels")
