"""Where an explanation's concepts come from: one protocol, one class per source.

:meth:`ConceptExplainer.explain` makes the LRP pass, asks its :class:`ConceptSource` for the
concepts of that pass, and then draws maps, flows and references the same way for every
source. A new route (a learned dictionary, a transformer's token groups) is one class with a
``concepts`` method and one line in :func:`concept_source`.

* :class:`ImageClustering`: the image's own neurons clustered (``hierarchy="none"``: the flat
  silhouette cut; ``"own"``: the photo's tree with its top level; ``"consensus"``: the tree of
  jittered copies' co-association).
* :class:`DictionaryList`: a concept dictionary's concise flat list, no clustering.
* :class:`ModelTreeSource`: the dictionary's model-level tree (``"tree"``), or its top level over the
  photo's own clustered neurons (``"tree+own"``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from .attribution import Attribution, CRPEngine, NeuronMaps
from .concepts import ConceptSet, find_concepts
from .concepts.features import consensus_copies, features_for
from .concepts.hierarchy import hierarchical_concepts
from .concepts.options import ConceptOptions
from .dictionary import ConceptDictionary, dictionary_concepts
from .dictionary.hierarchy import TREE_ROUTES, ModelTree, tree_concepts, tree_own_concepts
from .errors import InputError
from .models.base import Preprocessing


@dataclass
class SourcedConcepts:
    """A source's answer for one image.

    Attributes
    ----------
    concepts : ConceptSet
        The concepts (with their top level where the source builds one).
    neurons : NeuronMaps
        The neurons the concepts are made of, with their maps ``(n, h, w)``.
    neuron_maps_s, clustering_s : float
        Seconds spent on the neurons' maps and on forming the concepts.
    """

    concepts: ConceptSet
    neurons: NeuronMaps
    neuron_maps_s: float
    clustering_s: float


@runtime_checkable
class ConceptSource(Protocol):
    """What the explainer asks for: the concepts of one LRP pass."""

    @property
    def route(self) -> str:
        """The route's name (:data:`~conceptree.concepts.options.HIERARCHIES`), saved in each explanation."""
        ...

    def concepts(self, engine: CRPEngine, attribution: Attribution, x: Tensor, *, k: int | None = None,
                 neurons: NeuronMaps | None = None) -> SourcedConcepts:
        """The concepts of ``attribution`` (the pass of input ``x`` ``(1, C, H, W)``); ``k`` fixes their
        number where the source has one; ``neurons`` are precomputed features, where the source takes them."""
        ...


def _own_neurons(engine: CRPEngine, attribution: Attribution, options: ConceptOptions, batch_size: int,
                 progress: bool, neurons: NeuronMaps | None) -> NeuronMaps:
    if neurons is None:
        return features_for(engine, attribution, options, batch_size, progress)
    if not set(neurons.layers) <= {layer.name for layer in engine.layers}:
        raise InputError("the precomputed neurons come from other layers than the engine's; recompute them")
    return neurons


@dataclass(frozen=True)
class ImageClustering:
    """The image's own neurons clustered: routes ``"none"``, ``"own"`` and ``"consensus"``."""

    options: ConceptOptions
    route: str
    preprocessing: Preprocessing
    batch_size: int
    progress: bool = False

    def concepts(self, engine, attribution, x, *, k=None, neurons=None) -> SourcedConcepts:
        t0 = time.perf_counter()
        neurons = _own_neurons(engine, attribution, self.options, self.batch_size, self.progress, neurons)
        t1 = time.perf_counter()
        options = self.options
        if self.route == "none":
            concepts = find_concepts(neurons, options.distance, options.method, options.k_range, k,
                                     stability=options.stability, k_rule=options.k_rule)
        else:
            copies = None
            if self.route == "consensus":
                copies = consensus_copies(engine, x, attribution.target, neurons, self.preprocessing.mean,
                                          self.preprocessing.std)
            concepts = hierarchical_concepts(neurons, options.distance, options.k_range, k, route=self.route,
                                             copies=copies)
        return SourcedConcepts(concepts, neurons, t1 - t0, time.perf_counter() - t1)


@dataclass(frozen=True)
class DictionaryList:
    """A concept dictionary's concise flat list (``hierarchy="none"`` with a dictionary): no clustering."""

    dictionary: ConceptDictionary
    options: ConceptOptions
    route: str = "none"

    def concepts(self, engine, attribution, x, *, k=None, neurons=None) -> SourcedConcepts:
        if neurons is not None:
            raise InputError("precomputed neurons are clustered per image; an explainer with a dictionary takes none")
        t0 = time.perf_counter()
        concepts, neurons = dictionary_concepts(self.dictionary, attribution, [layer.name for layer in engine.layers],
                                                k=k, map_size=self.options.distance.map_size)
        return SourcedConcepts(concepts, neurons, 0.0, time.perf_counter() - t0)


@dataclass(frozen=True)
class ModelTreeSource:
    """The dictionary's model-level tree: ``"tree"`` (its nodes only) or ``"tree+own"`` (its top level
    over the photo's own clustered neurons)."""

    model_tree: ModelTree
    options: ConceptOptions
    route: str
    batch_size: int
    progress: bool = False

    def concepts(self, engine, attribution, x, *, k=None, neurons=None) -> SourcedConcepts:
        layers = [layer.name for layer in engine.layers]
        t0 = time.perf_counter()
        if self.route == "tree":
            if neurons is not None:
                raise InputError("the 'tree' route reads the model-level tree; it takes no precomputed neurons")
            concepts, neurons = tree_concepts(self.model_tree, attribution, layers, k=k)
            return SourcedConcepts(concepts, neurons, 0.0, time.perf_counter() - t0)
        neurons = _own_neurons(engine, attribution, self.options, self.batch_size, self.progress, neurons)
        t1 = time.perf_counter()
        concepts = tree_own_concepts(self.model_tree, attribution, neurons, distance=self.options.distance,
                                     k_range=self.options.k_range, k=k)
        return SourcedConcepts(concepts, neurons, t1 - t0, time.perf_counter() - t1)


def concept_source(options: ConceptOptions, *, dictionary: ConceptDictionary | None, preprocessing: Preprocessing,
                   batch_size: int, progress: bool = False) -> ConceptSource:
    """The source of ``options``' route (resolved for the presence of a dictionary), checked.

    Raises
    ------
    InputError
        A model-level tree route without a dictionary, or the consensus route on other features
        than own-layer maps.
    """
    route = options.resolved_hierarchy(dictionary is not None)
    if route in TREE_ROUTES:
        if dictionary is None:
            raise InputError(f"hierarchy {route!r} is a model-level tree and needs a concept dictionary; "
                             "pass dictionary=... (`conceptree dictionary INDEX --out DICT`) or use 'own' or 'consensus'")
        return ModelTreeSource(ModelTree(dictionary), options, route, batch_size, progress)
    if route == "consensus" and options.features != "layer":
        raise InputError("the consensus hierarchy compares own-layer maps of jittered copies; use features='layer' "
                         "or another hierarchy")
    if route == "none" and dictionary is not None:
        return DictionaryList(dictionary, options)
    return ImageClustering(options, route, preprocessing, batch_size, progress)
