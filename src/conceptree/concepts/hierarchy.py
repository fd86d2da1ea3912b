"""A concise top level of concepts, nested over sub-concepts and neurons.

Every route gives a binary **tree** (scipy linkage format) over the neurons it groups; one rule
picks the **top level** from it (:func:`top_frontier`), and the sub-concepts are a cut of a tree
nested inside that top level (:func:`nested_linkage`), so each sub-concept lies in exactly one
top-level concept and the leaves' neurons partition the top level's.

The frontier rule (constants in one place, fixed before the dev run in
``docs/results/concise.md``): start from the tree's own cut into :data:`TOP_START` nodes, then,
while there are fewer than :data:`TOP_MAX` nodes and the most relevant one holds more than
:data:`DOMINANT_SHARE` of the frontier's positive relevance, split it into its two children.

Routes without a reference set (:data:`ROUTES`):

``"own"``
    The photo's own Ward tree (today's clustering), its top level by the frontier rule.
``"consensus"``
    The co-association of deterministic k-means partitions of jittered copies of the model input
    (:data:`JITTERS`; none of them is a held-out nuisance change), average linkage on
    ``1 - co-association`` as the top tree; Ward within each top-level concept below it.

The model-level routes (a tree built from a reference index) are in
:mod:`conceptree.dictionary.hierarchy`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.distance import squareform

from ..attribution.results import NeuronMaps
from ..errors import InputError
from .clustering import DEFAULT_K_RANGE, nested_silhouettes
from .concepts import ConceptSet, _build_concepts, _neuron, canonical_order
from .distance import DistanceConfig, NeuronDistance, quantise_features
from .layer_maps import to_grid
from .linkage import cut_labels, linkage_matrix

#: The frontier rule: the tree's own cut into this many nodes first ...
TOP_START = 5
#: ... then dominating nodes are split, up to this many top-level concepts ...
TOP_MAX = 8
#: ... a node dominates when it holds more than this share of the frontier's positive relevance.
DOMINANT_SHARE = 0.35
#: Routes of the photo's own hierarchy (no reference set).
ROUTES: tuple[str, ...] = ("own", "consensus")
#: The consensus route's copies of the model input (none equals a held-out change of
#: :data:`conceptree.evaluation.nuisance.CHANGES`): (kind, parameter).
JITTERS: tuple[tuple[str, float], ...] = (
    ("jpeg", 75), ("shift", 3), ("shift", -1), ("zoom", 0.025), ("zoom", -0.025), ("brightness", -0.025),
)
#: k of the k-means partition of each copy, and the grid its maps are pooled to.
CONSENSUS_K = 20
CONSENSUS_GRID = (14, 14)


# ---------------------------------------------------------------------------------------------- trees
@dataclass(frozen=True)
class Tree:
    """A binary tree over ``n`` leaves in scipy's linkage format.

    Node ``i < n`` is leaf ``i``; node ``n + j`` is the merge of row ``j`` of ``linkage``
    (``(n - 1, 4)``: two children, height, size). Rows are in merge order, so a larger node id
    is a later (higher) merge.
    """

    linkage: np.ndarray

    @property
    def n(self) -> int:
        return int(self.linkage.shape[0]) + 1

    @property
    def root(self) -> int:
        return 2 * self.n - 2

    def children(self, node: int) -> tuple[int, int]:
        """The two children of an internal node."""
        row = self.linkage[node - self.n]
        return int(row[0]), int(row[1])

    def height(self, node: int) -> float:
        """Merge height of a node (0 for a leaf)."""
        return 0.0 if node < self.n else float(self.linkage[node - self.n, 2])

    def node_sums(self, leaf_values: np.ndarray) -> np.ndarray:
        """Sum of ``leaf_values`` ``(n,)`` under every node, ``(2n - 1,)`` float64."""
        values = np.zeros(2 * self.n - 1)
        values[: self.n] = leaf_values
        kids = self.linkage[:, :2].astype(np.int64)
        for j in range(self.n - 1):
            values[self.n + j] = values[kids[j, 0]] + values[kids[j, 1]]
        return values

    def leaves(self, node: int) -> np.ndarray:
        """The leaves under ``node``, ascending."""
        if node < self.n:
            return np.array([node], dtype=np.int64)
        out, stack = [], [node]
        while stack:
            v = stack.pop()
            if v < self.n:
                out.append(v)
            else:
                stack.extend(self.children(v))
        return np.sort(np.asarray(out, dtype=np.int64))

    def labels(self, frontier: Sequence[int]) -> np.ndarray:
        """Position in ``frontier`` of every leaf's frontier node, ``(n,)`` (-1: under none)."""
        out = np.full(self.n, -1, dtype=np.int64)
        for i, node in enumerate(frontier):
            out[self.leaves(int(node))] = i
        return out


