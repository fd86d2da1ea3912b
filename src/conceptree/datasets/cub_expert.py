"""The ``cub-expert`` dataset: expert part masks exported from Label Studio (JSON-MIN).

Layout: ``<root>/<annotator>/<CUB class folder>/*.json``, one JSON-MIN export per species.
Each task names its image (``/data/upload/<n>/<hash>-<CUB file name>``) and holds brush
regions: ``{"format": "rle", "rle": [bytes...], "brushlabels": [label],
"original_width": W, "original_height": H}``; regions with the same label are OR-ed.

Label Studio's brush RLE is thi.ng's ``rle-pack`` bit stream over the RGBA pixels of the
mask (each pixel's value repeated 4 times, MSB first): 32 bits word count, 5 bits
``word size - 1``, four 4-bit ``run-length size - 1`` fields, then chunks of
``flag (1 bit), size index (2 bits), length - 1``; flag 1 = one word repeated, flag 0 =
that many literal words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .images import AnnotatedImage


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.n_bits = len(data) * 8
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > self.n_bits:
            raise InputError("brush RLE ends early; the export is truncated or not Label Studio's 'rle' format")
        self.pos += n
        return (self.value >> (self.n_bits - self.pos)) & ((1 << n) - 1)


def decode_rle(rle: list[int] | bytes) -> np.ndarray:
    """Decode Label Studio brush RLE to the flat word array (``H*W*4`` values for a mask)."""
    reader = _BitReader(bytes(rle))
    num = reader.read(32)
    word_size = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8 if word_size <= 8 else np.uint32)
    i = 0
    while i < num:
        repeat = reader.read(1)
        j = min(num, i + 1 + reader.read(sizes[reader.read(2)]))
        if repeat:
            out[i:j] = reader.read(word_size)
        else:
            out[i:j] = [reader.read(word_size) for _ in range(j - i)]
        i = j
    return out


def encode_rle(values: np.ndarray, word_size: int = 8, sizes: tuple[int, int, int, int] = (3, 4, 8, 16)) -> list[int]:
    """Encode a flat word array as Label Studio brush RLE (runs only; for writing fixtures)."""
    values = np.asarray(values).ravel()
    bits: list[str] = [format(values.size, "032b"), format(word_size - 1, "05b"), *(format(s - 1, "04b") for s in sizes)]
    change = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [values.size]])
    for start, end in zip(starts, ends):
        remaining = int(end - start)
        while remaining:
            n = min(remaining, 1 << sizes[-1])
            index = next(k for k, s in enumerate(sizes) if n - 1 < (1 << s))
            bits += ["1", format(index, "02b"), format(n - 1, f"0{sizes[index]}b"), format(int(values[start]), f"0{word_size}b")]
            remaining -= n
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big")) if stream else []


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Boolean ``(H, W)`` mask -> brush RLE as Label Studio stores it (RGBA, value 255)."""
    return encode_rle(np.repeat(np.asarray(mask, bool).ravel().astype(np.uint8) * 255, 4))


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Brush RLE -> boolean ``(H, W)`` mask (the alpha channel of the decoded RGBA image)."""
    flat = decode_rle(rle)
    if flat.size != height * width * 4:
        raise InputError(
            f"brush RLE holds {flat.size} values, expected {height}x{width}x4={height * width * 4}; "
            "original_width/original_height do not match the mask"
        )
    return flat.reshape(height, width, 4)[:, :, 3] > 0


@dataclass
class ExpertImage(AnnotatedImage):
    """A photo with expert masks (``masks``: label -> boolean ``(height, width)``)."""

    masks: dict[str, np.ndarray]
    parts: tuple[str, ...] = ()

    def region_masks(self) -> dict[str, np.ndarray]:
        return self.masks


def _image_name(task: dict) -> str | None:
    for key in ("image", "img", "data"):
        value = task.get(key)
        if isinstance(value, str):
            name = Path(value).name
            return name.split("-", 1)[1] if "-" in name else name
    return None


def _regions(task: dict) -> list[dict]:
    found = []
    for value in task.values():
        if isinstance(value, list):
            found += [v for v in value if isinstance(v, dict) and v.get("format") == "rle" and "rle" in v]
    return found


def load_cub_expert(
    root: str | Path, images: str | Path, annotator: str | None = None, class_offset: int = 1
) -> list[ExpertImage]:
    """Read CUB-expert Label Studio exports.

    Parameters
    ----------
    root : path
        Folder holding ``annotatorN/<class folder>/*.json``.
    images : path
        CUB's ``images`` folder (``<class folder>/<file>.jpg``).
    annotator : str, optional
        Which annotator folder to read (default: the first, sorted).
    class_offset : int
        Target = the class folder's number minus this (CUB folders start at ``001``).
    """
    root, images = Path(root), Path(images)
    annotators = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not annotators:
        raise InputError(f"{root} has no annotator folders; expected <root>/annotatorN/<CUB class folder>/*.json")
    chosen = next((a for a in annotators if a.name == annotator), None) if annotator else annotators[0]
    if chosen is None:
        raise InputError(f"annotator {annotator!r} not found in {root}; available: {', '.join(a.name for a in annotators)}")
    out: list[ExpertImage] = []
    labels: set[str] = set()
    for export in sorted(chosen.glob("*/*.json")):
        species = export.parent.name
        number = species.split(".", 1)[0]
        target = int(number) - class_offset if number.isdigit() else None
        try:
            tasks = json.loads(export.read_text())
        except ValueError as exc:
            raise InputError(f"{export} is not JSON ({exc}); export the project as Label Studio JSON-MIN") from None
        for task in tasks if isinstance(tasks, list) else [tasks]:
            name = _image_name(task)
            regions = _regions(task)
            if name is None or not regions:
                continue
            height, width = int(regions[0]["original_height"]), int(regions[0]["original_width"])
            masks: dict[str, np.ndarray] = {}
            for region in regions:
                for label in region.get("brushlabels", []):
                    mask = rle_to_mask(region["rle"], height, width)
                    masks[label] = masks[label] | mask if label in masks else mask
                    labels.add(label)
            out.append(ExpertImage(Path(name).stem, images / species / name, species, target, width, height, masks))
    if not out:
        raise InputError(f"no annotated images found under {chosen}; expected Label Studio JSON-MIN exports with brush RLE")
    parts = tuple(sorted(labels))
    for image in out:
        image.parts = parts
    return out
