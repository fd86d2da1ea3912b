"""conceptree: explain a CNN's decision with a few neuron-traceable concepts."""

from .attribution import Attribution, Composite, CRPEngine, NeuronMaps
from .errors import CheckpointError, ConceptreeError, InputError, UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "CRPEngine",
    "CheckpointError",
    "Composite",
    "ConceptreeError",
    "InputError",
    "NeuronMaps",
    "UnsupportedModelError",
    "__version__",
]
