"""Deprecated alias of :mod:`conceptree.datasets.cub_expert` (moved in this release; kept for one release, see the README's API changes)."""

import warnings

from ..datasets.cub_expert import *  # noqa: F403

warnings.warn("conceptree.evaluation.cub_expert moved to conceptree.datasets.cub_expert; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
