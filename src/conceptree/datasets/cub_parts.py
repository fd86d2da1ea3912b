"""The ``cub-parts`` dataset: CUB photos with part keypoints turned into part regions.

Region rule (fixed; documented in ``docs/evaluation.md``)
--------------------------------------------------------
Each keypoint becomes a disk in the *original* photo whose radius is a per-part fraction
of ``sqrt(w * h)`` of the CUB bounding box (``PART_RADIUS``); the keypoints of one region
(``REGIONS``: left/right eye, wing and leg merged, crown + forehead merged) are OR-ed. For
photos stored as 227×227 bounding-box crops, the disks are mapped into the crop frame with
its per-axis scale (so they become ellipses there), keeping the same region on the bird.

Second rule, ``slic`` (fixed before any result; regions that follow the photo)
-----------------------------------------------------------------------------
Disks favour disk-shaped maps. The ``slic`` rule segments the photo into superpixels with
scikit-image's SLIC (``compactness=10``, ``sigma=1``, about :data:`SLIC_SEGMENTS_PER_BIRD`
superpixels over the bird's bounding-box area, proportionally more over the whole photo) and
makes a part's region the union of the superpixels holding its keypoints, each clipped to a
disk of :data:`SLIC_CLIP` × the part's disk radius around its keypoint (so a superpixel that
leaks into the background cannot swallow it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .images import AnnotatedImage

#: Evaluated regions and the CUB keypoints each one merges.
REGIONS: dict[str, tuple[str, ...]] = {
    "beak": ("beak",),
    "crown": ("crown", "forehead"),
    "nape": ("nape",),
    "eye": ("left eye", "right eye"),
    "throat": ("throat",),
    "breast": ("breast",),
    "belly": ("belly",),
    "back": ("back",),
    "wing": ("left wing", "right wing"),
    "tail": ("tail",),
    "leg": ("left leg", "right leg"),
}

#: Disk radius per keypoint, as a fraction of sqrt(bbox area) in the original photo.
PART_RADIUS: dict[str, float] = {
    "beak": 0.08, "crown": 0.08, "forehead": 0.08, "nape": 0.08, "left eye": 0.05, "right eye": 0.05,
    "throat": 0.08, "breast": 0.12, "belly": 0.12, "back": 0.12, "left wing": 0.15, "right wing": 0.15,
    "tail": 0.12, "left leg": 0.08, "right leg": 0.08,
}


#: SLIC superpixels over the area of the bird's bounding box (rule ``slic``).
SLIC_SEGMENTS_PER_BIRD = 100
#: A superpixel is clipped to this multiple of the part's disk radius (rule ``slic``).
SLIC_CLIP = 2.0
#: Region rules of :meth:`PartImage.region_masks`.
REGION_RULES: tuple[str, ...] = ("disks", "slic")


@dataclass
class PartImage(AnnotatedImage):
    """A photo with CUB part keypoints; regions are disks around them (rule in the module docstring)."""

    keypoints: dict[str, tuple[float, float]]
    bird_size_px: tuple[float, float] = (1.0, 1.0)  # sqrt(bbox area) of the original, in this frame's x and y pixels
    parts: tuple[str, ...] = tuple(REGIONS)

    def disks(self, names: tuple[str, ...], fraction: float | dict[str, float]) -> np.ndarray | None:
        """OR of disks around the visible keypoints ``names`` (radius = fraction × bird size), or None."""
        yy, xx = np.mgrid[0 : self.height, 0 : self.width]
        mask = None
        for name in names:
            if name not in self.keypoints:
                continue
            x, y = self.keypoints[name]
            f = fraction[name] if isinstance(fraction, dict) else fraction
            rx, ry = f * self.bird_size_px[0], f * self.bird_size_px[1]
            disk = ((xx + 0.5 - x) / rx) ** 2 + ((yy + 0.5 - y) / ry) ** 2 <= 1.0
            mask = disk if mask is None else mask | disk
        return mask

    region_rule: str = "disks"
    subset: str = ""  # "original" (full frame) or "bbox_crop227"

    def region_masks(self, regions: dict[str, tuple[str, ...]] = REGIONS) -> dict[str, np.ndarray | None]:
        """Boolean ``(height, width)`` mask per region (rule ``region_rule``), or None where no
        keypoint is visible."""
        if self.region_rule == "disks":
            return {region: self.disks(names, PART_RADIUS) for region, names in regions.items()}
        if self.region_rule == "slic":
            return self.slic_masks(regions)
        raise InputError(f"unknown region rule {self.region_rule!r}; use one of {', '.join(REGION_RULES)}")

    def superpixels(self) -> np.ndarray:
        """SLIC labels of the photo, ``(height, width)`` int (rule in the module docstring)."""
        from PIL import Image
        from skimage.segmentation import slic

        with Image.open(self.path) as picture:
            rgb = np.asarray(picture.convert("RGB"))
        if rgb.shape[:2] != (self.height, self.width):
            raise InputError(f"{self.path} is {rgb.shape[1]}x{rgb.shape[0]}, the annotations say {self.width}x{self.height}")
        bird_area = self.bird_size_px[0] * self.bird_size_px[1]
        n_segments = max(16, int(round(SLIC_SEGMENTS_PER_BIRD * self.width * self.height / bird_area)))
        return slic(rgb, n_segments=n_segments, compactness=10.0, sigma=1.0, start_label=0)

    def slic_masks(self, regions: dict[str, tuple[str, ...]] = REGIONS) -> dict[str, np.ndarray | None]:
        """Regions of the ``slic`` rule: keypoints' superpixels, each clipped to a disk."""
        labels = self.superpixels()
        out: dict[str, np.ndarray | None] = {}
        for region, names in regions.items():
            mask = None
            for name in names:
                if name not in self.keypoints:
                    continue
                x, y = self.keypoints[name]
                row = min(max(int(y), 0), self.height - 1)
                col = min(max(int(x), 0), self.width - 1)
                clip = self.disks((name,), {name: SLIC_CLIP * PART_RADIUS[name]})
                piece = (labels == labels[row, col]) & clip
                mask = piece if mask is None else mask | piece
            out[region] = mask
        return out


