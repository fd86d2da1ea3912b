"""The IoU protocol (DCNE-compatible): normalise, binarise, best map per part, aggregate.

Maps are compared with part regions on the image's own pixel grid: a map of ``h × w``
cells is resized to the image's ``H × W`` with nearest-neighbour sampling (pixel row ``i``
reads map row ``floor(i * h / H)``, as OpenCV's ``INTER_NEAREST``). Instead of building the
resized map, each region is summarised by how many of its pixels read each map cell
(:func:`cell_weights`); intersections are then one matrix product, exactly equal to the
resized computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Binarisation thresholds on the 0..255 scale (DCNE's grid).
THRESHOLDS: tuple[int, ...] = (0, 25, 50, 100, 150, 200, 250)


def normalise_255(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each map of ``(n, h, w)`` to ``0..255`` (float32; a constant map -> 0).

    Signed maps (CRP) are normalised as they are, so 0 relevance lands mid-scale when a map
    has negative values; CAM maps are passed after their ReLU.
    """
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(1, keepdims=True)
    span = flat.max(1, keepdims=True) - lo
    out = np.where(span > 0, (flat - lo) / np.where(span > 0, span, 1.0) * 255.0, 0.0)
    return out.reshape(maps.shape).astype(np.float32)


@dataclass
class RegionWeights:
    """Regions of one image summarised on a map grid of ``h × w`` cells.

    Attributes
    ----------
    weights : np.ndarray
        ``(h*w, P)``: pixels of region ``p`` that read cell ``c`` under nearest resizing.
    cell_pixels : np.ndarray
        ``(h*w,)``: image pixels that read each cell.
    area : np.ndarray
        ``(P,)`` region areas in image pixels (0 for an absent region).
    present : np.ndarray
        ``(P,)`` bool: the region is annotated on this image.
    """

    weights: np.ndarray
    cell_pixels: np.ndarray
    area: np.ndarray
    present: np.ndarray


def nearest_source(n_out: int, n_in: int) -> np.ndarray:
    """Source index read by each output index under nearest resizing ``n_in -> n_out``."""
    return np.minimum((np.arange(n_out) * n_in) // n_out, n_in - 1)


def cell_weights(masks: list[np.ndarray | None], image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> RegionWeights:
    """Summarise region masks (each ``image_hw`` bool, or None if absent) on a map grid."""
    height, width = image_hw
    h, w = grid_hw
    rows, cols = nearest_source(height, h), nearest_source(width, w)
    cell = (rows[:, None] * w + cols[None, :]).ravel()
    cell_pixels = np.bincount(cell, minlength=h * w).astype(np.float64)
    weights = np.zeros((h * w, len(masks)), np.float64)
    present = np.zeros(len(masks), bool)
    for p, mask in enumerate(masks):
        if mask is None:
            continue
        if mask.shape != (height, width):
            raise ValueError(f"region mask has shape {mask.shape}, expected {(height, width)}")
        present[p] = bool(mask.any())
        weights[:, p] = np.bincount(cell, weights=mask.ravel().astype(np.float64), minlength=h * w)
    return RegionWeights(weights.astype(np.float32), cell_pixels.astype(np.float32), weights.sum(0), present)


def best_iou(maps_255: np.ndarray, regions: RegionWeights, thresholds: tuple[int, ...] = THRESHOLDS) -> np.ndarray:
    """Best IoU over a method's maps, per threshold and region.

    Parameters
    ----------
    maps_255 : np.ndarray
        ``(n, h, w)`` maps on the 0..255 scale (:func:`normalise_255`), on the grid of ``regions``.
    regions : RegionWeights
    thresholds : tuple of int
        A map's binary mask is ``map > t``.

    Returns
    -------
    np.ndarray
        ``(len(thresholds), P)``; NaN where the region is absent, 0 where no map overlaps it
        (also when ``n == 0`` or every map is empty).
    """
    n = maps_255.shape[0]
    out = np.zeros((len(thresholds), regions.weights.shape[1]), np.float64)
    if n:
        flat = maps_255.reshape(n, -1)
        for i, t in enumerate(thresholds):
            binary = (flat > t).astype(np.float32)
            inter = (binary @ regions.weights).astype(np.float64)
            size = (binary @ regions.cell_pixels).astype(np.float64)
            union = size[:, None] + regions.area[None, :] - inter
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            out[i] = iou.max(0)
    out[:, ~regions.present] = np.nan
    return out


def pointing(maps: np.ndarray, regions: RegionWeights) -> np.ndarray:
    """Threshold-free score per region: 1 if some map's maximum lies in the region, else 0.

    A map's maximum is its first argmax cell; it lies in a region when at least half of the
    image pixels reading that cell belong to the region. Constant maps point nowhere.
    Returns ``(P,)`` float with NaN for absent regions.
    """
    hit = np.zeros(regions.weights.shape[1], np.float64)
    if maps.shape[0]:
        flat = maps.reshape(maps.shape[0], -1)
        varies = flat.max(1) > flat.min(1)
        cells = flat.argmax(1)[varies]
        if cells.size:
            share = regions.weights[cells] / np.maximum(regions.cell_pixels[cells, None], 1.0)
            hit = (share >= 0.5).any(0).astype(np.float64)
    hit[~regions.present] = np.nan
    return hit


def species_scores(per_image: np.ndarray, species: list[str]) -> tuple[list[str], np.ndarray]:
    """Mean over each species' images, ignoring NaN: ``(..., n_images, P) -> (..., n_species, P)``."""
    names = sorted(set(species))
    index = np.array([names.index(s) for s in species])
    out = np.full((*per_image.shape[:-2], len(names), per_image.shape[-1]), np.nan)
    for j in range(len(names)):
        chunk = per_image[..., index == j, :]
        valid = ~np.isnan(chunk)
        total = np.where(valid, chunk, 0.0).sum(-2)
        count = valid.sum(-2)
        out[..., j, :] = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    return names, out


def nanmean_last(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN (NaN only if every entry is NaN; no warning)."""
    valid = ~np.isnan(values)
    total = np.where(valid, values, 0.0).sum(-1)
    count = valid.sum(-1)
    return np.divide(total, count, out=np.full_like(total, np.nan, dtype=np.float64), where=count > 0)


def method_score(species_part: np.ndarray) -> np.ndarray:
    """Species score = mean over its parts; method score = mean over species. ``(..., S, P) -> (...)``."""
    return nanmean_last(nanmean_last(species_part))
