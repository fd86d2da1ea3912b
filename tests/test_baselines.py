"""Baselines: one CAM map per conv layer, FullGrad terms, DCNE factorisation, CRP top-k."""

import numpy as np
import pytest
import torch
from torch import nn

from conceptree.attribution.tracing import canonize
from conceptree.errors import InputError
from conceptree.evaluation.baselines import CAM_METHODS, cam_maps, conv_layers, dcne_maps, top_neurons

from .helpers import randomize_batchnorm, torchvision_model


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomize_batchnorm(torchvision_model("resnet18")).eval()


@pytest.mark.parametrize("method", [m for m in CAM_METHODS if m != "fullgrad"])
def test_cam_gives_one_map_per_conv_layer(resnet, method):
    x = torch.randn(1, 3, 64, 64)
    maps = cam_maps(method, resnet, x, 3)
    assert maps.shape == (len(conv_layers(resnet)), 64, 64) == (20, 64, 64)
    assert maps.min() >= 0 and np.isfinite(maps).all()
    assert (maps.reshape(20, -1).max(1) > 0).sum() >= 10  # most layers see something


def test_fullgrad_keeps_its_terms_apart(resnet):
    x = torch.randn(1, 3, 64, 64)
    merged = canonize(resnet)
    maps = cam_maps("fullgrad", merged, x, 3)
    biased = [m for _, m in conv_layers(merged) if m.bias is not None]
    assert maps.shape == (len(biased) + 1, 64, 64) == (21, 64, 64)  # input-gradient term + one per layer
    with pytest.raises(InputError, match="merge BatchNorm"):
        cam_maps("fullgrad", resnet, x, 3)


def test_cam_errors():
    with pytest.raises(InputError, match="unknown CAM method"):
        cam_maps("gradcam3", nn.Linear(2, 2), torch.zeros(1, 2), 0)
    with pytest.raises(InputError, match="no nn.Conv2d"):
        cam_maps("gradcam", nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.zeros(1, 3, 2, 2), 0)


def test_dcne_recovers_non_negative_parts():
    rng = np.random.default_rng(0)
    parts = np.zeros((3, 16, 16))
    parts[0, :5, :5] = parts[1, 8:, 8:] = parts[2, :4, 10:] = 1.0
    weights = rng.random((60, 3))
    maps = np.einsum("nk,khw->nhw", weights, parts) - 0.01 * rng.random((60, 16, 16))  # small negative noise
    comps = dcne_maps(maps, n_components=3)
    assert comps.shape == (3, 16, 16) and comps.min() >= 0
    support = [set(np.flatnonzero(c.ravel() > 0.5 * c.max())) for c in comps]
    truth = [set(np.flatnonzero(p.ravel())) for p in parts]
    assert min(max(len(s & t) / len(s | t) for s in support) for t in truth) > 0.9
    assert dcne_maps(np.zeros((4, 5, 5)), 10).shape == (10, 5, 5)


def test_top_neurons_orders_by_relevance_then_index():
    rel = np.array([0.1, 0.5, -2.0, 0.5, 0.3])
    assert top_neurons(rel, 3).tolist() == [1, 3, 4]


def test_missing_grad_cam_is_a_one_line_error(monkeypatch):
    import sys

    from conceptree.errors import InputError
    from conceptree.evaluation.baselines import require_grad_cam

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as if the eval extra were not installed
    with pytest.raises(InputError, match=r"pip install 'conceptree\[eval\]'"):
        require_grad_cam()
