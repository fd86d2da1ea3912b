"""Baseline saliency methods, each giving a set of maps per image.

CAM-type maps come from the ``grad-cam`` package (pytorch-grad-cam) with every conv layer
as a target layer; the package would average the layers into one map, so the subclasses
here keep one map per layer instead (after the package's own ReLU and per-layer scaling).
FullGrad keeps its own terms: the input-gradient map plus one bias-gradient map per layer
with a bias. DCNE factorises the CRP maps with scikit-learn's NMF.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..errors import InputError

#: Method name -> pytorch-grad-cam class name.
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "fullgrad": "FullGrad",
}


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Conv2d`` (including subclasses) of ``model``, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _per_layer(base: type) -> type:
    """A subclass of a pytorch-grad-cam class that returns ``(N, L, H, W)``: one map per layer."""

    class PerLayer(base):  # type: ignore[misc, valid-type]
        def aggregate_multi_layers(self, cam_per_target_layer: list[np.ndarray]) -> np.ndarray:
            return np.maximum(np.concatenate(cam_per_target_layer, axis=1), 0)

    PerLayer.__name__ = f"PerLayer{base.__name__}"
    return PerLayer


def require_grad_cam():
    """The pytorch-grad-cam package (an extra: ``pip install 'conceptree[eval]'``), one-line error without it."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise InputError("the evaluation's CAM and FullGrad baselines need pytorch-grad-cam; "
                         "pip install 'conceptree[eval]'") from None
    return pytorch_grad_cam


def _per_layer_fullgrad():
    FullGrad = require_grad_cam().FullGrad
    from pytorch_grad_cam.base_cam import BaseCAM
    from pytorch_grad_cam.utils.image import scale_accross_batch_and_channels

    class PerLayerFullGrad(FullGrad):
        """FullGrad on every conv with a bias (BatchNorm merged first), terms kept apart."""

        def __init__(self, model: nn.Module, target_layers: list[nn.Module]) -> None:
            BaseCAM.__init__(self, model, target_layers, None, compute_input_gradient=True)
            self.bias_data = [layer.bias.detach().cpu().numpy() for layer in target_layers]

        def compute_cam_per_layer(self, input_tensor, target_category, eigen_smooth):
            size = self.get_target_width_height(input_tensor)
            grad_x = np.abs(input_tensor.grad.detach().cpu().numpy() * input_tensor.detach().cpu().numpy())
            terms = [scale_accross_batch_and_channels(grad_x, size).sum(1, keepdims=True)]
            for bias, grads in zip(self.bias_data, self.activations_and_grads.gradients):
                term = np.abs(bias[None, :, None, None] * grads.detach().cpu().numpy())
                terms.append(scale_accross_batch_and_channels(term, size).sum(1, keepdims=True))
            return np.concatenate(terms, axis=1)

        def aggregate_multi_layers(self, cam_per_target_layer: np.ndarray) -> np.ndarray:
            return cam_per_target_layer

    return PerLayerFullGrad


def cam_maps(method: str, model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """One map per conv layer for one image, ``(L, H, W)`` float32 in ``[0, 1]``.

    Parameters
    ----------
    method : str
        A key of :data:`CAM_METHODS`.
    model : nn.Module
        The classifier in eval mode. For ``fullgrad`` its BatchNorms should be merged into
        the convs (e.g. :func:`conceptree.attribution.tracing.canonize`) so every layer's
        bias is the effective one.
    x : Tensor
        ``(1, C, H, W)`` preprocessed image.
    target : int
        Class whose logit is explained.
    """
    pytorch_grad_cam = require_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in CAM_METHODS:
        raise InputError(f"unknown CAM method {method!r}; use one of {', '.join(CAM_METHODS)}")
    layers = [m for _, m in conv_layers(model)]
    if not layers:
        raise InputError("the model has no nn.Conv2d layer; CAM baselines need conv layers")
    if method == "fullgrad":
        layers = [m for m in layers if m.bias is not None]
        if not layers:
            raise InputError("no conv layer has a bias; merge BatchNorm into the convs before FullGrad")
        cam_class = _per_layer_fullgrad()
    else:
        cam_class = _per_layer(getattr(pytorch_grad_cam, CAM_METHODS[method]))
    x = x.detach().clone()
    with cam_class(model=model, target_layers=layers) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target))])
    return np.asarray(maps[0], dtype=np.float32)


def top_neurons(relevance: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` most relevant neurons (largest ``r_p``; ties by index)."""
    order = np.lexsort((np.arange(relevance.size), -relevance))
    return order[:n]


def dcne_maps(
    crp_maps: np.ndarray,
    n_components: int = 10,
    seed: int = 0,
    max_iter: int = 400,
    ranked: bool = False,
    grid: tuple[int, int] | None = None,
) -> np.ndarray:
    """DCNE concepts: NMF of CRP maps, each component reshaped to a map.

    Parameters
    ----------
    crp_maps : np.ndarray
        ``(n, H, W)`` conditional maps (e.g. of the 300 most relevant neurons). NMF needs
        non-negative data, so the positive part of each map is factorised.
    n_components : int
        Number of concepts (DCNE: 10).
    ranked : bool
        Order the components by decreasing weight norm ``||W[:, j]|| · ||H[j]||`` (their
        share of the reconstruction), so that the first K are DCNE's K strongest concepts.

    grid : (h, w), optional
        Average-pool larger maps to this grid before factorising (the components come out on
        it). At 224x224 a 10-component fit of 300 maps takes 22 s on 2 CPU cores and a
        30-component one 50 s; at 112x112 about a quarter.

    Returns
    -------
    np.ndarray
        ``(n_components, H, W)`` component maps (rows of NMF's ``H`` matrix).
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    if grid is not None and crp_maps.shape[-2] > grid[0] and crp_maps.shape[-1] > grid[1]:
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.asarray(crp_maps, np.float32))[:, None], grid)
        crp_maps = pooled[:, 0].numpy()
    n, h, w = crp_maps.shape
    data = np.maximum(crp_maps.reshape(n, h * w).astype(np.float64), 0.0)
    scale = data.max()
    if scale <= 0:
        return np.zeros((n_components, h, w), np.float32)
    k = min(n_components, n)
    nmf = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weights = nmf.fit_transform(data / scale)
    comps = nmf.components_
    if ranked:
        strength = np.linalg.norm(weights, axis=0) * np.linalg.norm(comps, axis=1)
        comps = comps[np.lexsort((np.arange(k), -strength))]
    comps = comps.reshape(k, h, w).astype(np.float32)
    if k < n_components:
        comps = np.concatenate([comps, np.zeros((n_components - k, h, w), np.float32)])
    return comps
