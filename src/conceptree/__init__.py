"""conceptree: explain a CNN's decision with a few neuron-traceable concepts.

The top level holds what a user needs: one call per job (:func:`explain`, :func:`compare`,
:func:`explain_many`, :func:`build_index`, :func:`build_dictionary`, :func:`load_model`), the
explainer and its result (:class:`ConceptExplainer`, :class:`Explanation`), their settings
(:class:`ConceptOptions`, :class:`Composite`) and the errors. Engine types stay in
:mod:`conceptree.attribution`. The many-image entry points load on first use.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from ._version import __version__
from .attribution.composites import Composite
from .concepts.options import ConceptOptions
from .errors import CheckpointError, ConceptreeError, InputError, ModelError, UnsupportedModelError
from .explain import compare, explain
from .explainer import ConceptExplainer
from .explanation import Explanation
from .models.loading import load_model

#: the many-image entry points: loaded on first use (``conceptree.build_index`` imports the index package).
_LAZY = {
    "build_index": "conceptree.index.build",
    "build_dictionary": "conceptree.dictionary.build",
    "explain_many": "conceptree.runs.explain_many",
}
#: names the top level had in the previous release (old name -> (module, name)); kept for one release.
_DEPRECATED = {
    "Attribution": ("conceptree.attribution", "Attribution"),
    "CRPEngine": ("conceptree.attribution", "CRPEngine"),
    "NeuronMaps": ("conceptree.attribution", "NeuronMaps"),
    "PRESETS": ("conceptree.concepts.options", "PRESETS"),
    "Preprocessing": ("conceptree.models.loading", "Preprocessing"),
}

__all__ = [
    "CheckpointError",
    "Composite",
    "ConceptExplainer",
    "ConceptOptions",
    "ConceptreeError",
    "Explanation",
    "InputError",
    "ModelError",
    "UnsupportedModelError",
    "__version__",
    "build_dictionary",
    "build_index",
    "compare",
    "explain",
    "explain_many",
    "load_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _DEPRECATED:
        module, attr = _DEPRECATED[name]
        warnings.warn(f"conceptree.{name} moved to {module}.{attr}; the top-level name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'conceptree' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__))
