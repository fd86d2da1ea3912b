"""What is clustered and which map a concept shows: the choices and their defaults, in one place.

``features`` (what each neuron contributes to the distance)
    ``"layer"``: its own-layer relevance map ``R_p(h, w)`` from the single LRP pass, in input
    geometry (:mod:`conceptree.concepts.layer_maps`); no conditional propagation.
    ``"input"``: its input-level conditional CRP map ``y_p`` (the paper; one backward pass
    per neuron).
``concept_map`` (the map shown, saved and scored for a concept)
    ``"layer-group"``: the sum of the members' own-layer maps in input geometry.
    ``"group"``: the input-level conditional map of the whole group (sum of the members'
    ``y_p``, :meth:`CRPEngine.group_maps`).
    ``"representative"``: ``y_p`` of the most relevant member (the paper's eq. 6).

The default (own-layer features, layer-group maps, the 4,000 neurons with the largest
``|r_p|``) was chosen on the 67 dev photos by the rule written before the sweep in
``docs/results/concept_ablation.md``; ``PRESETS["paper"]`` keeps the paper's method exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from ..errors import InputError
from .clustering import DEFAULT_K_RANGE, DEFAULT_K_RULE, K_RULES
from .distance import DistanceConfig, check_linkage
from .linkage import DEFAULT_METHOD
from .stability import StabilityConfig

FEATURES: tuple[str, ...] = ("layer", "input")
#: How the concepts are arranged (:mod:`conceptree.concepts.hierarchy`,
#: :mod:`conceptree.dictionary.hierarchy`): ``"none"`` a flat list (the silhouette cut, or a
#: dictionary's concise list), ``"own"`` / ``"consensus"`` a top level over the photo's own
#: clustering, ``"tree"`` / ``"tree+own"`` a top level of the model-level tree of a dictionary.
HIERARCHIES: tuple[str, ...] = ("none", "own", "consensus", "tree", "tree+own")
#: The route used when ``ConceptOptions.hierarchy`` is None, per situation: chosen on the 67 dev
#: photos by the rule written before the run (docs/results/concise.md). No route met all four
#: conditions; ``own`` meets three (all but the top level's stability under nuisance changes) in
#: both situations: the model-level trees keep their top level but lose the part lift.
DEFAULT_HIERARCHY: Mapping[str, str] = MappingProxyType({"without_index": "own", "with_index": "own"})
#: Compute type of the LRP pass whose relevances feed the clustering (rounded to float32 after).
PRECISIONS: tuple[str, ...] = ("float64", "float32")
CONCEPT_MAPS: tuple[str, ...] = ("layer-group", "group", "representative")


@dataclass(frozen=True)
class ConceptOptions:
    """How concepts are found and shown.

    Parameters
    ----------
    features : {"layer", "input"}
        What is clustered (module docstring).
    concept_map : {"layer-group", "group", "representative"}
        Each concept's map (module docstring).
    max_neurons : int or None
        Cluster the neurons with the largest ``|r_p|`` only (None: every neuron).
    coverage : float or None
        Also stop adding neurons, in decreasing ``|r_p|``, once they cover this fraction of
        ``sum |r_p|`` over every neuron (None: no such cut). The rest are not clustered; the
        explanation records how many neurons were.
    pool_below_map_size : bool
        With ``features="input"``: stop each conditional map at the feature maps finer than
        the distance's ``map_size`` and pool there (:meth:`CRPEngine.iter_conditional_maps`),
        instead of propagating through the high-resolution layers. Approximate shapes, exact
        sums; the concepts' maps stay exact.
    distance : DistanceConfig
        λ and the terms' normalisation.
    method : str
        Linkage.
    k_range : (int, int)
        k searched in this range.
    k_rule : {"silhouette", "stability"}
        How k is chosen in the range (:data:`~conceptree.concepts.clustering.K_RULES`).
    stability : StabilityConfig
        Hennig's subsampling stability of every concept (``resamples=0``: none);
        :mod:`conceptree.concepts.stability`.
    precision : {"float64", "float32"}
        Compute type of the explainer's LRP pass. ``"float64"`` (default) gives the same
        features, hence the same concepts, on any CPU thread count (float32's sums differ in
        the last bits between thread counts and LRP's z+ divisions amplify that to 1e-4 of a
        neuron's relevance, enough to move a cut); ``"float32"`` is faster (docs/results/stability.md).
    graph : bool
        Also compute the concept graph: which concepts each concept is made of
        (:mod:`conceptree.concepts.flows`; one batched propagation of the concepts; with a
        hierarchy, of the top-level concepts).
    hierarchy : str or None
        :data:`HIERARCHIES`; None: :data:`DEFAULT_HIERARCHY` of the situation (with a concept
        dictionary or without). ``"tree"`` and ``"tree+own"`` need a dictionary.
    """

    features: str = "layer"
    concept_map: str = "layer-group"
    max_neurons: int | None = 4000
    coverage: float | None = None
    pool_below_map_size: bool = False
    distance: DistanceConfig = field(default_factory=DistanceConfig)
    method: str = DEFAULT_METHOD
    k_range: tuple[int, int] = DEFAULT_K_RANGE
    k_rule: str = DEFAULT_K_RULE
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    precision: str = "float64"
    graph: bool = True
    hierarchy: str | None = None

    def __post_init__(self) -> None:
        if self.hierarchy is not None and self.hierarchy not in HIERARCHIES:
            raise InputError(f"unknown hierarchy {self.hierarchy!r}; use one of {', '.join(HIERARCHIES)}")
        if self.k_rule not in K_RULES:
            raise InputError(f"unknown k rule {self.k_rule!r}; use one of {', '.join(K_RULES)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.k_rule == "stability" and self.stability.resamples == 0:
            raise InputError("k_rule='stability' needs stability resamples >= 1")
        if self.features not in FEATURES:
            raise InputError(f"unknown features {self.features!r}; use one of {', '.join(FEATURES)}")
        if self.concept_map not in CONCEPT_MAPS:
            raise InputError(f"unknown concept map {self.concept_map!r}; use one of {', '.join(CONCEPT_MAPS)}")
        check_linkage(self.method)
        if self.max_neurons is not None and self.max_neurons < 1:
            raise InputError(f"max_neurons must be >= 1 or None, got {self.max_neurons}")
        if self.coverage is not None and not 0.0 < self.coverage <= 1.0:
            raise InputError(f"coverage must be in (0, 1] or None, got {self.coverage}")

    def replace(self, **changes) -> ConceptOptions:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {
            "features": self.features, "concept_map": self.concept_map, "max_neurons": self.max_neurons,
            "coverage": self.coverage, "pool_below_map_size": self.pool_below_map_size,
            "distance": self.distance.to_dict(), "method": self.method, "k_range": list(self.k_range),
            "k_rule": self.k_rule, "stability": self.stability.to_dict(), "precision": self.precision,
            "graph": self.graph, "hierarchy": self.hierarchy,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ConceptOptions:
        """Inverse of :meth:`to_dict` (options saved before stability and the graph existed read
        as made: float32, no stability draws, no graph)."""
        distance = dict(data.get("distance", {}))
        if distance.get("map_size") is not None:
            distance["map_size"] = tuple(distance["map_size"])
        return cls(features=data["features"], concept_map=data["concept_map"], max_neurons=data["max_neurons"],
                   coverage=data.get("coverage"), pool_below_map_size=bool(data.get("pool_below_map_size", False)),
                   distance=DistanceConfig(**distance), method=data["method"], k_range=tuple(data["k_range"]),
                   k_rule=data.get("k_rule", DEFAULT_K_RULE),
                   stability=StabilityConfig(**data.get("stability", {"resamples": 0})),
                   precision=data.get("precision", "float32"), graph=bool(data.get("graph", False)),
                   hierarchy=data.get("hierarchy", "none"))

    def resolved_hierarchy(self, with_dictionary: bool) -> str:
        """The hierarchy route these options give with or without a concept dictionary."""
        if self.hierarchy is not None:
            return self.hierarchy
        return DEFAULT_HIERARCHY["with_index" if with_dictionary else "without_index"]


#: Named option sets: ``default`` (this library's choice) and ``paper`` (input-level maps of
#: every conv neuron, representative maps, the paper's distance). The paper's route with
#: ``coverage`` and ``pool_below_map_size`` was measured as a third preset and removed by the
#: rule written before its dev run (``docs/speed.md``); both stay options.
PRESETS: Mapping[str, ConceptOptions] = MappingProxyType({  # read-only: derive with ConceptOptions.replace
    "default": ConceptOptions(),
    "paper": ConceptOptions(features="input", concept_map="representative", max_neurons=None, hierarchy="none"),
})


#: neurons of the paper's route in the evaluation (input-level maps cost one backward pass each).
PAPER_POOL = 2000


def preset(name: str) -> ConceptOptions:
    """The named :class:`ConceptOptions` (one-line error for an unknown name)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_k_range(text: str, flag: str = "--k-range") -> tuple[int, int]:
    """``"MIN:MAX"`` -> ``(MIN, MAX)`` (one-line error naming ``flag`` otherwise)."""
    low, _, high = text.partition(":")
    try:
        return int(low), int(high)
    except ValueError:
        raise InputError(f"{flag} {text!r} must be MIN:MAX, e.g. 15:30") from None


#: keys of :func:`parse_variant` (a name used on the command line -> ConceptOptions field).
VARIANT_KEYS: tuple[str, ...] = ("features", "concept_map", "max_neurons", "coverage", "pool_below_map_size", "lam",
                                 "linkage", "k_range", "map_norm", "term_norm")


def parse_variant(text: str, base: ConceptOptions) -> tuple[str, ConceptOptions]:
    """A named variant of ``base`` from ``"NAME:key=value,..."`` (``conceptree evaluate --variant``).

    Keys are :data:`VARIANT_KEYS`: ``max_neurons`` takes ``all``, ``coverage`` ``none`` or ``1``
    for no cut, ``pool_below_map_size`` ``true`` / ``false``, ``linkage`` sets ``method``,
    ``lam``, ``map_norm`` and ``term_norm`` set the distance. One-line :class:`InputError` on misuse.

    Returns
    -------
    (name, ConceptOptions)
    """
    name, _, body = text.partition(":")
    if not name or not body:
        raise InputError(f"--variant {text!r}: expected NAME:key=value,... (e.g. 'ours-rep:concept_map=representative')")
    options: dict = {}
    distance: dict = {}
    for item in body.split(","):
        key, _, value = item.partition("=")
        try:
            if key in ("features", "concept_map"):
                options[key] = value
            elif key in ("map_norm", "term_norm"):
                distance[key] = value
            elif key == "max_neurons":
                options[key] = None if value == "all" else int(value)
            elif key == "coverage":
                options[key] = None if value in ("none", "1") else float(value)
            elif key == "pool_below_map_size":
                if value not in ("true", "false"):
                    raise ValueError(value)
                options[key] = value == "true"
            elif key == "lam":
                distance[key] = float(value)
            elif key == "linkage":
                options["method"] = value
            elif key == "k_range":
                options[key] = parse_k_range(value)
            else:
                raise InputError(f"--variant {text!r}: unknown key {key!r}; use {', '.join(VARIANT_KEYS[:-1])} "
                                 f"or {VARIANT_KEYS[-1]}")
        except ValueError as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"--variant {text!r}: bad value {value!r} for {key}") from None
    result = base.replace(**options)
    if distance:
        result = result.replace(distance=replace(result.distance, **distance))
    return name, result
