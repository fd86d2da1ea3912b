"""Deprecated alias of :mod:`conceptree.render.colours` (moved in this release; kept for one release, see the README's API changes)."""

import warnings

from .render.colours import *  # noqa: F403

warnings.warn("conceptree.colours moved to conceptree.render.colours; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
