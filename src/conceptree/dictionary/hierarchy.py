"""A model-level concept tree: the dictionary's dendrogram, with the same node ids on every photo.

The dictionary (:mod:`conceptree.dictionary.build`) keeps the Ward tree of every active neuron
over the reference set. Its nodes are the model-level concepts: node ``v`` means the same neurons
on every image. On one photo the top level is the frontier that
:func:`~conceptree.concepts.hierarchy.top_frontier` picks by the photo's relevance (a node that
dominates the photo is split there); two ways to go below it (:data:`TREE_ROUTES`):

``"tree"``
    the model-level frontier continued by splitting the photo's most relevant node: every
    sub-concept is a model-level node too (the same neurons on every photo);
``"tree+own"``
    the photo's strongest neurons within each top-level node, clustered on their own-layer maps
    (Ward, as the per-image route): sub-concepts that localise on this photo, under top-level ids
    that are the model's.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..attribution.results import Attribution, NeuronMaps
from ..concepts.concepts import Concept, ConceptSet, Neuron
from ..concepts.distance import DistanceConfig
from ..concepts.hierarchy import Tree, grow_frontier, hierarchical_concepts, top_frontier
from ..concepts.layer_maps import layer_neuron_maps
from ..errors import InputError
from .concepts import neuron_relevance
from .store import ConceptDictionary

TREE_ROUTES: tuple[str, ...] = ("tree", "tree+own")
#: Sub-concepts of the ``"tree"`` route when no k is asked for (the evaluation's complexity).
TREE_SUBCONCEPTS = 20
#: Grid of the members' own-layer maps kept for the report's thumbnails (every active neuron).
THUMBNAIL_GRID = (14, 14)


class ModelTree:
    """The dictionary's tree over its active neurons, with columns <-> leaves.

    Parameters
    ----------
    dictionary : ConceptDictionary
        Built with its linkage (every dictionary built by this library has one).
    """

    def __init__(self, dictionary: ConceptDictionary) -> None:
        self.dictionary = dictionary
        self.columns = np.flatnonzero(dictionary.labels >= 0)  # leaf i is column columns[i]
        if dictionary.linkage.shape != (len(self.columns) - 1, 4):
            raise InputError(f"the concept dictionary at {dictionary.path} has no tree of its {len(self.columns)} "
                             "active neurons; rebuild it with `conceptree dictionary`")
        self.tree = Tree(dictionary.linkage)
        self.leaf_of_column = np.full(dictionary.n_neurons, -1, dtype=np.int64)
        self.leaf_of_column[self.columns] = np.arange(len(self.columns))

    def node_relevance(self, attribution: Attribution) -> tuple[np.ndarray, np.ndarray]:
        """``(r per column (neurons,), relevance of every node (2n - 1,))`` on one photo."""
        r = neuron_relevance(attribution, self.dictionary)
        return r, self.tree.node_sums(r[self.columns])

    def top_level(self, node_relevance: np.ndarray) -> list[int]:
        """The photo's top-level node ids (the frontier rule)."""
        return top_frontier(self.tree, node_relevance)

    def groups_of(self, neurons: NeuronMaps, top: list[int]) -> np.ndarray:
        """Position in ``top`` of the top-level node holding each row of ``neurons``, ``(n,)``
        (-1: a neuron the dictionary lists as inactive)."""
        offsets = {layer: offset for layer, (offset, _) in self.dictionary.columns.items()}
        cols = np.array([offsets[neurons.layers[li]] + int(c) for li, c in zip(neurons.layer_index, neurons.channel)],
                        dtype=np.int64)
        leaves = self.leaf_of_column[cols]
        return np.where(leaves >= 0, self.tree.labels(top)[np.maximum(leaves, 0)], -1)

    def permuted(self, seed: int) -> ModelTree:
        """The control: the same tree shape with its leaves given to random neurons."""
        other = ModelTree.__new__(ModelTree)
        other.dictionary, other.tree = self.dictionary, self.tree
        other.columns = np.random.default_rng(seed).permutation(self.columns)
        other.leaf_of_column = np.full(self.dictionary.n_neurons, -1, dtype=np.int64)
        other.leaf_of_column[other.columns] = np.arange(len(other.columns))
        return other


