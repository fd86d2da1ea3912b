"""Measurable words for a concept's region on a reference image: the bird part and the colour.

Part (where the set has CUB keypoints; rule fixed before any result)
--------------------------------------------------------------------
The keypoints become the evaluation's regions (:data:`~conceptree.datasets.cub_parts.REGIONS`,
disks of :data:`~conceptree.datasets.cub_parts.PART_RADIUS` × the bird's size), mapped into
the model input with the preprocessing's resize and crop. Each input pixel belongs to the
region of the keypoint whose disk holds it at the smallest normalised distance (``-1``: no
disk). The concept's part on a reference is the region at its region's seed (the map's
maximum). Chance for a part = the share of the input's pixels that belong to it: the rate at
which a uniformly placed seed would land there.

Colour (any set)
----------------
Each pixel gets one of :data:`COLOURS` from its HSV value (bins below). The concept's colour on
a reference is the most frequent word among its region's cells (each cell named by its mean
colour on the 56×56 grid the crop rule uses); chance = that word's share of the image's cells.
"""

from __future__ import annotations

import numpy as np

from ..models.loading import Preprocessing, input_frame

COLOURS = ("black", "white", "grey", "red", "orange", "yellow", "green", "blue", "purple", "brown")


def part_label_map(annotation: dict, prep: Preprocessing, size: tuple[int, int],
                   at: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, list[str]]:
    """Region index of every input pixel, ``(H, W)`` int16 (``-1``: in no part's disk), and the names.

    With ``at = (rows, cols)`` only those pixel rows and columns are labelled (a
    ``(len(rows), len(cols))`` map, e.g. the pixels the crop rule shows its grid cells' seeds at).
    """
    from ..datasets.cub_parts import PART_RADIUS, REGIONS

    names = list(REGIONS)
    region_of = {kp: i for i, (_, kps) in enumerate(REGIONS.items()) for kp in kps}
    sx, sy, left, top = input_frame(prep, int(annotation["width"]), int(annotation["height"]))
    bird_x, bird_y = annotation["bird_size_px"]
    height, width = size
    rows, cols = at if at is not None else (np.arange(height), np.arange(width))
    yy, xx = np.meshgrid(np.asarray(rows, np.float32) + 0.5, np.asarray(cols, np.float32) + 0.5, indexing="ij")
    best = np.full(yy.shape, np.inf, np.float32)
    labels = np.full(yy.shape, -1, np.int16)
    for name, (x, y) in sorted(annotation["keypoints"].items()):
        if name not in region_of:
            continue
        cx, cy = x * sx - left, y * sy - top
        rx, ry = PART_RADIUS[name] * bird_x * sx, PART_RADIUS[name] * bird_y * sy
        dist = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        closer = (dist <= 1.0) & (dist < best)
        best[closer] = dist[closer]
        labels[closer] = region_of[name]
    return labels, names


def colour_grid(picture: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """:func:`colour_names` of the picture's mean colour in each cell of ``grid``, ``grid`` int8."""
    import torch
    import torch.nn.functional as F

    rgb = torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1).float()[None]
    mean = F.adaptive_avg_pool2d(rgb, grid)[0].permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)
    return colour_names(mean)


def colour_names(picture: np.ndarray) -> np.ndarray:
    """Index into :data:`COLOURS` of every pixel of an ``(H, W, 3)`` uint8 picture, ``(H, W)`` int8.

    ``v < 0.2``: black; ``s < 0.2``: white (``v > 0.8``) or grey; otherwise by hue: red
    (< 15° or ≥ 340°), orange (15–45°; brown when ``v < 0.6``), yellow (45–70°), green
    (70–170°), blue (170–260°), purple (260–340°); red with ``v < 0.45`` is brown too.
    """
    rgb = picture.astype(np.float32) / 255.0
    v = rgb.max(-1)
    c = v - rgb.min(-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(c, 1e-6)
    hue = np.where(v == r, ((g - b) / safe) % 6, np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    out = np.full(v.shape, COLOURS.index("grey"), np.int8)
    chroma = (v >= 0.2) & (s >= 0.2)
    bins = [(0, 15, "red"), (15, 45, "orange"), (45, 70, "yellow"), (70, 170, "green"), (170, 260, "blue"),
            (260, 340, "purple"), (340, 361, "red")]
    for lo, hi, name in bins:
        out[chroma & (hue >= lo) & (hue < hi)] = COLOURS.index(name)
    brown = chroma & (((hue >= 15) & (hue < 45) & (v < 0.6)) | (((hue < 15) | (hue >= 340)) & (v < 0.45)))
    out[brown] = COLOURS.index("brown")
    grey = (v >= 0.2) & (s < 0.2)
    out[grey & (v > 0.8)] = COLOURS.index("white")
    out[v < 0.2] = COLOURS.index("black")
    return out
