"""Concepts: weighted distance, hierarchical clustering, silhouette-chosen k, neuron tracing."""

from .clustering import ClusterResult, cluster, cut_labels, linkage_matrix, nested_silhouettes
from .concepts import Concept, ConceptSet, Neuron, find_concepts
from .distance import DistanceConfig, NeuronDistance, neuron_distance
from .stability import StabilityConfig, cut_stability, stability_label

__all__ = [
    "ClusterResult",
    "Concept",
    "ConceptSet",
    "DistanceConfig",
    "Neuron",
    "NeuronDistance",
    "StabilityConfig",
    "cluster",
    "cut_labels",
    "cut_stability",
    "find_concepts",
    "linkage_matrix",
    "nested_silhouettes",
    "neuron_distance",
    "stability_label",
]
