"""Deprecated alias of :mod:`conceptree.comparison` (renamed so that ``conceptree.compare`` is the function;
kept for one release, see the README's API changes). The module itself stays callable as
:func:`conceptree.compare`, so importing it does not break ``conceptree.compare(...)``."""

import sys
import types
import warnings

from .comparison import *  # noqa: F403
from .comparison import MISSING_FRACTION, NEW_OVERLAP, OUTPUT_FILES, Comparison, lost_parts, trace_concepts  # noqa: F401
from .explain import compare


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
warnings.warn("conceptree.compare (the module) moved to conceptree.comparison; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