def top_frontier(tree: Tree, node_relevance: np.ndarray, *, start: int = TOP_START, cap: int = TOP_MAX,
                 dominant: float = DOMINANT_SHARE) -> list[int]:
    """The top level of ``tree`` on one photo (the module's frontier rule).

    Parameters
    ----------
    tree : Tree
    node_relevance : np.ndarray
        ``(2n - 1,)`` relevance of every node on the photo (:meth:`Tree.node_sums`).
    start, cap, dominant
        :data:`TOP_START`, :data:`TOP_MAX`, :data:`DOMINANT_SHARE`.

    Returns
    -------
    list[int]
        Node ids, in the order they were made (not ranked).
    """
    frontier = [tree.root]
    while len(frontier) < min(start, tree.n):  # the tree's own cut: highest merge first
        node = max(v for v in frontier if v >= tree.n)
        frontier.remove(node)
        frontier.extend(tree.children(node))
    while len(frontier) < min(cap, tree.n):
        positive = sum(max(float(node_relevance[v]), 0.0) for v in frontier)
        node = max(frontier, key=lambda v: (float(node_relevance[v]), -v))
        if node < tree.n or positive <= 0 or node_relevance[node] <= dominant * positive:
            break
        frontier.remove(node)
        frontier.extend(tree.children(node))
    return frontier


def grow_frontier(tree: Tree, frontier: Sequence[int], k: int, node_relevance: np.ndarray | None = None) -> list[int]:
    """``frontier`` refined to ``k`` nodes: the highest merge undone first, or with
    ``node_relevance`` the most relevant node split first (ties: the higher merge)."""
    frontier = list(frontier)
    while len(frontier) < k:
        internal = [v for v in frontier if v >= tree.n]
        if not internal:
            break
        if node_relevance is None:
            node = max(internal)
        else:
            node = max(internal, key=lambda v: (float(node_relevance[v]), v))
        frontier.remove(node)
        frontier.extend(tree.children(node))
    return frontier


