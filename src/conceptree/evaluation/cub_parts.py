"""Deprecated alias of :mod:`conceptree.datasets.cub_parts` (moved in 0.x; kept for one release, see the README's API changes)."""

import warnings

from ..datasets.cub_parts import *  # noqa: F403

warnings.warn("conceptree.evaluation.cub_parts moved to conceptree.datasets.cub_parts; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