def load_cub_parts(root: str | Path, require_target: bool = True) -> tuple[list[PartImage], dict[str, int]]:
    """Read ``annotations.json`` of a ``cub_parts`` folder.

    Parameters
    ----------
    root : path
        Folder holding ``annotations.json`` and the photos.
    require_target : bool
        Skip photos whose species has no ``inat_index`` (the bird model's class).

    Returns
    -------
    images : list[PartImage]
        Sorted by species, then file.
    skipped : dict
        ``{"species_without_target": n_species, "images_without_target": n_images}``.
    """
    root = Path(root)
    path = root / "annotations.json"
    if not path.is_file():
        raise InputError(f"{path} not found; point --data at a cub_parts folder (annotations.json + images)")
    try:
        records = json.loads(path.read_text())["images"]
    except (ValueError, KeyError) as exc:
        raise InputError(f"{path} is not a cub_parts annotations file ({exc}); expected {{'images': [...]}}") from None
    images, missing_species, missing_images = [], set(), 0
    for rec in records:
        species = rec["species"]
        target = species.get("inat_index")
        if target is None and require_target:
            missing_species.add(species["name"])
            missing_images += 1
            continue
        crop = rec.get("crop")
        _, _, bw, bh = crop["orig_bbox"] if crop else rec["bbox"]
        scale = crop["scale_xy"] if crop else (1.0, 1.0)
        size = float(np.sqrt(bw * bh))
        images.append(
            PartImage(
                image_id=str(rec["cub_image_id"]),
                path=root / rec["file"],
                species=species["name"],
                target=None if target is None else int(target),
                width=int(rec["width"]),
                height=int(rec["height"]),
                keypoints={k: (float(v[0]), float(v[1])) for k, v in rec["parts"].items()},
                bird_size_px=(size * scale[0], size * scale[1]),
                subset=str(rec.get("subset", "")),
            )
        )
    images.sort(key=lambda im: (im.species, im.path.name))
    return images, {"species_without_target": len(missing_species), "images_without_target": missing_images}


def select(images: list, species: list[str] | None = None, per_species: int | None = None) -> list:
    """Keep the given species (names or substrings) and at most ``per_species`` photos each."""
    if species:
        wanted = [s.lower() for s in species]
        chosen = [im for im in images if any(w in im.species.lower() for w in wanted)]
        if not chosen:
            raise InputError(f"no images match --species {', '.join(species)}; names look like {images[0].species!r}")
        images = chosen
    if per_species is not None:
        if per_species < 1:
            raise InputError(f"--per-species must be >= 1, got {per_species}")
        counts: dict[str, int] = {}
        kept = []
        for im in images:
            if counts.get(im.species, 0) < per_species:
                kept.append(im)
                counts[im.species] = counts.get(im.species, 0) + 1
        images = kept
    return images
