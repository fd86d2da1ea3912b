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
from .distance import NeuronDistance, check_linkage

Distances = np.ndarray | NeuronDistance

#: The defaults of the clustering, in one place (:class:`~conceptree.concepts.options.ConceptOptions`
#: and every function below use them): Ward linkage on the exact-Ward distance, k searched in
#: 15..30 by silhouette (chosen on the CUB dev photos, docs/results/concept_ablation.md).
DEFAULT_METHOD = "ward"
DEFAULT_K_RANGE: tuple[int, int] = (15, 30)


def linkage_matrix(dist: Distances, method: str = DEFAULT_METHOD) -> np.ndarray:
    """Agglomerative clustering of a square distance matrix, a condensed one (overwritten) or a
    :class:`NeuronDistance` (fastcluster; scipy fallback).

    Returns the ``(n-1, 4)`` scipy linkage matrix. ``ward`` on a non-Euclidean distance is
    the Lance-Williams Ward update ("Ward-like"); see :mod:`conceptree.concepts.distance`.
    """
    check_linkage(method)
    if isinstance(dist, NeuronDistance):
        condensed = dist.condensed()
    elif np.ndim(dist) == 1:  # already condensed (used as scratch memory and overwritten)
        condensed = np.ascontiguousarray(dist, dtype=np.float64)
    else:
        condensed = squareform(dist, checks=False).astype(np.float64)
    try:
        import fastcluster
    except ImportError:  # pragma: no cover - fastcluster is a dependency
        from scipy.cluster.hierarchy import linkage

        return linkage(condensed, method=method)
    return _fastcluster_in_place(fastcluster, condensed, method)


def _fastcluster_in_place(fastcluster, condensed: np.ndarray, method: str) -> np.ndarray:
    """fastcluster's linkage using ``condensed`` as scratch memory (it is overwritten).

    ``fastcluster.linkage(..., preserve_input=False)`` 1.3 still copies its input first
    (``array(X, subok=True)``): measured here, +0.27 GB peak at n = 8,512, which doubles the
    memory of the clustering. Its C entry point with the same arguments avoids the copy; if
    that private name ever disappears, fall back to the public call.
    """
    wrap, methods = getattr(fastcluster, "linkage_wrap", None), getattr(fastcluster, "mthidx", None)
    if wrap is None or methods is None or condensed.dtype != np.float64 or not condensed.flags.c_contiguous:
        return fastcluster.linkage(condensed, method=method, preserve_input=False)
    n = int(round((1 + np.sqrt(1 + 8 * len(condensed))) / 2))
    linkage = np.empty((n - 1, 4), dtype=np.float64)
    if n > 1:
        wrap(n, condensed, linkage, methods[method])
    return linkage


def cut_labels(Z: np.ndarray, ks: list[int]) -> dict[int, np.ndarray]:
    """Partitions of the dendrogram into exactly ``k`` clusters for each ``k`` in ``ks``.

    Replays the merges with a union-find (ties in merge heights cannot change the count,
    unlike ``fcluster(criterion="maxclust")``). Labels are 0..k-1 in order of each cluster's
    first neuron.
    """
    n = Z.shape[0] + 1
    parent = np.arange(2 * n - 1)
    wanted = {k for k in ks if 1 <= k <= n}
    result: dict[int, np.ndarray] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def snapshot() -> np.ndarray:
        roots = np.array([root(i) for i in range(n)])
        _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))
        return order[inverse]

    clusters = n
    if clusters in wanted:
        result[clusters] = snapshot()
    for step, (a, b, _, _) in enumerate(Z):
        parent[int(a)] = n + step
        parent[int(b)] = n + step
        clusters -= 1
        if clusters in wanted:
            result[clusters] = snapshot()
    return result


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
    """

    linkage: np.ndarray
    labels: np.ndarray
    k: int
    silhouette_by_k: dict[int, float] = field(default_factory=dict)


def cluster(
    dist: Distances, method: str = DEFAULT_METHOD, k_range: tuple[int, int] = DEFAULT_K_RANGE, k: int | None = None
) -> ClusterResult:
    """Cluster ``n`` neurons and pick k by the largest mean silhouette in ``k_range``.

    Parameters
    ----------
    dist : np.ndarray or NeuronDistance
        Square ``(n, n)`` distance matrix, or the streamed distance of the neurons.
    method : {"single", "complete", "average", "ward"}
    k_range : (int, int)
        Inclusive range searched; clipped to ``[2, n-1]``. Ties go to the smaller k.
    k : int, optional
        Fixed number of clusters (no search).
    """
    n = dist.n if isinstance(dist, NeuronDistance) else len(dist)
    if n == 0:
        return ClusterResult(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), 0, {})
    if n == 1:
        return ClusterResult(np.zeros((0, 4)), np.zeros(1, dtype=np.int64), 1, {})
    Z = linkage_matrix(dist, method)
    if k is not None:
        if not 1 <= k <= n:
            raise InputError(f"k={k} is outside 1..{n} (the number of active neurons)")
        labels = cut_labels(Z, [k])[k]
        scores = nested_silhouettes(dist, {k: labels}) if 2 <= k <= n - 1 else {}
        return ClusterResult(Z, labels, k, scores)
    low, high = k_range
    if low > high or low < 1:
        raise InputError(f"k range {low}:{high} is empty; use MIN:MAX with 1 <= MIN <= MAX")
    low, high = max(2, low), min(high, n - 1)
    if low > high:  # too few neurons for the range: take the largest feasible k
        k = max(1, min(k_range[1], n - 1))
        labels = cut_labels(Z, [k])[k]
        return ClusterResult(Z, labels, k, {})
    ks = list(range(low, high + 1))
    cuts = cut_labels(Z, ks)
    scores = nested_silhouettes(dist, cuts)
    best = max(ks, key=lambda kk: (scores[kk], -kk))
    return ClusterResult(Z, cuts[best], best, scores)
