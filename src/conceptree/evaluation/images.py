"""Deprecated alias of :mod:`conceptree.datasets.images` (moved in this release; kept for one release, see the README's API changes)."""

import warnings

from ..datasets.images import *  # noqa: F403

warnings.warn("conceptree.evaluation.images moved to conceptree.datasets.images; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
