"""Occlusion check (benchmark code: only benchmarks/occlusion.py uses it, so it is not in the wheel): grey out a part region and follow every concept's neuron group.

A concept counts as *located* in the region when at least ``inside`` (default 0.5) of its
representative map's positive relevance falls inside the region (on the model's input
grid). After occlusion, a concept's drop is ``1 - ratio`` with ``ratio`` = the group's
relevance on the occluded photo / on the original (:func:`conceptree.compare`).
If tracing means something, located concepts drop much more than the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conceptree.datasets.cub_parts import PartImage
from conceptree.evaluation.protocol import nearest_source

#: Keypoints whose disks make up "the head" that is greyed out.
HEAD_KEYPOINTS: tuple[str, ...] = ("beak", "left eye", "right eye", "crown", "forehead", "nape", "throat")
#: Radius of the head disks as a fraction of the bird's size (sqrt of its box area): head-sized,
#: larger than the evaluation's part disks, so the occluder hides the whole head.
HEAD_RADIUS = 0.15


def head_mask(image: PartImage, fraction: float = HEAD_RADIUS) -> np.ndarray | None:
    """The head region of a photo (None unless at least two head keypoints are visible)."""
    if sum(name in image.keypoints for name in HEAD_KEYPOINTS) < 2:
        return None
    return image.disks(HEAD_KEYPOINTS, fraction)


def occlude(picture, mask: np.ndarray, grey: int = 128):
    """A copy of the PIL ``picture`` with the ``mask`` pixels set to ``grey``."""
    from PIL import Image

    pixels = np.asarray(picture.convert("RGB")).copy()
    pixels[mask] = grey
    return Image.fromarray(pixels)


def mask_on_grid(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a photo mask to the model input grid (e.g. a 224×224 squash)."""
    rows = nearest_source(grid_hw[0], mask.shape[0])
    cols = nearest_source(grid_hw[1], mask.shape[1])
    return mask[rows][:, cols]


def inside_fraction(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of each map's positive relevance inside ``mask``; ``(k, H, W) -> (k,)`` (0 for no positive mass)."""
    positive = np.maximum(maps, 0).reshape(len(maps), -1).astype(np.float64)
    total = positive.sum(1)
    inside = positive[:, mask.ravel()].sum(1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


@dataclass
class OcclusionResult:
    """Per concept of one photo: located or not, and its relevance ratio after occlusion."""

    image_id: str
    species: str
    region_share: float  # fraction of the input covered by the occluded region
    inside: np.ndarray  # (k,)
    ratio: np.ndarray  # (k,)
    share: np.ndarray  # (k,) concept share of the reference relevance
    total_ratio: float  # all neurons' relevance after / before (the logit's own change)
    probability_before: float
    probability_after: float

    def drop(self, relative: bool = False) -> np.ndarray:
        """``1 - ratio``; ``relative``: after dividing out the change of the total relevance."""
        return 1.0 - (self.ratio / self.total_ratio if relative else self.ratio)

    def to_dict(self) -> dict:
        return {
            "image_id": self.image_id, "species": self.species, "region_share": self.region_share,
            "inside": self.inside.tolist(), "ratio": self.ratio.tolist(), "total_ratio": self.total_ratio,
            "share": self.share.tolist(), "probability_before": self.probability_before,
            "probability_after": self.probability_after,
        }


def summarise_occlusion(results: list[OcclusionResult], inside: float = 0.5, relative: bool = False) -> dict:
    """Distributions of the drop (located vs other concepts) and three tests.

    A concept is located when its inside fraction is >= ``inside``; ``relative`` divides
    each photo's ratios by the change of its total relevance first.

    * paired: per photo, the median drop of its located concepts minus that of its other
      concepts; Wilcoxon signed-rank test over the photos that have both kinds;
    * unpaired: Mann-Whitney U over all concepts (located vs other), one-sided.
    """
    from scipy.stats import mannwhitneyu, wilcoxon

    drops = [r.drop(relative) for r in results]
    flags = [r.inside >= inside for r in results]
    located = np.concatenate([d[f] for d, f in zip(drops, flags)]) if results else np.zeros(0)
    other = np.concatenate([d[~f] for d, f in zip(drops, flags)]) if results else np.zeros(0)

    def describe(values: np.ndarray) -> dict:
        if values.size == 0:
            return {"n": 0}
        q1, med, q3 = np.percentile(values, [25, 50, 75])
        return {"n": int(values.size), "median": float(med), "q1": float(q1), "q3": float(q3), "mean": float(values.mean())}

    pairs = [(np.median(d[f]), np.median(d[~f])) for d, f in zip(drops, flags) if f.any() and (~f).any()]
    summary = {"inside_threshold": inside, "relative": relative, "located": describe(located), "other": describe(other), "n_photos": len(results),
               "n_photos_with_both": len(pairs)}
    if results:
        from scipy.stats import spearmanr

        rho = spearmanr(np.concatenate([r.inside for r in results]), np.concatenate(drops))
        summary["spearman_inside_vs_drop"] = {"rho": float(rho.statistic), "p_value": float(rho.pvalue),
                                              "n": int(sum(len(d) for d in drops))}
    if len(pairs) >= 5:
        diff = np.array([a - b for a, b in pairs])
        test = wilcoxon(diff, alternative="greater")
        summary["paired"] = {"median_difference": float(np.median(diff)), "photos_located_drop_more": int((diff > 0).sum()),
                             "wilcoxon_statistic": float(test.statistic), "p_value": float(test.pvalue)}
    if located.size and other.size:
        test = mannwhitneyu(located, other, alternative="greater")
        summary["unpaired"] = {"mannwhitney_u": float(test.statistic), "p_value": float(test.pvalue)}
    return summary
