"""Deterministic edits of an aligned face for the paper's analyses: glasses, mirror, half occlusion.

Each takes a chip ``(S, S, 3)`` uint8 and its landmarks ``(5, 2)`` and returns a new chip (and,
for the mirror, new landmarks); the same inputs give the same pixels.
"""

from __future__ import annotations

import numpy as np

from .regions import _ellipse, face_frame, part_regions

#: dlib's mean pixel: an occluded region becomes zero input for the face network.
MEAN_PIXEL = (123, 117, 104)
#: half-axes of the glasses' rims around each eye centre, along and across the eye line (in ``d``).
LENS_AXES = (0.42, 0.30)


def lens_mask(landmarks: np.ndarray, size: int = 150) -> np.ndarray:
    """Boolean ``(size, size)``: inside the rims :func:`draw_glasses` draws (both lenses)."""
    pts = np.asarray(landmarks, float)
    _, u, v, d = face_frame(pts)
    ys, xs = np.mgrid[0:size, 0:size]
    grid = np.stack([xs + 0.5, ys + 0.5], -1)
    a, b = LENS_AXES[0] * d, LENS_AXES[1] * d
    return _ellipse(grid, pts[0], u, v, a, b) | _ellipse(grid, pts[1], u, v, a, b)


def draw_glasses(chip: np.ndarray, landmarks: np.ndarray, *, colour=(20, 20, 20), lens_tint: float = 0.0) -> np.ndarray:
    """Glasses drawn from the eye landmarks: elliptic rims (half-axes 0.42·d × 0.30·d around each eye,
    line width 0.07·d), a bridge between them and temples to the chip's edges at eye height;
    ``lens_tint`` in [0, 1] darkens the lenses (0: clear)."""
    from PIL import Image, ImageDraw

    pts = np.asarray(landmarks, float)
    _, u, v, d = face_frame(pts)
    size = chip.shape[0]
    scale = 4  # drawn at 4× and downsampled: smooth, deterministic rims
    canvas = Image.new("L", (size * scale, size * scale), 0)
    lens = Image.new("L", (size * scale, size * scale), 0)
    draw, draw_lens = ImageDraw.Draw(canvas), ImageDraw.Draw(lens)
    width = max(1, int(round(0.07 * d * scale)))
    a, b = LENS_AXES[0] * d, LENS_AXES[1] * d
    t = np.linspace(0, 2 * np.pi, 90)
    for eye in pts[:2]:
        ring = [tuple(scale * (eye + a * np.cos(s) * u + b * np.sin(s) * v)) for s in t]
        draw.line(ring + [ring[0]], fill=255, width=width, joint="curve")
        draw_lens.polygon(ring, fill=255)
    inner_left = scale * (pts[0] + a * u)
    inner_right = scale * (pts[1] - a * u)
    draw.line([tuple(inner_left), tuple(inner_right)], fill=255, width=width)
    outer_left, outer_right = scale * (pts[0] - a * u), scale * (pts[1] + a * u)
    draw.line([tuple(outer_left), tuple(outer_left - u * scale * size)], fill=255, width=width)
    draw.line([tuple(outer_right), tuple(outer_right + u * scale * size)], fill=255, width=width)
    frame = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), float)[..., None] / 255.0
    tint = np.asarray(lens.resize((size, size), Image.Resampling.BOX), float)[..., None] / 255.0 * lens_tint
    out = chip.astype(float) * (1 - tint)
    out = out * (1 - frame) + np.asarray(colour, float) * frame
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mirror(chip: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chip flipped left-right and its landmarks mapped onto it (still ordered image-left first)."""
    size = chip.shape[1]
    pts = np.asarray(landmarks, float).copy()
    pts[:, 0] = size - pts[:, 0]
    return chip[:, ::-1].copy(), pts[[1, 0, 2, 4, 3]]


def occlude_half(chip: np.ndarray, landmarks: np.ndarray, side: str, *, fill=MEAN_PIXEL) -> np.ndarray:
    """The face's ``"left"`` or ``"right"`` half (image sides, :func:`part_regions`) set to ``fill``."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    mask = part_regions(landmarks, chip.shape[0])[f"face_{side}"]
    out = chip.copy()
    out[mask] = np.asarray(fill, np.uint8)
    return out
