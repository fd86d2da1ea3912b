"""LRP / CRP attribution: rules, canonization and the batched conditional-map engine."""

from .composites import Composite
from .engine import Attribution, BatchAttribution, CRPEngine, ForwardPass, MapBatch, NeuronMaps
from .tracing import LayerInfo, canonize

__all__ = ["Attribution", "BatchAttribution", "CRPEngine", "Composite", "ForwardPass", "LayerInfo", "MapBatch", "NeuronMaps", "canonize"]