def subtree(tree: Tree, node: int) -> tuple[np.ndarray, np.ndarray]:
    """The subtree under ``node`` as ``(leaves (m,), linkage (m - 1, 4))`` over local leaf ids."""
    leaves = tree.leaves(node)
    local = {int(v): i for i, v in enumerate(leaves)}
    rows: list[tuple[int, int, float, float]] = []
    stack = [node] if node >= tree.n else []
    internal = []
    while stack:
        v = stack.pop()
        internal.append(v)
        stack.extend(c for c in tree.children(v) if c >= tree.n)
    for v in sorted(internal):  # merge order kept
        a, b = tree.children(v)
        local[v] = len(leaves) + len(rows)
        rows.append((local[a], local[b], tree.height(v), float(tree.linkage[v - tree.n, 3])))
    return leaves, np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def nested_linkage(groups: Sequence[np.ndarray], linkages: Sequence[np.ndarray], n: int) -> np.ndarray:
    """One tree over ``n`` leaves whose top merges join the ``groups``.

    Parameters
    ----------
    groups : sequence of np.ndarray
        A partition of ``range(n)`` into the top-level concepts' leaves.
    linkages : sequence of np.ndarray
        Each group's own tree over its local leaf ids (``(m - 1, 4)``; empty for one leaf).
    n : int

    Returns
    -------
    np.ndarray
        ``(n - 1, 4)`` linkage whose within-group merges keep their heights and come first in
        height order, then the groups joined above every one of them: any cut into
        ``k >= len(groups)`` clusters lies inside the groups.
    """
    covered = np.sort(np.concatenate([np.asarray(g, dtype=np.int64) for g in groups])) if groups else np.zeros(0)
    if not np.array_equal(covered, np.arange(n)):
        raise InputError("the top-level groups must partition the neurons")
    merges = []  # (height, group, local row)
    for g, Z in enumerate(linkages):
        for j in range(len(Z)):
            merges.append((float(Z[j, 2]), g, j))
    merges.sort(key=lambda t: (t[0], t[1], t[2]))
    node_of: list[dict[int, int]] = [{i: int(v) for i, v in enumerate(np.asarray(groups[g], dtype=np.int64))}
                                     for g in range(len(groups))]
    size = np.ones(2 * n - 1)
    rows: list[tuple[int, int, float, float]] = []
    for height, g, j in merges:
        m = len(groups[g])
        Z = linkages[g]
        a, b = node_of[g][int(Z[j, 0])], node_of[g][int(Z[j, 1])]
        new = n + len(rows)
        size[new] = size[a] + size[b]
        rows.append((min(a, b), max(a, b), height, size[new]))
        node_of[g][m + j] = new
    top = max((r[2] for r in rows), default=0.0)
    roots = [node_of[g][len(groups[g]) + len(linkages[g]) - 1] if len(linkages[g]) else int(groups[g][0])
             for g in range(len(groups))]
    step = 0.1 * top if top > 0 else 1.0
    joins = 0
    while len(roots) > 1:  # join the groups above every within-group merge, in a fixed order
        a, b = roots.pop(0), roots.pop(0)
        new = n + len(rows)
        size[new] = size[a] + size[b]
        joins += 1
        rows.append((min(a, b), max(a, b), top + step * joins, size[new]))
        roots.append(new)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------- consensus
