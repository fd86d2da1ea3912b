"""conceptree: explain a CNN's decision with a few neuron-traceable concepts."""

from ._version import __version__
from .attribution import Attribution, Composite, CRPEngine, NeuronMaps
from .concepts.options import PRESETS, ConceptOptions
from .errors import CheckpointError, ConceptreeError, InputError, UnsupportedModelError
from .explain import explain
from .explainer import ConceptExplainer
from .explanation import Explanation
from .models.loading import Preprocessing

__all__ = [
    "Attribution",
    "CRPEngine",
    "CheckpointError",
    "Composite",
    "ConceptExplainer",
    "ConceptOptions",
    "ConceptreeError",
    "Explanation",
    "InputError",
    "NeuronMaps",
    "PRESETS",
    "Preprocessing",
    "UnsupportedModelError",
    "__version__",
    "explain",
]
