"""The reference index: every neuron's relevance over a reference set, and what it tells of a
concept (its strongest reference images, cropped to its region, and suggested names)."""

from .build import IndexBuilder, ReferenceItem, build_index, reference_set
from .store import ConceptIndex, IndexImage

__all__ = ["ConceptIndex", "IndexBuilder", "IndexImage", "ReferenceItem", "build_index", "reference_set"]
