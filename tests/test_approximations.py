"""The two approximations of the paper's route: pooling below the map size, and a coverage cut."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from conceptree import InputError
from conceptree.attribution import CRPEngine
from conceptree.concepts.features import strongest_neurons
from conceptree.concepts.options import ConceptOptions

from . import helpers

CHANNELS = {"conv1": range(4), "layer1.0.conv1": range(8), "layer3.1.conv2": range(8)}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    engine = CRPEngine(helpers.torchvision_model("resnet18"))
    attribution = engine.attribute(torch.randn(1, 3, 64, 64))
    return engine, attribution, engine.neuron_maps(attribution, 8, CHANNELS)


def test_pooling_at_the_input_resolution_only_is_the_exact_map_pooled(resnet):
    """Nothing but the input is finer than 32x32 (conv1 and the max-pool give 32x32 and 16x16):
    pooling there equals pooling the exact map."""
    engine, attribution, exact = resnet
    assert {n.op for n in engine._graph.fine_nodes(attribution.forward, (32, 32))} == {"placeholder"}
    pooled = engine.neuron_maps(attribution, 8, CHANNELS, map_size=(32, 32), pool_below_map_size=True)
    reference = F.adaptive_avg_pool2d(torch.from_numpy(exact.maps)[:, None], (32, 32))[:, 0].numpy()
    np.testing.assert_allclose(pooled.maps, reference, rtol=1e-5, atol=1e-6 * np.abs(reference).max())
    np.testing.assert_allclose(pooled.map_sums, exact.map_sums, rtol=1e-5, atol=1e-9)


def test_pooling_below_the_first_stride_4_stage_keeps_every_sum(resnet):
    """At 16x16 the 32x32 stem (conv1, its ReLU) stops the propagation: the shape is approximate
    (the maps still agree in the large), the sums are exact."""
    engine, attribution, exact = resnet
    fine = engine._graph.fine_nodes(attribution.forward, (16, 16))
    assert {n.name for n in fine} >= {"x", "conv1", "relu"} and "maxpool" not in {n.name for n in fine}
    pooled = engine.neuron_maps(attribution, 8, CHANNELS, map_size=(16, 16), pool_below_map_size=True)
    reference = F.adaptive_avg_pool2d(torch.from_numpy(exact.maps)[:, None], (16, 16))[:, 0].numpy()
    np.testing.assert_allclose(pooled.map_sums, exact.map_sums, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(pooled.maps.sum((1, 2)), reference.sum((1, 2)), rtol=1e-4, atol=1e-9)
    live = np.abs(reference).reshape(len(pooled), -1).max(1) > 0
    a, b = pooled.maps[live].reshape(live.sum(), -1), reference[live].reshape(live.sum(), -1)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.9 and not np.allclose(a, b, rtol=1e-3)  # approximate, and not by accident exact
    # the stem's neurons start at its input (the conv's first step is batched), i.e. at the input: exact
    stem = pooled.layer_index == pooled.layers.index("conv1")
    np.testing.assert_allclose(pooled.maps[stem], reference[stem], rtol=1e-5, atol=1e-6 * np.abs(reference).max())


def test_channels_last_activations_are_never_pooled():
    """ConvNeXt's permuted (B, h, w, C) tensors are not feature maps: the sums stay exact."""
    torch.manual_seed(0)
    model = helpers.randomize_batchnorm(timm.create_model("convnext_atto", pretrained=False, num_classes=10))
    engine = CRPEngine(model.eval())
    attribution = engine.attribute(torch.randn(1, 3, 64, 64))
    fine = engine._graph.fine_nodes(attribution.forward, (8, 8))
    assert fine and all(attribution.forward.shapes[n][1] != attribution.forward.shapes[n][2]
                        for n in fine if n.op != "placeholder")
    channels = {"stages.0.blocks.0.mlp.fc1": range(6), "stages.1.blocks.0.conv_dw": range(6)}
    exact = engine.neuron_maps(attribution, 8, channels)
    pooled = engine.neuron_maps(attribution, 8, channels, map_size=(8, 8), pool_below_map_size=True)
    np.testing.assert_allclose(pooled.map_sums, exact.map_sums, rtol=1e-4, atol=1e-6 * np.abs(exact.map_sums).max())


