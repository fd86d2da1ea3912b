"""One image's concepts from a dictionary: no clustering, the same concept ids on every image.

After the one LRP pass, each dictionary concept's relevance on the image is the sum of its
members' ``r_p``. The explanation lists the **concise list**, a rule fixed before the dev run
(``docs/results/dictionary.md``):

    the concepts in order of decreasing relevance, the fewest whose relevances sum to at least
    :data:`CONCISE_SHARE` (80 %) of the summed relevance of the concepts with positive
    relevance, at most :data:`CONCISE_CAP` (25) and at least one.

A caller may instead ask for a fixed number ``k`` (the ``k`` strongest), as the evaluation does
at equal complexity.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..attribution.results import Attribution, NeuronMaps
from ..concepts.concepts import Concept, ConceptSet, Neuron
from ..concepts.distance import DEFAULT_MAP_SIZE, DistanceConfig
from ..concepts.layer_maps import layer_neuron_maps
from ..errors import InputError
from .store import ConceptDictionary

#: the concise list holds the fewest concepts reaching this share of the positive concept relevance ...
CONCISE_SHARE = 0.8
#: ... and at most this many.
CONCISE_CAP = 25


def neuron_relevance(attribution: Attribution, dictionary: ConceptDictionary) -> np.ndarray:
    """``r_p`` of every neuron of one LRP pass in the dictionary's column order, ``(neurons,)`` float64."""
    out = np.zeros(dictionary.n_neurons)
    for layer, (offset, channels) in dictionary.columns.items():
        if layer not in attribution.layer_relevance:
            raise InputError(f"layer {layer!r} of the dictionary has no relevance in this attribution; use an "
                             "explainer of the dictionary's layers")
        rel = attribution.layer_relevance[layer].double().flatten(1).sum(1).cpu().numpy()
        if rel.size != channels:
            raise InputError(f"layer {layer!r} has {rel.size} channels here and {channels} in the dictionary")
        out[offset : offset + channels] = rel
    return out


def concise_list(concept_relevance: np.ndarray, share: float = CONCISE_SHARE, cap: int = CONCISE_CAP,
                 k: int | None = None) -> np.ndarray:
    """Ids of the concepts an explanation lists (module docstring), strongest first.

    Parameters
    ----------
    concept_relevance : np.ndarray
        ``(concepts,)`` relevance of each dictionary concept on the image.
    share, cap : float, int
        The rule's share and cap.
    k : int, optional
        The ``k`` strongest instead of the rule.

    Returns
    -------
    np.ndarray
        Concept ids, ``(n,)`` int64, by decreasing relevance (ties: smaller id first).
    """
    r = np.asarray(concept_relevance, dtype=np.float64)
    order = np.lexsort((np.arange(r.size), -r))
    if k is not None:
        if not 1 <= k <= r.size:
            raise InputError(f"k must be in 1..{r.size} (the dictionary's concepts), got {k}")
        return order[:k]
    if not 0.0 < share <= 1.0 or cap < 1:
        raise InputError(f"share must be in (0, 1] and cap >= 1, got {share} and {cap}")
    positive = float(np.clip(r, 0, None).sum())
    if positive <= 0:
        return order[:1]
    reached = np.cumsum(r[order]) >= share * positive - 1e-12 * positive
    n = int(np.argmax(reached)) + 1 if reached.any() else r.size
    return order[: max(1, min(n, cap))]


def dictionary_concepts(
    dictionary: ConceptDictionary,
    attribution: Attribution,
    layers: list[str],
    *,
    k: int | None = None,
    share: float = CONCISE_SHARE,
    cap: int = CONCISE_CAP,
    map_size: tuple[int, int] | None = DEFAULT_MAP_SIZE,
) -> tuple[ConceptSet, NeuronMaps]:
    """The concepts of one image under a dictionary, and the listed members' own-layer maps.

    Parameters
    ----------
    dictionary : ConceptDictionary
    attribution : Attribution
        The image's LRP pass (an engine of the dictionary's model, rules and layers).
    layers : list[str]
        The engine's layers in model order (``NeuronMaps.layers``).
    k, share, cap
        :func:`concise_list`.
    map_size : (int, int)
        Grid of the member maps (the report's thumbnails).

    Returns
    -------
    concepts : ConceptSet
        The listed concepts ranked by relevance; each :class:`Concept` carries its dictionary
        id (``concept_id``), relevance = the sum of its members' ``r_p``, share = that over
        ``Σ_p r_p`` of every neuron, representative = its member with the largest ``r_p`` here.
    neurons : NeuronMaps
        Own-layer maps of the listed concepts' members (``Concept.index`` refers to its rows).
    """
    r = neuron_relevance(attribution, dictionary)
    by_concept = dictionary.concept_relevance(r)
    listed = concise_list(by_concept, share, cap, k)
    total = float(r.sum())
    member_cols = np.sort(np.concatenate([dictionary.concepts[int(c)].columns for c in listed]))
    names = dictionary.neuron_names()
    neurons = layer_neuron_maps(attribution, layers, dictionary.channels_of(member_cols), map_size or DEFAULT_MAP_SIZE)
    # neurons' rows follow the columns' order (layers in model order, channels ascending)
    row_of_column = np.full(dictionary.n_neurons, -1, dtype=np.int64)
    row_of_column[member_cols] = np.arange(member_cols.size)
    layer_names = [neurons.layers[i] for i in neurons.layer_index.tolist()]
    channels, relevances = neurons.channel.tolist(), neurons.relevance.tolist()
    concepts = []
    for rank, cid in enumerate(listed, start=1):
        rows = row_of_column[dictionary.concepts[int(cid)].columns]
        rows = rows[np.lexsort((rows, -neurons.relevance[rows]))]
        members = [Neuron(layer_names[i], channels[i], relevances[i]) for i in rows.tolist()]
        if rows.size and rows[0] < 0:  # pragma: no cover - the member columns were all selected above
            raise RuntimeError("a dictionary member is missing from the neuron maps")
        value = float(by_concept[cid])
        concepts.append(Concept(rank=rank, relevance=value, share=value / total if total else 0.0,
                                representative=members[0], neurons=members,
                                layer_histogram=dict(Counter(n.layer for n in members)), index=rows,
                                representative_index=int(rows[0]), concept_id=int(cid)))
    inactive = []
    for col in np.flatnonzero(dictionary.labels < 0):
        layer, channel = names[int(col)].rsplit(":", 1)
        inactive.append(Neuron(layer, int(channel), float(r[int(col)])))
    listed_share = float(by_concept[listed].sum() / total) if total else 0.0
    info = {"path": str(dictionary.path) if dictionary.path else None, "k": dictionary.k,
            "rule": {"share": share, "cap": cap} if k is None else {"k": k},
            "listed": len(listed), "listed_share": listed_share, "params": {
                key: dictionary.params.get(key) for key in ("features", "location_weight", "method", "k", "images")}}
    concept_set = ConceptSet(concepts=concepts, inactive=inactive, k=len(concepts), silhouette_by_k={},
                             linkage=np.zeros((0, 4)), active_index=np.arange(len(neurons), dtype=np.int64),
                             distance=DistanceConfig(), method="dictionary", k_range=(len(concepts), len(concepts)),
                             dictionary=info)
    return concept_set, neurons