def jittered_inputs(x: torch.Tensor, mean: Sequence[float] | float, std: Sequence[float] | float,
                    jitters: Sequence[tuple[str, float]] = JITTERS) -> torch.Tensor:
    """The consensus route's copies of a model input ``(1, C, H, W)`` -> ``(B, C, H, W)``.

    ``mean``/``std`` are the preprocessing's, used to go back to pixels for a JPEG re-encoding and
    a zoom (on uint8 pixels with PIL, bit-identical on any thread count) and a brightness change;
    shifts replicate the edge, zooms are centred (bilinear), as the held-out changes of
    :mod:`conceptree.evaluation.nuisance` do.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise InputError(f"expected one model input (1, C, H, W), got shape {tuple(x.shape)}")
    c, h, w = x.shape[1:]
    m = torch.as_tensor(mean, dtype=x.dtype).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).reshape(1, -1, 1, 1)
    out = []
    for kind, value in jitters:
        if kind == "jpeg":
            if c != 3:
                raise InputError(f"a JPEG jitter needs 3 colour channels, the input has {c}")
            pixels = ((x * s + m) * 255).round().clamp(0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy()
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=int(value))
            buf.seek(0)
            back = torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1)[None]
            out.append((back.to(x.dtype) / 255 - m) / s)
        elif kind == "shift":  # positive: content moves down-right; negative: down-left
            p = int(abs(value))
            if value > 0:
                out.append(F.pad(x[..., : h - p, : w - p], (p, 0, p, 0), mode="replicate"))
            else:
                out.append(F.pad(x[..., : h - p, p:], (0, p, p, 0), mode="replicate"))
        elif kind == "zoom":  # in PIL on the pixels: torch's interpolation differs in the last bits by thread count
            if c != 3:
                raise InputError(f"a zoom jitter needs 3 colour channels, the input has {c}")
            picture = Image.fromarray(((x * s + m) * 255).round().clamp(0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy())
            if value > 0:
                ch, cw = round(h / (1 + value)), round(w / (1 + value))
                top, left = (h - ch) // 2, (w - cw) // 2
                zoomed = np.asarray(picture.resize((w, h), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch)))
            else:
                sh, sw = round(h * (1 + value)), round(w * (1 + value))
                top, left = (h - sh) // 2, (w - sw) // 2
                small = np.asarray(picture.resize((sw, sh), Image.Resampling.BILINEAR))
                zoomed = np.pad(small, ((top, h - sh - top), (left, w - sw - left), (0, 0)), mode="edge")
            back = torch.from_numpy(np.array(zoomed)).permute(2, 0, 1)[None]
            out.append((back.to(x.dtype) / 255 - m) / s)
        elif kind == "brightness":
            out.append(((x * s + m) * (1 + value) - m) / s)
        else:
            raise InputError(f"unknown jitter {kind!r}; use jpeg, shift, zoom or brightness")
    return torch.cat(out)


def kmeans_labels(features: np.ndarray, k: int, *, iterations: int = 30, seed: int = 0) -> np.ndarray:
    """Deterministic k-means (k-means++ seeded by ``seed``, Lloyd) of ``(n, d)`` rows -> ``(n,)``.

    The features are put on the fixed-point grid of :func:`quantise_features`, so the Gram products
    are exact integer sums and the labels are the same on any BLAS thread count (scikit-learn's
    k-means promises no such thing).
    """
    n = len(features)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, n)
    q, _ = quantise_features(np.asarray(features, dtype=np.float32))
    sq = (q * q).sum(1)
    rng = np.random.default_rng(seed)
    centres = [int(rng.integers(n))]
    best = sq + sq[centres[0]] - 2 * (q @ q[centres[0]])
    for _ in range(1, k):
        d = np.maximum(best, 0)
        total = d.sum()
        pick = int(rng.choice(n, p=d / total)) if total > 0 else int(np.argmax(d))
        centres.append(pick)
        best = np.minimum(best, sq + sq[pick] - 2 * (q @ q[pick]))
    c = q[centres].copy()
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(iterations):
        d = sq[:, None] + (c * c).sum(1)[None, :] - 2 * (q @ c.T)
        new = np.argmin(d, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if members.any():
                c[j] = np.round(q[members].mean(0))  # stay on the integer grid
    return labels


def co_association(partitions: Sequence[np.ndarray]) -> np.ndarray:
    """Fraction of ``partitions`` (each ``(n,)`` labels) that put each pair together, ``(n, n)`` float32."""
    n = len(partitions[0])
    out = np.zeros((n, n), np.float32)
    for labels in partitions:
        one_hot = np.zeros((n, int(labels.max()) + 1), np.float32)
        one_hot[np.arange(n), labels] = 1.0
        out += one_hot @ one_hot.T  # 0/1 sums: exact in float32
    return out / len(partitions)


def consensus_tree(partitions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Average linkage on ``1 - co-association``: ``(linkage (n - 1, 4), co-association (n, n))``."""
    co = co_association(partitions)
    dist = 1.0 - co.astype(np.float64)
    np.fill_diagonal(dist, 0.0)
    return linkage_matrix(squareform(dist, checks=False), "average"), co


def pooled_features(maps_nhw: np.ndarray | torch.Tensor, relevance: np.ndarray, lam: float = 0.5) -> np.ndarray:
    """Rows ``[sqrt(λ/2)·m̂_p, sqrt(1-λ)·r_p / spread(r)]`` of unit maps and relevance, ``(n, h·w + 1)``.

    The consensus copies' k-means features: the exact-Ward features of
    :mod:`conceptree.concepts.distance` with fixed normalisers (unit maps are at most 2 apart; the
    relevance is divided by its 0.5–99.5 percentile spread).
    """
    maps = np.asarray(maps_nhw, dtype=np.float64).reshape(len(relevance), -1)
    norms = np.linalg.norm(maps, axis=1, keepdims=True)
    maps = np.divide(maps, norms, out=np.zeros_like(maps), where=norms > 0)
    r = np.asarray(relevance, dtype=np.float64)
    spread = float(np.percentile(r, 99.5) - np.percentile(r, 0.5)) if r.size else 0.0
    term = r / spread if spread > 0 else np.zeros_like(r)
    return np.hstack([np.sqrt(lam / 2) * maps, np.sqrt(1 - lam) * term[:, None]]).astype(np.float32)


