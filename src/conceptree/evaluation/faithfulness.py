"""Faithfulness: does greying a map's most relevant region hurt the target logit more than chance?

Rule (fixed before any result)
------------------------------
For a map resized to the model input (nearest), its *region* is the ``fraction`` (10 %) of
input pixels with the largest values among its positive values (fewer if fewer are
positive). The region is greyed (set to the preprocessing's image of mid-grey, 128) and the
target logit's drop ``logit(x) - logit(x_occluded)`` is measured. The control is the *same
region shape moved*: the mask circularly shifted by a random offset (uniform over the
image, fixed seed per photo), so area and shape are equal and only the location differs.

Summary per method: the median drop of the map regions over all (photo, map) pairs divided
by the median drop of their shifted controls (``drop_ratio``), and a Wilcoxon signed-rank
test (one-sided, map > control) over photos of the per-photo mean paired difference (photos
are the independent units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .controls import image_seed

#: Share of the input pixels greyed per map.
OCCLUDED_FRACTION = 0.10


def top_region(map_hw: np.ndarray, size: tuple[int, int], fraction: float = OCCLUDED_FRACTION) -> np.ndarray:
    """Boolean ``size`` mask of the ``fraction`` highest positive pixels of a map (nearest resize)."""
    m = torch.from_numpy(np.asarray(map_hw, np.float32))[None, None]
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="nearest")
    flat = m.flatten().numpy()
    n = int(round(fraction * flat.size))
    n = min(n, int((flat > 0).sum()))
    mask = np.zeros(flat.size, bool)
    if n > 0:
        order = np.lexsort((np.arange(flat.size), -flat))  # stable: first pixels win ties
        mask[order[:n]] = True
    return mask.reshape(size)


def shifted(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask circularly shifted by a uniform random offset (same area and shape)."""
    dy, dx = int(rng.integers(mask.shape[0])), int(rng.integers(mask.shape[1]))
    return np.roll(mask, (dy, dx), axis=(0, 1))


@dataclass
class FaithfulnessResult:
    """Drops of the target logit for one photo and one method, ``(K,)`` each."""

    drop_map: np.ndarray
    drop_random: np.ndarray
    area: np.ndarray


@torch.no_grad()
def occlusion_drops(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    maps: np.ndarray,
    grey: torch.Tensor,
    image_id: str,
    seed: int = 0,
    fraction: float = OCCLUDED_FRACTION,
    batch_size: int = 32,
) -> FaithfulnessResult:
    """Target-logit drops when each map's top region, and its shifted control, is greyed.

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode.
    x : Tensor
        ``(1, C, H, W)`` preprocessed input.
    maps : np.ndarray
        ``(K, h, w)`` maps of one method (any grid covering the input).
    grey : Tensor
        ``(C,)`` value of mid-grey after preprocessing.
    image_id : str
        Seeds the control's shifts (with ``seed``).
    """
    rng = image_seed(seed + 1, image_id)
    size = tuple(x.shape[-2:])
    masks, controls = [], []
    for m in maps:
        region = top_region(m, size, fraction)
        masks.append(region)
        controls.append(shifted(region, rng))
    if not masks:
        empty = np.zeros(0)
        return FaithfulnessResult(empty, empty, empty)
    every = torch.from_numpy(np.stack(masks + controls))[:, None]  # (2K, 1, H, W)
    base = float(model(x)[0, target])
    logits = []
    fill = grey.view(1, -1, 1, 1).to(x.dtype)
    for first in range(0, len(every), batch_size):
        m = every[first : first + batch_size].to(x.dtype)
        batch = x * (1 - m) + fill * m
        logits.append(model(batch)[:, target].double())
    out = base - torch.cat(logits).numpy()
    k = len(masks)
    return FaithfulnessResult(out[:k], out[k:], np.array([mk.mean() for mk in masks]))


def summarise_faithfulness(results: list[FaithfulnessResult]) -> dict:
    """``drop_ratio`` (median map drop / median control drop), medians, and the paired test."""
    from scipy.stats import wilcoxon

    drop = np.concatenate([r.drop_map for r in results]) if results else np.zeros(0)
    ctrl = np.concatenate([r.drop_random for r in results]) if results else np.zeros(0)
    per_photo = np.array([np.mean(r.drop_map - r.drop_random) for r in results if r.drop_map.size])
    if per_photo.size == 0:
        return {"n_maps": 0, "n_photos": 0, "drop_ratio": None, "p_value": None}
    med_map, med_ctrl = float(np.median(drop)), float(np.median(ctrl))
    p = float(wilcoxon(per_photo, alternative="greater").pvalue) if np.any(per_photo != 0) else 1.0
    return {
        "n_maps": int(drop.size),
        "n_photos": int(per_photo.size),
        "median_drop": med_map,
        "median_drop_random": med_ctrl,
        "drop_ratio": med_map / med_ctrl if med_ctrl > 0 else None,
        "mean_paired_difference": float(per_photo.mean()),
        "p_value": p,
        "area_mean": float(np.mean(np.concatenate([r.area for r in results]))),
    }
