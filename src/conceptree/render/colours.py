"""Colours shared by the report's pictures and its SVG graph: one colour per concept, and readable text on it."""

from __future__ import annotations

import numpy as np


def colormap(name: str):
    """A matplotlib colormap by name (imported on first use: no matplotlib at package import)."""
    from matplotlib import colormaps

    return colormaps[name]


def concept_colours(k: int) -> np.ndarray:
    """A distinct colour per concept (tab20, then tab20b), ``(k, 3)`` floats in [0, 1]."""
    palette = np.concatenate([colormap("tab20").colors, colormap("tab20b").colors])[:, :3]
    order = np.r_[0:20:2, 1:20:2, 20:40]  # the strong tab20 colours first
    return np.asarray(palette[order[np.arange(k) % len(order)]], np.float32)


def hex_colour(rgb: np.ndarray) -> str:
    """``"#rrggbb"`` of an RGB triple in [0, 1]."""
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


def text_colour(rgb: np.ndarray) -> str:
    """Black or white text, whichever reads better on ``rgb`` (relative luminance)."""
    return "#000" if float(np.dot(rgb[:3], [0.2126, 0.7152, 0.0722])) > 0.45 else "#fff"
