"""Deprecated alias of :mod:`conceptree.attribution.tracing` (moved in 0.x; kept for one release, see the README's API changes)."""

import warnings

from .tracing import *  # noqa: F403

warnings.warn("conceptree.attribution.graph moved to conceptree.attribution.tracing; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
