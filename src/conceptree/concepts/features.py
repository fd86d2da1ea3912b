"""Which neurons are clustered, with which maps, and the map each concept shows.

The steps between the engine's single LRP pass and the clustering, shared by the explainer,
the evaluation and ``compare``: the strongest neurons by ``|r_p|``, their features (own-layer
or input-level maps, :mod:`conceptree.concepts.options`), the concepts' maps, and the
thumbnails of each concept's most relevant members.
"""

from __future__ import annotations

import numpy as np

from ..attribution import CRPEngine
from ..attribution.engine import DEFAULT_BATCH_SIZE
from ..attribution.results import NeuronMaps
from ..errors import InputError
from .concepts import Concept, ConceptSet
from .distance import DEFAULT_MAP_SIZE
from .hierarchy import CONSENSUS_GRID, jittered_inputs
from .layer_maps import layer_group_maps, layer_neuron_maps
from .options import CONCEPT_MAPS, FEATURES, PRESETS, ConceptOptions


def strongest_neurons(engine: CRPEngine, attribution, n: int | None, coverage: float | None = None
                      ) -> dict[str, list[int]]:
    """The neurons with the largest ``|r_p|`` over the engine's layers (ties: model order).

    At most ``n`` (None: no limit), and with ``coverage``, the fewest that reach this fraction
    of ``sum |r_p|`` over every neuron. Returns a ``layer -> channels`` mapping for
    :meth:`CRPEngine.neuron_maps`.
    """
    if n is not None and n < 1:
        raise InputError(f"max_neurons must be >= 1, got {n}")
    if coverage is not None and not 0.0 < coverage <= 1.0:
        raise InputError(f"coverage must be in (0, 1], got {coverage}")
    names = [layer.name for layer in engine.layers]
    per_layer = [attribution.channel_relevance(name).abs().double().cpu().numpy() for name in names]
    magnitude = np.concatenate(per_layer)
    layer_of = np.concatenate([np.full(len(r), i) for i, r in enumerate(per_layer)])
    channel_of = np.concatenate([np.arange(len(r)) for r in per_layer])
    chosen = np.lexsort((np.arange(magnitude.size), -magnitude))
    if coverage is not None and coverage < 1.0 and magnitude.sum() > 0:
        covered = np.cumsum(magnitude[chosen]) / magnitude.sum()
        chosen = chosen[: int(np.searchsorted(covered, coverage)) + 1]
    chosen = chosen[:n]
    wanted: dict[str, list[int]] = {}
    for i in sorted(chosen):
        wanted.setdefault(names[layer_of[i]], []).append(int(channel_of[i]))
    return wanted


def neuron_features(
    engine: CRPEngine,
    attribution,
    features: str = PRESETS["default"].features,
    max_neurons: int | None = PRESETS["default"].max_neurons,
    map_size: tuple[int, int] | None = DEFAULT_MAP_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    *,
    coverage: float | None = None,
    pool_below_map_size: bool = False,
) -> NeuronMaps:
    """The neurons to cluster and their maps: own-layer (``"layer"``) or input-level (``"input"``).

    Returns :class:`NeuronMaps` with ``maps`` ``(n, *map_size)``; ``max_neurons`` and
    ``coverage`` keep the neurons with the largest ``|r_p|`` (:func:`strongest_neurons`);
    ``pool_below_map_size`` approximates input-level maps (:class:`ConceptOptions`).
    """
    channels = None
    if max_neurons is not None or (coverage is not None and coverage < 1.0):
        channels = strongest_neurons(engine, attribution, max_neurons, coverage)
    if features == "layer":
        return layer_neuron_maps(attribution, [layer.name for layer in engine.layers], channels, map_size or DEFAULT_MAP_SIZE)
    if features == "input":
        return engine.neuron_maps(attribution, batch_size, channels, map_size=map_size, progress=progress,
                                  pool_below_map_size=pool_below_map_size)
    raise InputError(f"unknown features {features!r}; use one of {', '.join(FEATURES)}")


def features_for(engine: CRPEngine, attribution, options: ConceptOptions, batch_size: int = DEFAULT_BATCH_SIZE,
                 progress: bool = False) -> NeuronMaps:
    """:func:`neuron_features` with everything :class:`ConceptOptions` says about them."""
    return neuron_features(engine, attribution, options.features, options.max_neurons, options.distance.map_size,
                           batch_size, progress, coverage=options.coverage,
                           pool_below_map_size=options.pool_below_map_size)


