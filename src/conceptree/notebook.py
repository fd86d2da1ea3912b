"""Deprecated alias of :mod:`conceptree.render.notebook` (moved in 0.x; kept for one release, see the README's API changes)."""

import warnings

from .render.notebook import *  # noqa: F403

warnings.warn("conceptree.notebook moved to conceptree.render.notebook; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
