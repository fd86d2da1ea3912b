"""The class heatmap equals zennit's Gradient attributor with the same composite and canonizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from zennit.attribution import Gradient
from zennit.composites import EpsilonPlus, EpsilonPlusFlat

from conceptree import Composite
from conceptree.attribution import CRPEngine

from . import helpers


def zennit_heatmap(model, x, target, kind, composite_name, zero_bias):
    zero_params = ["bias"] if zero_bias else None
    cls = EpsilonPlusFlat if composite_name == "epsilon-plus-flat" else EpsilonPlus
    composite = cls(canonizers=helpers.zennit_canonizers(kind, model), zero_params=zero_params)
    with Gradient(model, composite) as attributor:
        _, relevance = attributor(x.clone(), torch.eye(model(x).shape[1])[[target]])
    return relevance[0]


CASES = [
    ("resnet18", "resnet", 112),
    ("vgg16", "vgg", 64),
]


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("name,kind,size", CASES)
@pytest.mark.parametrize("composite_name,zero_bias", [("epsilon-plus-flat", True), ("epsilon-plus", False)])
def test_torchvision_heatmap_equals_zennit(name, kind, size, composite_name, zero_bias):
    model = helpers.torchvision_model(name)
    x = torch.randn(1, 3, size, size)
    engine = CRPEngine(model, Composite(composite_name, zero_bias=zero_bias, dead_units="drop"), zennit_compat="zennit")
    attribution = engine.attribute(x, init="one")
    ref = zennit_heatmap(model, x, attribution.target, kind, composite_name, zero_bias)
    assert _rel_err(attribution.input_relevance, ref) <= 1e-5


def test_exact_merge_differs_from_zennit_only_by_its_batchnorm_eps():
    """Without the compat switch we merge BatchNorm exactly; with eps folded into the running
    variance (same function, eps=0) zennit's canonizer is exact too and both agree."""
    model = helpers.torchvision_model("resnet18")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.add_(module.eps)
            module.eps = 0.0
    x = torch.randn(1, 3, 112, 112)
    attribution = CRPEngine(model, Composite(dead_units="drop")).attribute(x, init="one")
    ref = zennit_heatmap(model, x, attribution.target, "resnet", "epsilon-plus-flat", True)
    assert _rel_err(attribution.input_relevance, ref) <= 1e-5


def test_bird_mobilenetv2_heatmap_equals_zennit(parrot):
    """timm's BatchNormAct2d is merged on the zennit side with explicit name pairs (its
    SequentialMergeBatchNorm skips non-leaf BatchNorms, see helpers.timm_batchnorm_pairs)."""
    model = helpers.bird_model()
    engine = CRPEngine(model, Composite(dead_units="drop"), zennit_compat="zennit")
    attribution = engine.attribute(parrot, init="one")
    ref = zennit_heatmap(model, parrot, attribution.target, "timm", "epsilon-plus-flat", True)
    assert _rel_err(attribution.input_relevance, ref) <= 1e-5


def test_cifar_resnet20_heatmap_equals_zennit(cifar_image):
    model = helpers.cifar_model()
    engine = CRPEngine(model, Composite(dead_units="drop"), zennit_compat="zennit")
    attribution = engine.attribute(cifar_image, init="one")
    ref = zennit_heatmap(model, cifar_image, attribution.target, "cifar", "epsilon-plus-flat", True)
    assert _rel_err(attribution.input_relevance, ref) <= 1e-5
    assert np.isclose(float(attribution.input_relevance.sum()), 1.0, atol=1e-3)