def tree_concepts(model_tree: ModelTree, attribution: Attribution, layers: list[str], *, k: int | None = None
                  ) -> tuple[ConceptSet, NeuronMaps]:
    """The ``"tree"`` route: top level and ``k`` sub-concepts, all model-level nodes.

    Parameters
    ----------
    model_tree : ModelTree
    attribution : Attribution
        The photo's LRP pass (an engine of the dictionary's model, rules and layers).
    layers : list[str]
        The engine's layers in model order.
    k : int, optional
        Sub-concepts (default :data:`TREE_SUBCONCEPTS`), at least the top level's size.

    Returns
    -------
    concepts : ConceptSet
        ``concepts``: the sub-concepts; ``top_level``: the top level; ``concept_id`` of both is the
        model-level node id. Relevance = the sum of the node's members' ``r_p``.
    neurons : NeuronMaps
        Own-layer maps (on :data:`THUMBNAIL_GRID`) of every active neuron (``Concept.index`` rows).
    """
    tree = model_tree.tree
    r, node_rel = model_tree.node_relevance(attribution)
    top = model_tree.top_level(node_rel)
    k = TREE_SUBCONCEPTS if k is None else k
    if k < len(top):
        raise InputError(f"k={k} is below the {len(top)} top-level concepts; ask for at least {len(top)}")
    subs = grow_frontier(tree, top, k, node_rel)
    d = model_tree.dictionary
    cols = np.sort(model_tree.columns)
    neurons = layer_neuron_maps(attribution, layers, d.channels_of(cols), THUMBNAIL_GRID)
    row_of_column = np.full(d.n_neurons, -1, dtype=np.int64)
    row_of_column[cols] = np.arange(cols.size)  # rows follow the columns' order
    total = float(r.sum())
    names = [(neurons.layers[li], int(c), float(v)) for li, c, v in
             zip(neurons.layer_index.tolist(), neurons.channel.tolist(), neurons.relevance.tolist())]

    def concept(node: int) -> Concept:
        rows = row_of_column[model_tree.columns[tree.leaves(node)]]
        rows = rows[np.lexsort((rows, -neurons.relevance[rows]))]
        members = [Neuron(*names[i]) for i in rows.tolist()]
        value = float(node_rel[node])
        return Concept(rank=0, relevance=value, share=value / total if total else 0.0, representative=members[0],
                       neurons=members, layer_histogram=dict(Counter(m.layer for m in members)), index=rows,
                       representative_index=int(rows[0]), concept_id=int(node))

    top_concepts = _ranked([concept(v) for v in top])
    sub_concepts = _ranked([concept(v) for v in subs])
    leaf_top = tree.labels(top)
    rank_of = {c.concept_id: c.rank for c in top_concepts}
    for c in sub_concepts:
        node = int(c.concept_id) if c.concept_id is not None else -1
        parent_node = top[int(leaf_top[tree.leaves(node)[0]])]
        c.parent = rank_of[parent_node]
        top_concepts[c.parent - 1].children.append(c.rank)
    info = {"route": "tree", "top_nodes": [c.concept_id for c in top_concepts],
            "dictionary": str(d.path) if d.path else None, "k": k}
    concept_set = ConceptSet(concepts=sub_concepts, inactive=[], k=len(sub_concepts), silhouette_by_k={},
                             linkage=np.zeros((0, 4)), active_index=np.arange(len(neurons), dtype=np.int64),
                             distance=DistanceConfig(), method="tree", k_range=(k, k), top_level=top_concepts,
                             hierarchy=info)
    return concept_set, neurons


def tree_own_concepts(model_tree: ModelTree, attribution: Attribution, neurons: NeuronMaps, *,
                      distance: DistanceConfig | None = None, k_range: tuple[int, int] | None = None,
                      k: int | None = None) -> ConceptSet:
    """The ``"tree+own"`` route: the model-level top level over the photo's clustered neurons,
    Ward of those neurons within each top-level node below it.

    ``neurons`` are the photo's features (:func:`~conceptree.concepts.features.features_for`);
    neurons inactive in the dictionary are left out. Top-level ``concept_id`` = the node id.
    """
    _, node_rel = model_tree.node_relevance(attribution)
    top = model_tree.top_level(node_rel)
    d = model_tree.dictionary
    concept_set = hierarchical_concepts(neurons, distance, k_range, k, route="given",
                                        groups_of_row=model_tree.groups_of(neurons, top), group_ids=top)
    concept_set.hierarchy = {**(concept_set.hierarchy or {}), "route": "tree+own",
                             "dictionary": str(d.path) if d.path else None}
    return concept_set


def _ranked(concepts: list[Concept]) -> list[Concept]:
    concepts.sort(key=lambda c: (-c.relevance, c.concept_id))
    for rank, c in enumerate(concepts, start=1):
        c.rank = rank
    return concepts
