"""How stable each concept is: Hennig's cluster-wise Jaccard under subsampling of the neurons.

Hennig (2007), "Cluster-wise assessment of cluster stability" (Comput. Stat. Data Anal. 52):
for ``b = 1..B`` draw a fraction ``f`` of the clustered neurons without replacement (a
seeded generator), cluster the draw again with the same linkage and the same ``k`` (its
distances are rows and columns of the full condensed distance: nothing is recomputed), and for
each concept ``C`` take the best Jaccard ``|C ∩ S ∩ C'| / |(C ∩ S) ∪ C'|`` over the new
clusters ``C'``. A concept's stability is its mean over the draws in which ``C ∩ S`` is not
empty. Hennig's reading: ≥ 0.75 stable, ≤ 0.5 dissolving; in between we say "weak".

Subsampling, not Hennig's bootstrap with replacement: duplicated neurons sit at distance 0 and
merge first in any linkage, which inflates the stability of whatever they land in. Perturbing
the features "within their float noise" gives nothing to measure once the LRP pass runs in
float64 (the features are the same to the bit on every thread count,
:mod:`conceptree.concepts.distance`). The fraction and the number of draws were chosen on the
dev photos by how well the score predicts that a concept survives a nuisance change
(``docs/results/stability.md``).

All cuts of one dendrogram come from the same linkage, so each draw scores every ``k`` of a
range at once (:func:`cut_stability`): the stability of a whole cut (the relevance-weighted
mean of its concepts') can choose ``k`` (``ConceptOptions.k_rule``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.spatial.distance import squareform

from ..errors import InputError
from .linkage import cut_labels, linkage_matrix

#: Hennig's thresholds: a concept at or above STABLE is "stable", at or below DISSOLVING "fragile".
STABLE = 0.75
DISSOLVING = 0.5


@dataclass(frozen=True)
class StabilityConfig:
    """How concept stability is estimated.

    Parameters
    ----------
    resamples : int
        Draws ``B`` (0: no stability). Default 8.
    fraction : float
        Share of the clustered neurons in each draw, in (0, 1). Default 0.5 (chosen by rule R1
        of docs/results/stability.md: it predicts nuisance survival as well as 0.8, AUC 0.911
        vs 0.914, at a third of the cost).
    seed : int
        Seed of the draws: the same seed gives the same scores.
    """

    resamples: int = 8
    fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 0:
            raise InputError(f"stability resamples must be an int >= 0, got {self.resamples!r}")
        if not 0.0 < self.fraction < 1.0:
            raise InputError(f"stability fraction must be in (0, 1), got {self.fraction}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def stability_label(score: float | None) -> str:
    """``"stable"`` (≥ 0.75), ``"fragile"`` (≤ 0.5), ``"weak"`` in between, ``"unknown"`` for None/NaN."""
    if score is None or not np.isfinite(score):
        return "unknown"
    return "stable" if score >= STABLE else "fragile" if score <= DISSOLVING else "weak"


@dataclass
class CutStability:
    """Per-cluster stability of one or more cuts of a dendrogram.

    Attributes
    ----------
    scores : dict[int, np.ndarray]
        For each k: the mean best-match Jaccard of each cluster label ``0..k-1``, ``(k,)``
        (NaN for a cluster that no draw kept a member of).
    jaccard : dict[int, np.ndarray]
        For each k: every draw's best-match Jaccard, ``(B, k)`` (NaN where absent).
    config : StabilityConfig
    seconds : float
        Wall time of the draws.
    """

    scores: dict[int, np.ndarray]
    jaccard: dict[int, np.ndarray] = field(repr=False)
    config: StabilityConfig
    seconds: float = 0.0


def sub_condensed(condensed: np.ndarray, n: int, rows: np.ndarray) -> np.ndarray:
    """The condensed distance of the sorted ``rows`` of an ``n``-point condensed distance, float64."""
    rows = np.asarray(rows, dtype=np.int64)
    m = len(rows)
    if m < 2:
        return np.zeros(0, np.float64)
    i, j = np.triu_indices(m, k=1)
    a, b = rows[i], rows[j]
    return condensed[n * a - a * (a + 1) // 2 + (b - a - 1)].astype(np.float64)


def best_match_jaccard(labels: np.ndarray, k: int, new_labels: np.ndarray, k_new: int) -> np.ndarray:
    """For each cluster ``0..k-1`` of ``labels`` (the drawn points' original clusters), its best
    Jaccard with a cluster of ``new_labels`` (same points), ``(k,)``; NaN for clusters absent from the draw."""
    inter = np.bincount(labels * k_new + new_labels, minlength=k * k_new).reshape(k, k_new).astype(np.float64)
    size = inter.sum(1)
    size_new = inter.sum(0)
    union = size[:, None] + size_new[None, :] - inter
    jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    best = jac.max(1) if k_new else np.zeros(k)
    best[size == 0] = np.nan
    return best


def cut_stability(dist: np.ndarray, cuts: dict[int, np.ndarray], method: str,
                  config: StabilityConfig = StabilityConfig()) -> CutStability:
    """Hennig's per-cluster stability of every cut in ``cuts`` (one linkage per draw).

    Parameters
    ----------
    dist : np.ndarray
        Distance of the ``n`` clustered points: square ``(n, n)`` (faster) or condensed,
        float64, left untouched.
    cuts : dict[int, np.ndarray]
        ``k -> labels (n,)`` of the cuts to score (labels ``0..k-1``).
    method : str
        Linkage used for the draws (the one that made the cuts).
    config : StabilityConfig

    Returns
    -------
    CutStability
    """
    t0 = time.perf_counter()
    if not cuts:
        return CutStability({}, {}, config, 0.0)
    n = len(next(iter(cuts.values())))
    if dist.shape not in ((n, n), (n * (n - 1) // 2,)):
        raise InputError(f"a distance of shape {dist.shape} does not fit {n} labelled points; pass (n, n) or condensed")
    m = int(round(config.fraction * n))
    draws = {k: np.full((config.resamples, k), np.nan) for k in cuts}
    rng = np.random.default_rng(config.seed)
    for b in range(config.resamples):
        rows = np.sort(rng.choice(n, size=m, replace=False))
        if m < 2:
            continue
        sub = squareform(dist[np.ix_(rows, rows)], checks=False) if dist.ndim == 2 else sub_condensed(dist, n, rows)
        Z = linkage_matrix(sub.astype(np.float64, copy=False), method)
        feasible = {k: min(k, m) for k in cuts}
        new_cuts = cut_labels(Z, sorted(set(feasible.values())))
        for k, labels in cuts.items():
            k_new = feasible[k]
            draws[k][b] = best_match_jaccard(labels[rows], k, new_cuts[k_new], k_new)
    with warnings.catch_warnings():  # a cluster no draw kept a member of stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = {k: np.nanmean(v, axis=0) if config.resamples else np.full(k, np.nan) for k, v in draws.items()}
    return CutStability(scores, draws, config, time.perf_counter() - t0)


def weighted_stability(scores: np.ndarray, weights: np.ndarray) -> float:
    """The weighted mean of the clusters' stability (weights ``|relevance|``; NaN scores left out)."""
    scores, weights = np.asarray(scores, float), np.abs(np.asarray(weights, float))
    keep = np.isfinite(scores) & (weights > 0)
    return float(np.sum(scores[keep] * weights[keep]) / np.sum(weights[keep])) if keep.any() else float("nan")
