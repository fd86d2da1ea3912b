"""Nuisance changes of a photo that should not change its explanation, and how to line maps up again.

Six changes (``CHANGES``): re-encoding as JPEG at quality 90, a shift by 2 pixels, the content
resized by ±5 %, and brightness ±5 %. Each turns a PIL photo into the model input the
unchanged photo would have had (:func:`changed_input`); :func:`align_maps` maps the changed
photo's maps back onto the unchanged photo's frame where the change moved pixels.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

from ..errors import InputError
from ..models.loading import Preprocessing, preprocess

CHANGES: tuple[str, ...] = ("jpeg90", "shift2", "resize+5", "resize-5", "brightness+5", "brightness-5")
SHIFT = 2
SCALE = 0.05


def changed_input(picture: Image.Image, change: str, prep: Preprocessing) -> torch.Tensor:
    """The model input ``(1, C, H, W)`` of ``picture`` under one of :data:`CHANGES`.

    ``jpeg90`` and ``brightness±5`` change the photo before preprocessing; ``shift2`` moves
    the input up and left by 2 pixels (edges replicated); ``resize+5`` shows the centre
    ``1/1.05`` of the frame upsampled to the frame, ``resize-5`` the frame shrunk by 5 % in
    its centre with replicated edges.
    """
    if change not in CHANGES:
        raise InputError(f"unknown nuisance change {change!r}; use one of {', '.join(CHANGES)}")
    picture = picture.convert("RGB")
    if change == "jpeg90":
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=90)
        buf.seek(0)
        picture = Image.open(buf).convert("RGB")
    elif change.startswith("brightness"):
        picture = ImageEnhance.Brightness(picture).enhance(1 + SCALE if change.endswith("+5") else 1 - SCALE)
    x, _ = preprocess(picture, prep)
    h, w = x.shape[-2:]
    if change == "shift2":
        x = F.pad(x[..., SHIFT:, SHIFT:], (0, SHIFT, 0, SHIFT), mode="replicate")
    elif change == "resize+5":
        ch, cw = round(h / (1 + SCALE)), round(w / (1 + SCALE))
        top, left = (h - ch) // 2, (w - cw) // 2
        x = F.interpolate(x[..., top : top + ch, left : left + cw], size=(h, w), mode="bilinear", align_corners=False)
    elif change == "resize-5":
        sh, sw = round(h * (1 - SCALE)), round(w * (1 - SCALE))
        small = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
        top, left = (h - sh) // 2, (w - sw) // 2
        x = F.pad(small, (left, w - sw - left, top, h - sh - top), mode="replicate")
    return x


def align_maps(original: np.ndarray, changed: np.ndarray, change: str) -> tuple[np.ndarray, np.ndarray]:
    """Both stacks of maps ``(k, H, W)`` on the part of the frame they share, pixel for pixel.

    Returns ``(original', changed')`` of equal shape: the overlap for a shift, the changed
    map resampled back onto the original frame's region for a resize, the maps themselves
    for the photometric changes.
    """
    if change not in CHANGES:
        raise InputError(f"unknown nuisance change {change!r}; use one of {', '.join(CHANGES)}")
    h, w = original.shape[-2:]
    if change == "shift2":  # changed[i, j] shows original[i + 2, j + 2]
        return original[..., SHIFT:, SHIFT:], changed[..., : h - SHIFT, : w - SHIFT]
    if change.startswith("resize"):
        t = torch.from_numpy(np.ascontiguousarray(changed, np.float32))[:, None]
        if change == "resize+5":  # changed = the original's centre crop, upsampled
            ch, cw = round(h / (1 + SCALE)), round(w / (1 + SCALE))
            top, left = (h - ch) // 2, (w - cw) // 2
            back = F.interpolate(t, size=(ch, cw), mode="bilinear", align_corners=False)[:, 0].numpy()
            return original[..., top : top + ch, left : left + cw], back
        sh, sw = round(h * (1 - SCALE)), round(w * (1 - SCALE))  # changed shows the original shrunk in its centre
        top, left = (h - sh) // 2, (w - sw) // 2
        back = F.interpolate(t[..., top : top + sh, left : left + sw], size=(h, w), mode="bilinear",
                             align_corners=False)[:, 0].numpy()
        return original, back
    return original, changed
