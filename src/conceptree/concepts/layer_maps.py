"""Own-layer relevance maps: each neuron's relevance ``R_p(h, w)`` at its own layer.

The single LRP pass already holds, for every conv channel ``p``, the relevance map at that
layer's output (:attr:`Attribution.layer_relevance`). Unlike the input-level conditional map
``y_p``, it is not pushed through the z+ rules of every layer below ``p``, which under z+ tend
to one image-dependent map whatever the neuron (Sixt, Granz & Landgraf, "When explanations
lie", ICML 2020; measured in ``docs/results/concept_ablation.md``). It is placed into the
input's geometry by resizing: each layer's grid covers the whole input, so cell ``(i, j)`` of
an ``h × w`` layer lies over the input pixels ``[i·H/h, (i+1)·H/h)`` — the centre of its
receptive field up to the layer's padding offset.

Two uses: as clustering features (:func:`layer_neuron_maps`, free, no conditional
propagation) and as a concept's map (:func:`layer_group_maps`, the sum of its neurons'
own-layer maps in input geometry).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..attribution.results import Attribution, NeuronMaps
from ..errors import InputError
from .distance import DEFAULT_MAP_SIZE


def to_grid(maps_chw: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``(n, h, w)`` relevance maps onto an ``size`` grid covering the same image.

    Larger maps are average-pooled (area), smaller ones bilinearly upsampled
    (``align_corners=False``: cell centres stay at their image positions).
    """
    x = maps_chw.unsqueeze(1).float()
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x[:, 0]
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)[:, 0]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[:, 0]


def layer_neuron_maps(
    attribution: Attribution,
    layers: Sequence[str],
    channels: Mapping[str, Sequence[int]] | None = None,
    map_size: tuple[int, int] = DEFAULT_MAP_SIZE,
) -> NeuronMaps:
    """Own-layer relevance maps of neurons as :class:`NeuronMaps` (clustering input).

    Parameters
    ----------
    attribution : Attribution
        One LRP pass (:meth:`CRPEngine.attribute`).
    layers : sequence of str
        The engine's conv layers, in model order (``NeuronMaps.layers``).
    channels : mapping layer -> channels, optional
        Neurons to keep (default: every channel of every layer).
    map_size : (h, w)
        Common grid of the maps (:func:`to_grid`).

    Returns
    -------
    NeuronMaps
        ``maps`` ``(n, *map_size)`` float32; ``relevance`` and ``map_sums`` are ``r_p``
        (the own-layer map sums to ``r_p`` exactly before resizing).
    """
    layers = list(layers)
    wanted = channels if channels is not None else {name: range(attribution.layer_relevance[name].shape[0]) for name in layers}
    unknown = [name for name in wanted if name not in attribution.layer_relevance]
    if unknown:
        raise InputError(f"layer {unknown[0]!r} has no relevance in this attribution; use one of the engine's layers")
    layer_index, channel, relevance, maps = [], [], [], []
    for name in layers:
        if name not in wanted:
            continue
        chans = torch.as_tensor(list(wanted[name]), dtype=torch.long)
        if chans.numel() == 0:
            continue
        rel = attribution.layer_relevance[name][chans]
        layer_index.append(np.full(chans.numel(), layers.index(name), np.int32))
        channel.append(chans.numpy().astype(np.int64))
        relevance.append(rel.double().flatten(1).sum(1).cpu().numpy())
        maps.append(to_grid(rel, map_size).float().cpu().numpy().astype(np.float32))
    if not maps:
        raise InputError("no neurons selected; pass at least one channel")
    r = np.concatenate(relevance)
    return NeuronMaps(layers, np.concatenate(layer_index), np.concatenate(channel), r, np.concatenate(maps), r.copy())


