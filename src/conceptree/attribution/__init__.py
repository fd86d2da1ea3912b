"""LRP / CRP attribution: rules, canonization and the batched conditional-map engine.

The names below load on first use (module ``__getattr__``), so that reading a composite
(:mod:`conceptree.attribution.composites`, plain data) does not import the engine.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_EXPORTS = {
    "Attribution": "results",
    "BatchAttribution": "results",
    "CRPEngine": "engine",
    "ForwardPass": "engine",
    "MapBatch": "results",
    "NeuronMaps": "results",
    "AbsorbedFlows": "results",
    "Composite": "composites",
    "LayerInfo": "tracing",
    "canonize": "tracing",
}

__all__ = ["AbsorbedFlows", "Attribution", "BatchAttribution", "CRPEngine", "Composite", "ForwardPass", "LayerInfo", "MapBatch", "NeuronMaps", "canonize"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
