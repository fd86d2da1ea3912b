"""Aligned face chips with part regions from their landmarks, as an evaluation dataset (``--dataset faces``).

A folder written by ``benchmarks/faces_identity.py``: ``faces.json`` lists every chip (its file,
identity, class index in the gallery and five landmarks in chip coordinates) and ``chips/``
holds the 150×150 PNGs. The regions are :func:`conceptree.faces.part_regions` of the landmarks
(measured, not placed by hand); "species" are identities, so scores are averaged per person
first, as birds are per species.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..faces.regions import part_regions
from .images import AnnotatedImage

#: Evaluated regions, in report order ("left"/"right": the image's sides).
FACE_PARTS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth", "forehead", "face_left", "face_right")


@dataclass
class FaceImage(AnnotatedImage):
    """An aligned chip; ``landmarks`` (5, 2) in its pixel coordinates."""

    landmarks: np.ndarray
    parts: tuple[str, ...] = FACE_PARTS

    def region_masks(self) -> dict[str, np.ndarray | None]:
        regions = part_regions(self.landmarks, self.width)
        return {name: regions[name] for name in self.parts}


def load_faces(root: str | Path) -> list[FaceImage]:
    """The chips listed in ``root/faces.json`` that have a class in the gallery."""
    root = Path(root)
    try:
        listing = json.loads((root / "faces.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{root} has no faces.json (write one with benchmarks/faces_identity.py)") from None
    except ValueError as exc:
        raise InputError(f"{root}/faces.json is not valid JSON ({exc})") from None
    images = []
    for face in listing["faces"]:
        if face.get("target") is None:
            continue
        path = root / face["chip"]
        size = int(face.get("size", 150))
        images.append(FaceImage(image_id=face["id"], path=path, species=face["identity"], target=int(face["target"]),
                                width=size, height=size, landmarks=np.asarray(face["landmarks"], float)))
    return images