def concept_maps(
    engine: CRPEngine,
    attribution,
    concepts: list[Concept],
    kind: str = PRESETS["default"].concept_map,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Each concept's map at input resolution, ``(k, H, W)`` float32.

    ``kind``: ``"layer-group"`` (members' own-layer maps summed in input geometry),
    ``"group"`` (the group's input-level conditional map) or ``"representative"`` (the most
    relevant member's conditional map); see :mod:`conceptree.concepts.options`.
    """
    size = tuple(attribution.forward.input.shape[-2:])
    if not concepts:
        return np.zeros((0, *size), np.float32)
    if kind == "layer-group":
        return layer_group_maps(attribution, [c.groups() for c in concepts], size)
    if kind == "group":
        return engine.group_maps(attribution, [c.groups() for c in concepts], batch_size).cpu().numpy().astype(np.float32)
    if kind == "representative":
        return representative_maps(engine, attribution, concepts, batch_size)
    raise InputError(f"unknown concept map {kind!r}; use one of {', '.join(CONCEPT_MAPS)}")


def representative_maps(engine: CRPEngine, attribution, concepts: ConceptSet | list[Concept],
                        batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Full-resolution conditional maps of the concepts' representatives, ``(k, H, W)``."""
    concepts = concepts.concepts if isinstance(concepts, ConceptSet) else concepts
    if not concepts:
        return np.zeros((0, *attribution.forward.input.shape[-2:]), np.float32)
    wanted: dict[str, list[int]] = {}
    for concept in concepts:
        chans = wanted.setdefault(concept.representative.layer, [])
        if concept.representative.channel not in chans:
            chans.append(concept.representative.channel)
    full = engine.neuron_maps(attribution, batch_size, channels=wanted)
    lookup = {name: i for i, name in enumerate(full.names())}
    return np.stack([full.maps[lookup[f"{c.representative.layer}:{c.representative.channel}"]] for c in concepts])


def member_maps(neurons: NeuronMaps, concepts: list[Concept], m: int = 4) -> np.ndarray:
    """The clustered maps of each concept's ``m`` most relevant members, ``(k, m, h, w)`` float16.

    ``neurons`` is the :class:`NeuronMaps` that was clustered (``Concept.index`` refers to its
    rows); members are ordered by decreasing ``r_p`` like the representative; rows past a
    concept's size are zero.
    """
    h, w = neurons.maps.shape[-2:]
    out = np.zeros((len(concepts), m, h, w), np.float16)
    for i, concept in enumerate(concepts):
        rows = np.asarray(concept.index, dtype=np.int64)
        top = rows[np.argsort(-neurons.relevance[rows], kind="stable")[:m]]
        out[i, : len(top)] = neurons.maps[top].astype(np.float16)
    return out


def consensus_copies(engine: CRPEngine, x, target: int, neurons: NeuronMaps, mean, std,
                     grid: tuple[int, int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The consensus route's jittered copies of the input ``x`` ``(1, C, H, W)`` (one batched LRP
    pass, :data:`~conceptree.concepts.hierarchy.JITTERS`): for each copy, the own-layer maps
    ``(n, *grid)`` and ``r_p`` ``(n,)`` of the same neurons as ``neurons``, row for row."""
    grid = grid or CONSENSUS_GRID
    batch = jittered_inputs(x, mean, std)
    result = engine.attribute_batch(batch, [target] * len(batch), keep_maps=True)
    wanted: dict[str, list[int]] = {}
    for li, c in zip(neurons.layer_index.tolist(), neurons.channel.tolist()):
        wanted.setdefault(neurons.layers[li], []).append(int(c))
    copies = []
    for i in range(len(batch)):
        view = _LayerRelevance(result.image(i))
        maps = layer_neuron_maps(view, neurons.layers, wanted, grid)
        copies.append((maps.maps, maps.relevance))
    return copies


class _LayerRelevance:
    """The part of an :class:`Attribution` that :func:`layer_neuron_maps` reads."""

    def __init__(self, layer_relevance: dict) -> None:
        self.layer_relevance = layer_relevance
