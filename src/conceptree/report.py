"""Deprecated alias of :mod:`conceptree.render.report` (moved in 0.x; kept for one release, see the README's API changes)."""

import warnings

from .render.report import *  # noqa: F403

warnings.warn("conceptree.report moved to conceptree.render.report; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
