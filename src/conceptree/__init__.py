"""conceptree: explain a CNN's decision with a few neuron-traceable concepts."""

__version__ = "0.1.0"

from .attribution import Attribution, Composite, CRPEngine, NeuronMaps  # noqa: E402
from .concepts.options import PRESETS, ConceptOptions  # noqa: E402
from .errors import CheckpointError, ConceptreeError, InputError, UnsupportedModelError  # noqa: E402
from .explain import explain  # noqa: E402
from .explainer import ConceptExplainer  # noqa: E402
from .explanation import Explanation  # noqa: E402
from .models.loading import Preprocessing  # noqa: E402

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
