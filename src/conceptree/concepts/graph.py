"""Deprecated alias of :mod:`conceptree.concepts.flows` (moved in 0.x; kept for one release, see the README's API changes)."""

import warnings

from .flows import *  # noqa: F403

warnings.warn("conceptree.concepts.graph moved to conceptree.concepts.flows; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
