"""Conservation: every conditional map sums to its neuron's relevance, on real and random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptree.attribution import CRPEngine

from . import helpers


def sampled_channels(engine, attribution, per_layer=2, seed=0):
    """The most relevant channel and a random one of every layer."""
    gen = np.random.default_rng(seed)
    chosen = {}
    for layer in engine.layers:
        r = attribution.channel_relevance(layer.name)
        top = int(r.abs().argmax())
        other = int(gen.integers(layer.channels))
        chosen[layer.name] = sorted({top, other})[:per_layer]
    return chosen


def assert_conserved(engine, x, tol=1e-4):
    attribution = engine.attribute(x)
    neurons = engine.neuron_maps(attribution, batch_size=8, channels=sampled_channels(engine, attribution))
    scale = {
        layer.name: float(attribution.channel_relevance(layer.name).abs().max()) for layer in engine.layers
    }
    for i, name in enumerate(neurons.names()):
        layer = name.rsplit(":", 1)[0]
        err = abs(neurons.map_sums[i] - neurons.relevance[i])
        assert err <= tol * scale[layer] + 1e-12, f"{name}: sum(y)={neurons.map_sums[i]:.6g} r={neurons.relevance[i]:.6g}"
    assert np.isfinite(neurons.maps).all()
    return attribution


@pytest.mark.parametrize(
    "name,size", [("resnet18", 64), ("resnet34", 64), ("resnet50", 64), ("vgg16_bn", 64)]
)
def test_torchvision_random_weights(name, size):
    model = helpers.torchvision_model(name)
    assert_conserved(CRPEngine(model), torch.randn(1, 3, size, size))


def test_efficientnet_lite0_random_weights():
    assert_conserved(CRPEngine(helpers.efficientnet_lite0()), torch.randn(1, 3, 128, 128))


def test_bird_mobilenetv2_real_weights(parrot):
    attribution = assert_conserved(CRPEngine(helpers.bird_model()), parrot)
    labels = (helpers.shared_path("models", "inat_bird_mobilenetv2") / "labels.txt").read_text().splitlines()
    assert "Scarlet Macaw" in labels[attribution.target]


def test_cifar_resnet20_real_weights_every_layer_total(cifar_image):
    """All maps of every layer: their sum equals the layer's total relevance (option-A shortcut)."""
    engine = CRPEngine(helpers.cifar_model())
    attribution = assert_conserved(engine, cifar_image)
    neurons = engine.neuron_maps(attribution, batch_size=64)
    for li, layer in enumerate(neurons.layers):
        rows = neurons.layer_index == li
        total = float(attribution.layer_relevance[layer].sum())
        assert neurons.maps[rows].sum(dtype=np.float64) == pytest.approx(total, rel=1e-4, abs=1e-7)
    # the class is explained: relevance enters at the logit and reaches the input (flat first layer)
    assert float(attribution.input_relevance.sum()) == pytest.approx(float(attribution.logits[attribution.target]), rel=1e-3)
