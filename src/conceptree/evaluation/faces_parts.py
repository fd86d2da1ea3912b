"""Deprecated alias of :mod:`conceptree.datasets.faces_parts` (moved in this release; kept for one release, see the README's API changes)."""

import warnings

from ..datasets.faces_parts import *  # noqa: F403

warnings.warn("conceptree.evaluation.faces_parts moved to conceptree.datasets.faces_parts; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