def consensus_partitions(copies: Sequence[tuple[np.ndarray, np.ndarray]], k: int = CONSENSUS_K,
                         grid: tuple[int, int] = CONSENSUS_GRID) -> list[np.ndarray]:
    """One k-means partition per copy, from each copy's ``(maps (n, h, w), relevance (n,))``
    (maps area-pooled to ``grid`` first)."""
    out = []
    for maps, rel in copies:
        pooled = to_grid(torch.as_tensor(np.asarray(maps, dtype=np.float32)), grid).numpy()
        out.append(kmeans_labels(pooled_features(pooled, rel), k))
    return out


def tree_from_groups(groups: Sequence[np.ndarray], n: int,
                     within: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """:func:`nested_linkage` with each group's tree from ``within(members) -> linkage``."""
    return nested_linkage(groups, [within(np.asarray(g)) if len(g) > 1 else np.zeros((0, 4)) for g in groups], n)


# ---------------------------------------------------------------------------------------------- concepts
def hierarchical_concepts(
    neurons: NeuronMaps,
    distance: DistanceConfig | None = None,
    k_range: tuple[int, int] | None = None,
    k: int | None = None,
    *,
    route: str = "own",
    copies: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    groups_of_row: np.ndarray | None = None,
    group_ids: Sequence[int] | None = None,
) -> ConceptSet:
    """Cluster one photo's neurons into a top level, sub-concepts nested in it, and neurons.

    Parameters
    ----------
    neurons : NeuronMaps
        The neurons to group and their features (:func:`~conceptree.concepts.features.features_for`).
    distance : DistanceConfig, optional
        The sub-concepts' distance (exact Ward; default :class:`DistanceConfig`).
    k_range : (int, int), optional
        Sub-concepts: k searched by silhouette (default the clustering's), at least the top level's size.
    k : int, optional
        A fixed number of sub-concepts instead.
    route : {"own", "consensus", "given"}
        Where the top level comes from (module docstring); ``"given"``: ``groups_of_row``.
    copies : sequence of (maps (n, h, w), relevance (n,)), optional
        ``"consensus"``: the jittered copies' own-layer maps and ``r_p`` of the same ``n`` neurons
        (rows of ``neurons``); the photo itself is added as one more partition.
    groups_of_row : np.ndarray, optional
        ``"given"``: top-level group of each row of ``neurons`` (``-1``: left out), ``(n,)``.
    group_ids : sequence of int, optional
        ``"given"``: the id of each group (e.g. a model-level tree's node id).

    Returns
    -------
    ConceptSet
        ``concepts`` are the sub-concepts (ranked; each with ``parent``, the rank of its top-level
        concept), ``top_level`` the top-level concepts (ranked; ``children`` their sub-concepts'
        ranks), ``linkage`` the nested tree over ``active_index``.
    """
    if route not in (*ROUTES, "given"):
        raise InputError(f"unknown hierarchy route {route!r}; use one of {', '.join(ROUTES)}")
    distance = distance or DistanceConfig()
    if distance.exact_ward is None:
        distance = replace(distance, exact_ward=True)
    low_k, high_k = k_range or DEFAULT_K_RANGE
    k_range = (int(low_k), int(high_k))
    t0 = time.perf_counter()
    order = canonical_order(neurons)
    flat = neurons.maps.reshape(len(neurons), -1)
    inactive_mask = (neurons.relevance == 0) & ~np.any(flat != 0, axis=1)
    if route == "given":
        if groups_of_row is None or len(groups_of_row) != len(neurons):
            raise InputError("the 'given' route needs groups_of_row with one group per neuron row")
        inactive_mask |= np.asarray(groups_of_row) < 0
    active = order[~inactive_mask[order]]
    inactive = order[inactive_mask[order]]
    n = len(active)
    if n < 2:
        raise InputError(f"{n} active neuron(s): too few to build a hierarchy")
    relevance = neurons.relevance[active]
    dist = NeuronDistance(neurons.maps[active], relevance, distance)
    condensed = dist.condensed()
    square = squareform(condensed)
    t1 = time.perf_counter()
    info: dict = {"route": route, "rule": {"start": TOP_START, "cap": TOP_MAX, "dominant": DOMINANT_SHARE}}
    if route == "given":
        labels_top = np.asarray(groups_of_row)[active]
        present = sorted(set(labels_top.tolist()))
        groups = [np.flatnonzero(labels_top == g) for g in present]
        ids = [int(group_ids[g]) for g in present] if group_ids is not None else [None] * len(groups)
        subs = [linkage_matrix(square[np.ix_(g, g)], "ward") if len(g) > 1 else np.zeros((0, 4)) for g in groups]
    else:
        if route == "own":
            top_tree = Tree(linkage_matrix(condensed, "ward"))
        else:
            if copies is None or not copies:
                raise InputError("the consensus route needs the jittered copies' maps (copies=...)")
            own = (neurons.maps[active], relevance)
            partitions = consensus_partitions([own, *[(m[active], r[active]) for m, r in copies]])
            z, co = consensus_tree(partitions)
            top_tree = Tree(z)
            info["copies"] = len(copies)
        del condensed
        front = top_frontier(top_tree, top_tree.node_sums(relevance))
        groups = [top_tree.leaves(v) for v in front]
        ids = [None] * len(groups)
        if route == "own":
            subs = [subtree(top_tree, v)[1] for v in front]
        else:
            subs = [linkage_matrix(square[np.ix_(g, g)], "ward") if len(g) > 1 else np.zeros((0, 4)) for g in groups]
            info["consensus_within"] = [float(co[np.ix_(g, g)].mean()) for g in groups]
    nested = nested_linkage(groups, subs, n)
    t2 = time.perf_counter()
    n_top = len(groups)
    if k is not None:
        if not n_top <= k <= n:
            raise InputError(f"k={k} is outside {n_top}..{n} (top-level concepts .. active neurons)")
        ks = [k]
    else:
        low, high = max(k_range[0], n_top, 2), min(k_range[1], n - 1)
        ks = list(range(low, high + 1)) if low <= high else [max(n_top, min(k_range[1], n - 1))]
    cuts = cut_labels(nested, ks)
    silhouettes = nested_silhouettes(square, {kk: v for kk, v in cuts.items() if 2 <= kk <= n - 1})
    best = ks[0] if len(ks) == 1 else max(ks, key=lambda kk: (silhouettes.get(kk, -np.inf), -kk))
    del square
    top_of_leaf = np.empty(n, dtype=np.int64)
    for g, members in enumerate(groups):
        top_of_leaf[members] = g
    top = _build_concepts(neurons, active, top_of_leaf, n_top, order)
    position = {int(row): i for i, row in enumerate(active)}  # neuron row -> leaf
    rank_of_group = {}
    for concept in top:  # _build_concepts ranks by relevance; each group's rank from a member
        g = int(top_of_leaf[position[int(concept.index[0])]])
        rank_of_group[g] = concept.rank
        concept.concept_id = ids[g]
    subs_concepts = _build_concepts(neurons, active, cuts[best], best, order)
    for concept in subs_concepts:
        parent = rank_of_group[int(top_of_leaf[position[int(concept.index[0])]])]
        concept.parent = parent
        top[parent - 1].children.append(concept.rank)
    t3 = time.perf_counter()
    info["top_nodes"] = list(ids) if any(i is not None for i in ids) else None
    return ConceptSet(concepts=subs_concepts, inactive=[_neuron(neurons, int(i)) for i in inactive], k=best,
                      silhouette_by_k=silhouettes, linkage=nested, active_index=active.astype(np.int64),
                      distance=distance, method="ward", k_range=k_range,
                      timings={"distance_s": t1 - t0, "linkage_and_k_s": t3 - t1, "top_level_s": t2 - t1,
                               "stability_s": 0.0},
                      top_level=top, hierarchy=info)