def test_pooling_needs_a_map_size(resnet):
    engine, attribution, _ = resnet
    with pytest.raises(InputError, match="pool_below_map_size needs a map_size"):
        engine.neuron_maps(attribution, 8, CHANNELS, pool_below_map_size=True)


def test_coverage_keeps_the_fewest_strongest_neurons_that_reach_it(resnet):
    engine, attribution, _ = resnet
    magnitude = np.concatenate([attribution.channel_relevance(layer.name).abs().double().numpy()
                                for layer in engine.layers])
    ordered = np.sort(magnitude)[::-1]
    for coverage in (0.5, 0.9, 0.99):
        expected = int(np.searchsorted(np.cumsum(ordered) / ordered.sum(), coverage)) + 1
        chosen = strongest_neurons(engine, attribution, None, coverage)
        kept = np.concatenate([attribution.channel_relevance(layer).abs().double().numpy()[chans]
                               for layer, chans in chosen.items()])
        assert len(kept) == expected
        assert kept.sum() >= coverage * ordered.sum() > kept.sum() - kept.min()
        assert kept.min() >= ordered[expected - 1]
    assert sum(map(len, strongest_neurons(engine, attribution, 10, 0.99).values())) == 10  # both limits apply
    assert sum(map(len, strongest_neurons(engine, attribution, None, 1.0).values())) == magnitude.size
    with pytest.raises(InputError, match=r"coverage must be in \(0, 1\]"):
        strongest_neurons(engine, attribution, None, 0.0)


def test_options_round_trip_and_older_files():
    options = ConceptOptions(features="input", coverage=0.95, pool_below_map_size=True)
    assert ConceptOptions.from_dict(options.to_dict()) == options
    older = options.to_dict()
    del older["coverage"], older["pool_below_map_size"]
    assert ConceptOptions.from_dict(older) == ConceptOptions(features="input")
    with pytest.raises(InputError, match="coverage must be in"):
        ConceptOptions(coverage=1.5)


def test_approximated_paper_route_clusters_the_covered_neurons_and_shows_exact_maps():
    """The approximations touch what is clustered, never the maps a concept shows."""
    from conceptree.concepts.distance import DistanceConfig
    from conceptree.concepts.options import PRESETS
    from conceptree.explainer import ConceptExplainer

    torch.manual_seed(0)
    model = helpers.torchvision_model("resnet18")
    x = torch.randn(1, 3, 64, 64)
    options = PRESETS["paper"].replace(coverage=0.95, pool_below_map_size=True, k_range=(3, 6),
                                       distance=DistanceConfig(map_size=(16, 16)))
    explainer = ConceptExplainer(model, options=options, layers=["layer1.*", "layer2.*"])
    result = explainer.explain(x, keep_neuron_maps=True)
    attribution = explainer.engine.attribute(x)
    covered = strongest_neurons(explainer.engine, attribution, None, 0.95)
    assert result.n_neurons == sum(map(len, covered.values())) < sum(layer.channels for layer in explainer.engine.layers)
    assert {name.split(":")[0] for name in result.neuron_names} <= set(covered)
    reps = {}
    for concept in result.concepts.concepts:
        reps.setdefault(concept.representative.layer, []).append(concept.representative.channel)
    exact = explainer.engine.neuron_maps(attribution, 8, reps)
    lookup = dict(zip(exact.names(), exact.maps))
    for concept, shown in zip(result.concepts.concepts, result.concept_maps):
        rep = concept.representative
        np.testing.assert_allclose(shown, lookup[f"{rep.layer}:{rep.channel}"], rtol=1e-5, atol=1e-8)
    assert shown.shape == (64, 64)
