"""Deprecated alias of :mod:`conceptree.render.flows_svg` (moved in this release; kept for one release, see the README's API changes)."""

import warnings

from .render.flows_svg import *  # noqa: F403

warnings.warn("conceptree.report_graph moved to conceptree.render.flows_svg; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
