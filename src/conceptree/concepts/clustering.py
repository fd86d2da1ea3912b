"""Hierarchical clustering of neurons into concepts, with k chosen by silhouette.

All cuts of one dendrogram are nested, so the silhouette of every k in a range is computed
from one product ``S = D @ M`` of the distance matrix with the one-hot matrix ``M`` of the
finest cut (``n x k_max``): for a coarser cut, the sum of distances from a neuron to a cluster
is the sum of ``S`` over the fine clusters it contains. This replaces ``k_max`` calls of an
``O(n^2)`` silhouette routine by one ``O(n^2 k_max)`` product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.distance import squareform

from ..errors import InputError
from .distance import NeuronDistance
from .linkage import DEFAULT_METHOD, cut_labels, linkage_matrix
from .stability import CutStability, StabilityConfig, cut_stability, weighted_stability

Distances = np.ndarray | NeuronDistance

#: The defaults of the clustering, in one place (:class:`~conceptree.concepts.options.ConceptOptions`
#: and every function below use them): Ward linkage (:data:`~conceptree.concepts.linkage.DEFAULT_METHOD`)
#: on the exact-Ward distance, k searched in 15..30 by silhouette (chosen on the CUB dev photos,
#: docs/results/concept_ablation.md).
DEFAULT_K_RANGE: tuple[int, int] = (15, 30)
#: How k is chosen in the range: "silhouette" (the largest mean silhouette) or "stability" (the
#: largest k whose concepts' relevance-weighted stability is at least 0.75, else the most
#: stable k); rule and comparison in docs/results/stability.md.
K_RULES: tuple[str, ...] = ("silhouette", "stability")
DEFAULT_K_RULE = "silhouette"
#: Up to this many neurons the clustering keeps the square distance (n² float64, 128 MB at
#: 4,000, 512 MB at 8,000) and reads the silhouettes and the stability draws from it; above it
#: the distance is streamed twice and no stability is computed (memory).
KEEP_CONDENSED_MAX = 8000


def nested_silhouettes(dist: Distances, labels_by_k: dict[int, np.ndarray]) -> dict[int, float]:
    """Mean silhouette (precomputed distance) of every nested partition, from one product.

    Equals ``sklearn.metrics.silhouette_score(dist, labels, metric="precomputed")`` for each
    partition (singleton clusters score 0, as in scikit-learn).
    """
    if not labels_by_k:
        return {}
    k_fine = max(labels_by_k)
    fine = labels_by_k[k_fine]
    n = len(fine)
    one_hot = np.zeros((n, k_fine), dtype=np.float64)
    one_hot[np.arange(n), fine] = 1.0
    if isinstance(dist, NeuronDistance):
        sums = dist.matmul(one_hot)
    elif dist.dtype == np.float64:
        sums = dist @ one_hot
    else:
        sums = (dist @ one_hot.astype(np.float32)).astype(np.float64)
    scores: dict[int, float] = {}
    for k, labels in sorted(labels_by_k.items()):
        if not 2 <= k <= n - 1:
            continue
        # fine cluster -> coarse cluster (nested cuts: each fine cluster lies in one coarse one)
        fine_to_coarse = np.zeros(k_fine, dtype=np.int64)
        fine_to_coarse[fine] = labels
        agg = np.zeros((k_fine, k), dtype=np.float64)
        agg[np.arange(k_fine), fine_to_coarse] = 1.0
        to_cluster = sums @ agg  # (n, k): sum of distances from each neuron to each cluster
        sizes = np.bincount(labels, minlength=k).astype(np.float64)
        own = to_cluster[np.arange(n), labels]
        own_size = sizes[labels]
        a = np.divide(own, own_size - 1, out=np.zeros(n), where=own_size > 1)
        mean_other = to_cluster / sizes[None, :]
        mean_other[np.arange(n), labels] = np.inf
        b = mean_other.min(axis=1)
        denom = np.maximum(a, b)
        s = np.divide(b - a, denom, out=np.zeros(n), where=denom > 0)
        s[own_size <= 1] = 0.0
        scores[k] = float(s.mean())
    return scores


@dataclass
class ClusterResult:
    """Dendrogram and the chosen cut of the active neurons.

    Attributes
    ----------
    linkage : np.ndarray
        ``(n-1, 4)`` linkage matrix over the active neurons.
    labels : np.ndarray
        Cluster of each active neuron at the chosen k, ``(n,)``.
    k : int
        Number of clusters.
    silhouette_by_k : dict[int, float]
        Mean silhouette of every k scored.
    stability : CutStability or None
        Per-cluster stability of every k scored (None when not computed).
    stability_by_k : dict[int, float]
        Relevance-weighted mean stability of every k scored.
    """

    linkage: np.ndarray
    labels: np.ndarray
    k: int
    silhouette_by_k: dict[int, float] = field(default_factory=dict)
    stability: CutStability | None = None
    stability_by_k: dict[int, float] = field(default_factory=dict)

    @property
    def concept_stability(self) -> np.ndarray | None:
        """Stability of each cluster label of the chosen cut, ``(k,)`` (None when not computed)."""
        return None if self.stability is None else self.stability.scores.get(self.k)


def choose_k(ks: list[int], silhouette: dict[int, float], stability: dict[int, float], rule: str) -> int:
    """The k of ``ks`` that ``rule`` picks (:data:`K_RULES`; ties go to the smaller k)."""
    if rule == "silhouette" or not stability:
        return max(ks, key=lambda kk: (silhouette.get(kk, -np.inf), -kk))
    if rule == "stability":
        finite = [kk for kk in ks if np.isfinite(stability.get(kk, np.nan))]
        stable = [kk for kk in finite if stability[kk] >= 0.75]
        if stable:
            return max(stable)
        return max(finite, key=lambda kk: (stability[kk], -kk)) if finite else min(ks)
    raise InputError(f"unknown k rule {rule!r}; use one of {', '.join(K_RULES)}")


def cluster(
    dist: Distances,
    method: str = DEFAULT_METHOD,
    k_range: tuple[int, int] = DEFAULT_K_RANGE,
    k: int | None = None,
    *,
    stability: StabilityConfig | None = None,
    weights: np.ndarray | None = None,
    k_rule: str = DEFAULT_K_RULE,
) -> ClusterResult:
    """Cluster ``n`` neurons and pick k in ``k_range`` by silhouette (or by stability).

    Parameters
    ----------
    dist : np.ndarray or NeuronDistance
        Square ``(n, n)`` distance matrix, or the streamed distance of the neurons.
    method : {"single", "complete", "average", "ward"}
    k_range : (int, int)
        Inclusive range searched; clipped to ``[2, n-1]``. Ties go to the smaller k.
    k : int, optional
        Fixed number of clusters (no search).
    stability : StabilityConfig, optional
        Also score every cluster of every k scored by Hennig's subsampling Jaccard
        (:mod:`conceptree.concepts.stability`; up to :data:`KEEP_CONDENSED_MAX` points).
    weights : np.ndarray, optional
        ``(n,)`` weight of each point in a cut's mean stability (the neurons' relevance).
    k_rule : {"silhouette", "stability"}
        How k is chosen in the range (:data:`K_RULES`; "stability" needs ``stability``).
    """
    if k_rule not in K_RULES:
        raise InputError(f"unknown k rule {k_rule!r}; use one of {', '.join(K_RULES)}")
    if k_rule == "stability" and (stability is None or stability.resamples == 0) and k is None:
        raise InputError("k_rule='stability' needs stability draws; set stability resamples >= 1 or use k_rule='silhouette'")
    n = dist.n if isinstance(dist, NeuronDistance) else len(dist)
    if n == 0:
        return ClusterResult(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), 0, {})
    if n == 1:
        return ClusterResult(np.zeros((0, 4)), np.zeros(1, dtype=np.int64), 1, {})
    kept = False
    if n <= KEEP_CONDENSED_MAX:  # one distance pass: its square feeds the silhouettes and the draws
        condensed = dist.condensed() if isinstance(dist, NeuronDistance) else squareform(dist, checks=False).astype(np.float64)
        dist = squareform(condensed)
        Z = linkage_matrix(condensed, method)
        del condensed
        kept = True
    else:
        Z = linkage_matrix(dist, method)
    if k is not None:
        if not 1 <= k <= n:
            raise InputError(f"k={k} is outside 1..{n} (the number of active neurons)")
        ks = [k]
    else:
        low, high = k_range
        if low > high or low < 1:
            raise InputError(f"k range {low}:{high} is empty; use MIN:MAX with 1 <= MIN <= MAX")
        low, high = max(2, low), min(high, n - 1)
        ks = list(range(low, high + 1)) if low <= high else [max(1, min(k_range[1], n - 1))]
    cuts = cut_labels(Z, ks)
    scores = nested_silhouettes(dist, {kk: v for kk, v in cuts.items() if 2 <= kk <= n - 1})
    stab = None
    stab_by_k: dict[int, float] = {}
    if stability is not None and stability.resamples > 0 and kept:
        stab = cut_stability(dist, cuts, method, stability)
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        for kk, labels in cuts.items():
            stab_by_k[kk] = weighted_stability(stab.scores[kk], np.bincount(labels, weights=np.abs(w), minlength=kk))
    best = ks[0] if len(ks) == 1 else choose_k(ks, scores, stab_by_k, k_rule)
    return ClusterResult(Z, cuts[best], best, scores, stab, stab_by_k)