def layer_group_maps(
    attribution: Attribution | Mapping[str, Tensor],
    groups: Sequence[Mapping[str, Sequence[int]]],
    size: tuple[int, int],
) -> np.ndarray:
    """Each group's own-layer relevance, summed over its neurons in input geometry.

    Parameters
    ----------
    attribution : Attribution or mapping layer -> Tensor
        One LRP pass, or its layer relevance maps ``(channels, h, w)`` (e.g.
        :meth:`BatchAttribution.image`).
    groups : sequence of mapping layer -> channels
        One neuron group per concept (e.g. ``Concept.groups()``).
    size : (H, W)
        Output grid (the input's size).

    Returns
    -------
    np.ndarray
        ``(len(groups), H, W)`` float32. Each layer's share of a group is summed over the
        group's channels first, then resized with :func:`to_grid` and scaled so that it keeps
        its total (``sum`` of row ``g`` = the group's relevance ``sum r_p``, up to resizing).
    """
    layer_relevance = attribution.layer_relevance if isinstance(attribution, Attribution) else attribution
    out = np.zeros((len(groups), *size), np.float32)
    for g, group in enumerate(groups):
        total = torch.zeros(size, dtype=torch.float32)
        for layer, chans in group.items():
            rel = layer_relevance[layer][torch.as_tensor(list(chans), dtype=torch.long)].sum(0)
            h, w = rel.shape
            total += to_grid(rel[None], size)[0] * (h * w) / (size[0] * size[1])
        out[g] = total.float().cpu().numpy()
    return out


def smooth_group_maps(
    attribution: Attribution | Mapping[str, Tensor],
    groups: Sequence[Mapping[str, Sequence[int]]],
    size: tuple[int, int],
    sigma_cells: float = 1.0,
    sigma_pixels: float | None = None,
) -> np.ndarray:
    """Each group's own-layer relevance drawn for the eye: every layer resolution smoothed before summing.

    :func:`layer_group_maps` resizes a 7×7 layer to the input as 32-pixel tiles and keeps a strided
    layer's checkerboard; both read as a grid, not a region. Here the group's relevance at each
    resolution is blurred at that resolution by a Gaussian of ``sigma_cells`` cells (a one-cell
    checkerboard of period two cells keeps 0.7 % of its amplitude), upsampled bilinearly and summed
    over resolutions; the sum is blurred once more by ``sigma_pixels`` input pixels: relevance that
    came down from a 14×14 layer carries its 16-pixel grid into the shallow layers, and 6 pixels
    leave 6 % of that pattern (detail finer than about 10 pixels is lost in the drawing). The blurs
    keep each total (edges reflected); the evaluated maps stay :func:`layer_group_maps`'.
    ``sigma_pixels`` defaults to 6 pixels per 224 of the input's shorter side (6 at 224x224, 0.75 on a
    28x28 digit, whose 4-pixel patches a 6-pixel blur would erase).

    Returns
    -------
    np.ndarray
        ``(len(groups), H, W)`` float32.
    """
    from scipy.ndimage import gaussian_filter

    layer_relevance = attribution.layer_relevance if isinstance(attribution, Attribution) else attribution
    if sigma_pixels is None:
        sigma_pixels = 6.0 * min(size) / 224
    out = np.zeros((len(groups), *size), np.float32)
    for g, group in enumerate(groups):
        by_size: dict[tuple[int, int], Tensor] = {}
        for layer, chans in group.items():
            rel = layer_relevance[layer][torch.as_tensor(list(chans), dtype=torch.long)].sum(0).float()
            key = (int(rel.shape[0]), int(rel.shape[1]))
            by_size[key] = by_size[key] + rel if key in by_size else rel
        for (h, w), rel in by_size.items():
            blurred = torch.from_numpy(gaussian_filter(rel.cpu().numpy(), sigma_cells, mode="reflect"))
            out[g] += (to_grid(blurred[None], size)[0] * (h * w) / (size[0] * size[1])).numpy()
        if sigma_pixels > 0:
            out[g] = gaussian_filter(out[g], sigma_pixels, mode="reflect")
    return out
