"""From neurons to concepts: inactive group, weighted clustering, representatives, tracing."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..attribution.results import NeuronMaps
from ..errors import InputError
from .clustering import DEFAULT_K_RANGE, DEFAULT_K_RULE, KEEP_CONDENSED_MAX, cluster
from .distance import DistanceConfig, NeuronDistance, check_linkage
from .linkage import DEFAULT_METHOD, cut_labels
from .stability import StabilityConfig, stability_label


@dataclass(frozen=True)
class Neuron:
    """One conv channel: where it is and how relevant it is for the explained class."""

    layer: str
    channel: int
    relevance: float


@dataclass
class Concept:
    """A group of neurons that attend to the same evidence.

    Attributes
    ----------
    rank : int
        1 = largest total relevance.
    relevance : float
        Sum of the members' ``r_p``.
    share : float
        ``relevance`` / total relevance of all neurons.
    representative : Neuron
        The member with the largest relevance; its map is the concept's map.
    neurons : list[Neuron]
        All members, by decreasing relevance.
    layer_histogram : dict[str, int]
        Members per layer.
    index : np.ndarray
        Rows of the members in the :class:`NeuronMaps` that was clustered.
    representative_index : int
        Row of the representative in that :class:`NeuronMaps`.
    concept_id : int or None
        The concept's id in a model's concept dictionary (:mod:`conceptree.dictionary`): the
        same on every image; None for concepts clustered on this image.
    stability : float or None
        Hennig's subsampling Jaccard of the concept (:mod:`conceptree.concepts.stability`;
        ≥ 0.75 stable, ≤ 0.5 fragile); None when not computed.
    parent : int or None
        A sub-concept's top-level concept (its rank in :attr:`ConceptSet.top_level`); None
        without a hierarchy.
    children : list[int]
        A top-level concept's sub-concepts (their ranks in :attr:`ConceptSet.concepts`).
    """

    rank: int
    relevance: float
    share: float
    representative: Neuron
    neurons: list[Neuron]
    layer_histogram: dict[str, int]
    index: np.ndarray = field(repr=False)
    representative_index: int = -1
    concept_id: int | None = None
    stability: float | None = None
    parent: int | None = None
    children: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.neurons)

    @property
    def stability_label(self) -> str:
        """``"stable"``, ``"weak"``, ``"fragile"`` or ``"unknown"`` (:func:`stability_label`)."""
        return stability_label(self.stability)

    def groups(self) -> dict[str, list[int]]:
        """The members as ``layer -> channels`` (input of :meth:`CRPEngine.group_maps`)."""
        group: dict[str, list[int]] = {}
        for neuron in self.neurons:
            group.setdefault(neuron.layer, []).append(neuron.channel)
        return group

    def to_dict(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "relevance": self.relevance,
            "share": self.share,
            "size": self.size,
            "representative": asdict(self.representative),
            "representative_index": self.representative_index,
            "neurons": [asdict(n) for n in self.neurons],
            "layer_histogram": self.layer_histogram,
            "index": self.index.tolist(),
            "concept_id": self.concept_id,
            "stability": self.stability,
            "parent": self.parent,
            "children": list(self.children),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Concept:
        return cls(
            rank=int(data["rank"]),
            relevance=float(data["relevance"]),
            share=float(data["share"]),
            representative=Neuron(**data["representative"]),
            neurons=[Neuron(**n) for n in data["neurons"]],
            layer_histogram={k: int(v) for k, v in data["layer_histogram"].items()},
            index=np.asarray(data["index"], dtype=np.int64),
            representative_index=int(data.get("representative_index", -1)),
            concept_id=None if data.get("concept_id") is None else int(data["concept_id"]),
            stability=None if data.get("stability") is None else float(data["stability"]),
            parent=None if data.get("parent") is None else int(data["parent"]),
            children=[int(c) for c in data.get("children", [])],
        )


@dataclass
class ConceptSet:
    """Concepts of one explanation, with the evidence of how they were found.

    Attributes
    ----------
    concepts : list[Concept]
        Ordered by decreasing total relevance.
    inactive : list[Neuron]
        Neurons with zero relevance and an all-zero map (kept out of the clustering).
    k : int
        Number of concepts.
    silhouette_by_k : dict[int, float]
        Mean silhouette of each k scored.
    linkage : np.ndarray
        Dendrogram of the active neurons (rows of ``active_index``).
    active_index : np.ndarray
        Rows of the clustered :class:`NeuronMaps` that were active.
    distance : DistanceConfig
    method : str
        Linkage.
    k_range : tuple[int, int]
    timings : dict[str, float]
        Seconds per stage (distance, linkage+k search).
    dictionary : dict or None
        With a concept dictionary (``method == "dictionary"``): which one, the listing rule,
        how many concepts were listed and their share (:mod:`conceptree.dictionary.concepts`).
    k_rule : str
        How k was chosen (:data:`~conceptree.concepts.clustering.K_RULES`).
    stability : dict or None
        How the concepts' stability was estimated (``config``) and the relevance-weighted mean
        stability of every k scored (``by_k``); None when not computed (the draws' wall time is
        ``timings["stability_s"]``).
    top_level : list[Concept]
        The concise top level (:mod:`conceptree.concepts.hierarchy`), ranked; each lists its
        sub-concepts (``children``), and ``concepts`` each name their ``parent``. Empty without
        a hierarchy.
    hierarchy : dict or None
        How the top level was made: route, frontier rule, model-level node ids, timings.
    """

    concepts: list[Concept]
    inactive: list[Neuron]
    k: int
    silhouette_by_k: dict[int, float]
    linkage: np.ndarray
    active_index: np.ndarray
    distance: DistanceConfig
    method: str
    k_range: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    dictionary: dict | None = None
    k_rule: str = DEFAULT_K_RULE
    stability: dict | None = None
    top_level: list[Concept] = field(default_factory=list)
    hierarchy: dict | None = None

    def labels(self, n: int) -> np.ndarray:
        """Concept rank (1..k) of each of the ``n`` neurons, 0 for inactive ones."""
        out = np.zeros(n, dtype=np.int64)
        for concept in self.concepts:
            out[concept.index] = concept.rank
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "k": self.k,
            "method": self.method,
            "k_range": list(self.k_range),
            "distance": self.distance.to_dict(),
            "silhouette_by_k": {str(k): v for k, v in self.silhouette_by_k.items()},
            "concepts": [c.to_dict() for c in self.concepts],
            "inactive": [asdict(n) for n in self.inactive],
            "timings": self.timings,
            "dictionary": self.dictionary,
            "k_rule": self.k_rule,
            "stability": self.stability,
            "top_level": [c.to_dict() for c in self.top_level],
            "hierarchy": self.hierarchy,
        }

    @classmethod
    def from_dict(cls, data: dict, linkage: np.ndarray, active_index: np.ndarray) -> ConceptSet:
        dist = dict(data["distance"])
        if dist.get("map_size") is not None:
            dist["map_size"] = tuple(dist["map_size"])
        return cls(
            concepts=[Concept.from_dict(c) for c in data["concepts"]],
            inactive=[Neuron(**n) for n in data["inactive"]],
            k=int(data["k"]),
            silhouette_by_k={int(k): float(v) for k, v in data["silhouette_by_k"].items()},
            linkage=linkage,
            active_index=active_index,
            distance=DistanceConfig(**dist),
            method=data["method"],
            k_range=tuple(data["k_range"]),
            timings=data.get("timings", {}),
            dictionary=data.get("dictionary"),
            k_rule=data.get("k_rule", DEFAULT_K_RULE),
            stability=data.get("stability"),
            top_level=[Concept.from_dict(c) for c in data.get("top_level", [])],
            hierarchy=data.get("hierarchy"),
        )


def canonical_order(neurons: NeuronMaps) -> np.ndarray:
    """Row order by (layer position in the model, channel): independent of processing order."""
    return np.lexsort((neurons.channel, neurons.layer_index))


def find_concepts(
    neurons: NeuronMaps,
    distance: DistanceConfig | None = None,
    method: str = DEFAULT_METHOD,
    k_range: tuple[int, int] = DEFAULT_K_RANGE,
    k: int | None = None,
    *,
    stability: StabilityConfig | None = None,
    k_rule: str = DEFAULT_K_RULE,
) -> ConceptSet:
    """Cluster the neurons of one explanation into concepts.

    Parameters
    ----------
    neurons : NeuronMaps
        Relevances and conditional maps (from :meth:`CRPEngine.neuron_maps`).
    distance : DistanceConfig, optional
        λ, map preprocessing and term normalisation (defaults documented there).
    method : {"single", "complete", "average", "ward"}
        Linkage (default ``"ward"``, on the exact-Ward distance unless ``distance.exact_ward``
        is set to False).
    k_range : (int, int)
        Inclusive range of k searched by silhouette (default :data:`~conceptree.concepts.clustering.DEFAULT_K_RANGE`).
    k : int, optional
        A fixed number of concepts instead of the search.
    stability : StabilityConfig, optional
        Score each concept's stability (:mod:`conceptree.concepts.stability`; None: not scored).
    k_rule : {"silhouette", "stability"}
        How k is chosen in ``k_range`` (:data:`~conceptree.concepts.clustering.K_RULES`).

    Returns
    -------
    ConceptSet
    """
    distance = distance or DistanceConfig()
    check_linkage(method)
    if distance.exact_ward is None:
        distance = replace(distance, exact_ward=method == "ward")
    order = canonical_order(neurons)
    flat = neurons.maps.reshape(len(neurons), -1)
    inactive_mask = (neurons.relevance == 0) & ~np.any(flat != 0, axis=1)
    active = order[~inactive_mask[order]]
    inactive = order[inactive_mask[order]]
    t0 = time.perf_counter()
    dist = NeuronDistance(neurons.maps[active], neurons.relevance[active], distance)
    t1 = time.perf_counter()
    result = cluster(dist, method, k_range, k, stability=stability, weights=neurons.relevance[active], k_rule=k_rule)
    t2 = time.perf_counter()
    del dist
    concepts = _build_concepts(neurons, active, result.labels, result.k, order, result.concept_stability)
    summary = None
    if result.stability is not None:
        summary = {"config": result.stability.config.to_dict(), "by_k": {str(kk): v for kk, v in result.stability_by_k.items()}}
    elif stability is not None and stability.resamples > 0 and len(active) > KEEP_CONDENSED_MAX:
        summary = {"config": stability.to_dict(), "by_k": {},
                   "skipped": f"{len(active)} neurons are more than the {KEEP_CONDENSED_MAX} whose distance is kept "
                              "for the draws (memory); cluster fewer (max_neurons) to score stability"}
    return ConceptSet(
        concepts=concepts,
        inactive=[_neuron(neurons, int(i)) for i in inactive],
        k=result.k,
        silhouette_by_k=result.silhouette_by_k,
        linkage=result.linkage,
        active_index=active.astype(np.int64),
        distance=distance,
        method=method,
        k_range=tuple(k_range),
        timings={"distance_s": t1 - t0, "linkage_and_k_s": t2 - t1,
                 "stability_s": result.stability.seconds if result.stability is not None else 0.0},
        k_rule=k_rule,
        stability=summary,
    )


def _neuron(neurons: NeuronMaps, i: int) -> Neuron:
    return Neuron(neurons.layers[int(neurons.layer_index[i])], int(neurons.channel[i]), float(neurons.relevance[i]))


def _build_concepts(neurons: NeuronMaps, active: np.ndarray, labels: np.ndarray, k: int, order: np.ndarray,
                    stability: np.ndarray | None = None) -> list[Concept]:
    """Concepts from cluster labels of the active rows (and each label's stability), ranked by decreasing relevance."""
    total = float(np.sum(neurons.relevance))
    concepts = []
    for label in range(k):
        members = active[labels == label]
        rel = neurons.relevance[members]
        by_relevance = members[np.lexsort((np.arange(len(members)), -rel))]  # stable: neuron order
        rep = int(by_relevance[0])
        layer_names = [neurons.layers[neurons.layer_index[i]] for i in by_relevance]
        concepts.append(
            Concept(
                rank=0,
                relevance=float(rel.sum()),
                share=float(rel.sum() / total) if total != 0 else 0.0,
                representative=_neuron(neurons, rep),
                neurons=[_neuron(neurons, int(i)) for i in by_relevance],
                layer_histogram=dict(Counter(layer_names)),
                index=by_relevance.astype(np.int64),
                representative_index=rep,
                stability=None if stability is None or not np.isfinite(stability[label]) else float(stability[label]),
            )
        )
    position = {int(row): i for i, row in enumerate(order)}
    concepts.sort(key=lambda c: (-c.relevance, position[c.representative_index]))
    for rank, concept in enumerate(concepts, start=1):
        concept.rank = rank
    return concepts


def cut_concepts(concepts: ConceptSet, neurons: NeuronMaps, k: int) -> list[Concept]:
    """The concepts of the same dendrogram cut at exactly ``k`` clusters (no re-clustering).

    Parameters
    ----------
    concepts : ConceptSet
        A result of :func:`find_concepts` on ``neurons``.
    neurons : NeuronMaps
        The neurons that were clustered.
    k : int
        Number of concepts, ``1 <= k <=`` number of active neurons.

    Returns
    -------
    list[Concept]
        ``k`` concepts ranked by decreasing relevance.
    """
    n_active = len(concepts.active_index)
    if not 1 <= k <= n_active:
        raise InputError(f"cannot cut {n_active} active neurons into {k} concepts; use 1 <= k <= {n_active}")
    labels = cut_labels(concepts.linkage, [k])[k]
    return _build_concepts(neurons, concepts.active_index, labels, k, canonical_order(neurons))
