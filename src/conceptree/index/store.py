"""The reference index on disk: every neuron's relevance on every image of a reference set.

An index folder holds

``relevance.npy``
    ``(images, neurons)`` float16, memory-mapped on load: ``r_p`` of every conv channel the
    explainer knows (columns in the engine's layer order, channels in order; ``neurons`` in
    ``index.json`` gives each layer's first column) for the class each image was indexed for.
``peaks.npy``
    ``(images, neurons)`` uint16: the cell of :data:`PEAK_GRID` (over the model input) holding
    each neuron's own-layer relevance peak on each image, ``row * 56 + col``.
``index.json``
    the key (model hash, LRP composite, layers, preprocessing, target rule), the neuron
    columns, per image its path (relative to ``root``), file and pixel hashes, prediction,
    label when the set has labels, explained class, status, ``sum |r_p|``, and the part
    keypoints when the set is a ``cub_parts`` folder; a build summary (throughput, memory).

With the peaks, a concept's region on any reference is drawn without a second LRP pass
(:func:`~conceptree.index.references.peak_map`): four bytes per neuron and image. Recomputing
the exact map instead (``exact_crops``) costs one LRP pass per reference image, 30 s for the
~150 distinct references of a 28-concept explanation on a 2-core CPU; the two are compared in
``docs/results/references.md``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..compatibility import INDEX_FORMAT, composite_key, index_key, key_difference, key_mismatch
from ..errors import InputError

# the compatibility key moved to conceptree.compatibility; re-exported here for the callers of the previous release
__all__ = ["INDEX_FORMAT", "ConceptIndex", "IndexImage", "composite_key", "index_key", "key_difference", "key_mismatch"]

INDEX_FILES = ("index.json", "relevance.npy", "peaks.npy")
#: grid over the model input on which each neuron's relevance peak is stored (4-pixel cells at 224).
PEAK_GRID = (56, 56)
#: float16 holds relevances up to this magnitude; larger ones are refused rather than clipped.
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class IndexImage:
    """One image of the reference set as the index recorded it."""

    row: int
    path: str
    status: str  # "ok" | "failed"
    error: str | None = None
    file_sha1: str | None = None
    pixels_sha1: str | None = None
    predicted: int | None = None
    probability: float | None = None
    label: int | None = None
    target: int | None = None
    abs_total: float = 0.0
    annotation: dict | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class ConceptIndex:
    """A built reference index, loaded read-only (:mod:`conceptree.index.store`).

    Parameters
    ----------
    path : path
        The index folder (written by :class:`~conceptree.index.build.IndexBuilder`).

    Attributes
    ----------
    key : dict
        Model hash, composite, layers, preprocessing and target rule it was built with.
    images : list[IndexImage]
    columns : dict[str, tuple[int, int]]
        ``layer -> (first column, channels)``.
    class_names : list[str]
    root : Path
        Folder the image paths are relative to.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "index.json"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise InputError(f"no index at {self.path} (index.json missing); build one with `conceptree index`") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {meta_path} ({exc}); rebuild the index") from None
        if meta.get("format") != INDEX_FORMAT:
            raise InputError(f"{self.path} is an index of format {meta.get('format')}, this conceptree reads "
                             f"{INDEX_FORMAT}; rebuild it with `conceptree index`")
        self.meta = meta
        self.key: dict = meta["key"]
        self.root = Path(meta["root"])
        self.class_names: list[str] = list(meta.get("class_names") or [])
        self.columns: dict[str, tuple[int, int]] = {n["layer"]: (int(n["offset"]), int(n["channels"]))
                                                    for n in meta["neurons"]}
        self.n_neurons = int(sum(c for _, c in self.columns.values()))
        self.images = [IndexImage(**rec) for rec in meta["images"]]
        self.abs_total = np.array([im.abs_total for im in self.images], dtype=np.float64)
        self.ok = np.array([im.ok for im in self.images], dtype=bool)
        self._pixels = {im.pixels_sha1: im.row for im in self.images if im.pixels_sha1}
        self.layer_sizes: dict[str, tuple[int, int]] = {k: tuple(v) for k, v in meta.get("layer_sizes", {}).items()}
        self.peak_grid = tuple(meta.get("peak_grid", PEAK_GRID))
        self._relevance: np.ndarray | None = None
        self._peaks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"ConceptIndex({str(self.path)!r}, images={len(self)}, neurons={self.n_neurons})"

    @property
    def relevance(self) -> np.ndarray:
        """``(images, neurons)`` float16, memory-mapped (rows of failed images are zero)."""
        if self._relevance is None:
            self._relevance = self._matrix("relevance.npy")
        return self._relevance

    def summary(self) -> dict:
        """What an explanation records of the index it used."""
        return {"path": str(self.path), "images": len(self), "failed": int((~self.ok).sum()),
                "neurons": self.n_neurons, "target": self.key.get("target"), "root": str(self.root)}

    @property
    def peaks(self) -> np.ndarray:
        """``(images, neurons)`` uint16 peak cells on :attr:`peak_grid`, memory-mapped."""
        if self._peaks is None:
            self._peaks = self._matrix("peaks.npy")
        return self._peaks

    def _matrix(self, name: str) -> np.ndarray:
        """An ``(images, neurons)`` matrix of the folder, memory-mapped and checked."""
        try:
            matrix = np.load(self.path / name, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {self.path / name} ({exc}); rebuild the index") from None
        if matrix.shape != (len(self.images), self.n_neurons):
            raise InputError(f"{self.path / name} has shape {matrix.shape}, index.json says "
                             f"{(len(self.images), self.n_neurons)}; rebuild the index")
        return matrix

    def cell_size(self, columns: np.ndarray) -> np.ndarray:
        """Side of each neuron's layer cell in :attr:`peak_grid` cells (at least 1), ``(m,)`` int."""
        sizes = np.ones(self.n_neurons, dtype=np.int64)
        for layer, (offset, channels) in self.columns.items():
            h, w = self.layer_sizes.get(layer, self.peak_grid)
            sizes[offset : offset + channels] = max(1, round(max(self.peak_grid[0] / h, self.peak_grid[1] / w)))
        return sizes[np.asarray(columns, dtype=np.int64)]

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-1 of the key and every image's pixel hash, in row order: two indexes with the same
        fingerprint have the same rows (what a dictionary's stored references refer to)."""
        text = json.dumps(self.key, sort_keys=True) + "\n" + "\n".join(im.pixels_sha1 or "-" for im in self.images)
        return hashlib.sha1(text.encode()).hexdigest()

    def export_metadata(self, path: str | Path) -> Path:
        """Write the index's small metadata (key, build summary, per image: path, hashes,
        prediction, label, target, status) to a JSON file, without the part annotations, the
        class names (the model's label file) or the matrices: what a results folder commits
        to say which index it used."""
        images = [{k: v for k, v in rec.items() if k != "annotation"} for rec in self.meta["images"]]
        data = {k: v for k, v in self.meta.items() if k not in ("images", "root", "class_names")}
        path = Path(path)
        path.write_text(json.dumps({**data, "images": images}, indent=1))
        return path

    # ------------------------------------------------------------------ compatibility
    def check(self, model_hash: str, composite: dict, layers: list[str], preprocessing: dict | None) -> None:
        """Refuse (one line) an index made with another model, rules, layers or preprocessing."""
        diff = key_mismatch(self.key, model_hash, composite, layers, preprocessing)
        if diff:
            raise InputError(f"the index at {self.path} was built with other {', '.join(diff)} than this explainer; "
                             "rebuild it with `conceptree index` for this model and options")

    # ------------------------------------------------------------------ lookups
    def column(self, layer: str, channel: int) -> int:
        """Column of neuron ``layer:channel`` in :attr:`relevance`."""
        if layer not in self.columns:
            raise InputError(f"layer {layer!r} is not in the index; rebuild it with the explainer's layers")
        offset, channels = self.columns[layer]
        if not 0 <= channel < channels:
            raise InputError(f"channel {channel} is outside layer {layer!r} ({channels} channels)")
        return offset + channel

    def row_of_pixels(self, pixels_sha1: str) -> int | None:
        """Row of the image whose preprocessed pixels have this SHA-1 (an explanation's image hash)."""
        return self._pixels.get(pixels_sha1)

    def image_path(self, row: int) -> Path:
        return self.root / self.images[row].path

    def class_name(self, index: int | None) -> str | None:
        if index is None:
            return None
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def image_class(self, row: int) -> int | None:
        """The image's class for naming: its label where the set has one, else its prediction."""
        image = self.images[row]
        return image.label if image.label is not None else image.predicted

    # ------------------------------------------------------------------ ranking
    def scores(self, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Relevance-weighted share of a neuron group on every image, ``(images,)`` float64.

        ``score_i = sum_p w_p r_p(i) / sum_q |r_q(i)|`` over the group's columns ``p`` (the
        denominator over every neuron of image ``i`` removes the logit's scale, so images are
        compared by the fraction of their decision that flows through the group). Failed
        images score ``-inf``.
        """
        columns = np.asarray(columns, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        if columns.shape != weights.shape or columns.ndim != 1:
            raise InputError(f"columns {columns.shape} and weights {weights.shape} must be equal-length vectors")
        if columns.size and (columns.min() < 0 or columns.max() >= self.n_neurons):
            raise InputError(f"neuron columns must lie in 0..{self.n_neurons - 1}")
        block = np.asarray(self.relevance[:, columns], dtype=np.float64)
        raw = block @ weights
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(self.abs_total > 0, raw / self.abs_total, 0.0)
        out[~self.ok] = -np.inf
        return out

    def top(self, columns: np.ndarray, weights: np.ndarray, n: int, exclude: set[int] | None = None) -> list[tuple[int, float]]:
        """The ``n`` best ``(row, score)`` by :meth:`scores`, ties broken by row (deterministic)."""
        scores = self.scores(columns, weights)
        order = np.lexsort((np.arange(len(scores)), -scores))
        out = []
        for row in order:
            if exclude and int(row) in exclude or not np.isfinite(scores[row]):
                continue
            out.append((int(row), float(scores[row])))
            if len(out) == n:
                break
        return out
