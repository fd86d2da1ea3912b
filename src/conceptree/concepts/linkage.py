"""Agglomerative linkage of a distance and exact cuts of its dendrogram (fastcluster, scipy)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import squareform

from .distance import NeuronDistance, check_linkage

#: The default linkage (Ward on the exact-Ward distance; docs/results/concept_ablation.md).
DEFAULT_METHOD = "ward"


def linkage_matrix(dist: np.ndarray | NeuronDistance, method: str = DEFAULT_METHOD) -> np.ndarray:
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

    Replays the merges (ties in merge heights cannot change the count, unlike
    ``fcluster(criterion="maxclust")``): the finest cut by vectorised pointer jumping over the
    first ``n - k_max`` merges, the coarser ones by a union-find over its ``k_max`` clusters.
    Labels are 0..k-1 in order of each cluster's first neuron.
    """
    n = Z.shape[0] + 1
    wanted = sorted({k for k in ks if 1 <= k <= n}, reverse=True)
    if not wanted:
        return {}
    k_fine = wanted[0]
    steps = n - k_fine
    parent = np.arange(n + steps)
    if steps:
        children = Z[:steps, :2].astype(np.int64)
        parent[children[:, 0]] = n + np.arange(steps)
        parent[children[:, 1]] = n + np.arange(steps)
    while True:  # pointer jumping: every node to its root
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            break
        parent = jumped
    roots = parent[:n]
    fine = _first_order_labels(roots)
    cluster_of_node = dict(zip(roots.tolist(), fine.tolist(), strict=True))
    result = {k_fine: fine}
    union = np.arange(k_fine)

    def find(i: int) -> int:
        while union[i] != i:
            union[i] = union[union[i]]
            i = int(union[i])
        return i

    clusters = k_fine
    for step in range(steps, n - 1):
        a, b = find(cluster_of_node[int(Z[step, 0])]), find(cluster_of_node[int(Z[step, 1])])
        union[b] = a
        cluster_of_node[n + step] = a
        clusters -= 1
        if clusters in wanted[1:]:
            top = np.array([find(i) for i in range(k_fine)])
            result[clusters] = _first_order_labels(top[fine])
    return result


def _first_order_labels(ids: np.ndarray) -> np.ndarray:
    """``ids`` renamed 0..k-1 in order of first appearance."""
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].astype(np.int64)
