"""Concepts: weighted distance, hierarchical clustering, silhouette-chosen k, neuron tracing."""

from .clustering import ClusterResult, cluster, cut_labels, linkage_matrix, nested_silhouettes
from .concepts import Concept, ConceptSet, Neuron, find_concepts
from .distance import DistanceConfig, NeuronDistance, neuron_distance

__all__ = [
    "ClusterResult",
    "Concept",
    "ConceptSet",
    "DistanceConfig",
    "Neuron",
    "NeuronDistance",
    "cluster",
    "cut_labels",
    "find_concepts",
    "linkage_matrix",
    "nested_silhouettes",
    "neuron_distance",
]
