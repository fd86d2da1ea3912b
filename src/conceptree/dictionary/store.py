"""A model's concept dictionary on disk: one fixed partition of its neurons into concepts.

A dictionary folder holds

``dictionary.json``
    the key of the index it was built from (model hash, LRP composite, layers, preprocessing,
    target rule), the neuron columns (``layer -> first column, channels``, as in the index),
    how it was built (features, location weight, linkage, k, images), and per concept: its id,
    size, representative (the member with the largest mean share over the reference images),
    mean share, layers, and its strongest reference images (rows of the index);
``labels.npy``
    ``(neurons,)`` int32: each neuron's concept id, ``-1`` for the inactive neurons (zero
    relevance on every reference image);
``linkage.npy``
    the dendrogram of the active neurons (scipy ``(n-1, 4)``), to cut at another k without
    re-clustering.

Concept ids are ``0..k-1`` in order of decreasing mean share over the reference set; they are
the same on every image explained with the dictionary.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..compatibility import key_difference, key_mismatch
from ..errors import InputError

#: version of the folder layout (``dictionary.json["format"]``).
DICTIONARY_FORMAT = 1
DICTIONARY_FILES = ("dictionary.json", "labels.npy", "linkage.npy")


@dataclass
class DictionaryConcept:
    """One concept of a dictionary.

    Attributes
    ----------
    id : int
        0 = the largest mean share over the reference set.
    columns : np.ndarray
        Index columns of the members ``(size,)``, by decreasing mean share.
    representative : str
        ``"layer:channel"`` of the member with the largest mean share.
    mean_share : float
        Mean over the reference images of ``Σ_members r_p(i) / Σ_q |r_q(i)|``.
    layer_histogram : dict[str, int]
        Members per layer.
    references : list[tuple[int, float]]
        The index rows where the concept's share is largest, with that share.
    """

    id: int
    columns: np.ndarray = field(repr=False)
    representative: str
    mean_share: float
    layer_histogram: dict[str, int]
    references: list[tuple[int, float]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(len(self.columns))

    def to_dict(self) -> dict:
        return {"id": self.id, "size": self.size, "representative": self.representative,
                "mean_share": self.mean_share, "layer_histogram": self.layer_histogram,
                "references": [list(r) for r in self.references]}


class ConceptDictionary:
    """A model's concepts: every active neuron in exactly one of them, fixed across images.

    Build one with :class:`~conceptree.dictionary.build.DictionaryBuilder` (or
    ``conceptree dictionary INDEX --out DICT``); load one with ``ConceptDictionary(path)``.

    Attributes
    ----------
    key : dict
        The key of the index it was built from.
    columns : dict[str, tuple[int, int]]
        ``layer -> (first column, channels)``.
    labels : np.ndarray
        ``(neurons,)`` int32 concept id per neuron, ``-1`` inactive.
    concepts : list[DictionaryConcept]
        By id.
    params : dict
        How it was built.
    neuron_share : np.ndarray
        ``(neurons,)`` mean share of each neuron over the reference images.
    linkage : np.ndarray
        Dendrogram of the active neurons.
    """

    def __init__(self, path: str | Path | None = None, *, key: dict | None = None,
                 columns: dict[str, tuple[int, int]] | None = None, labels: np.ndarray | None = None,
                 linkage: np.ndarray | None = None, params: dict | None = None,
                 references: dict[int, list[tuple[int, float]]] | None = None,
                 mean_share: np.ndarray | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if path is not None:
            key, columns, labels, linkage, params, references, mean_share = _read(self.path)
        if key is None or columns is None or labels is None or mean_share is None:
            raise InputError("a ConceptDictionary needs a folder, or key, columns, labels and mean_share")
        self.key, self.columns, self.params = key, dict(columns), dict(params or {})
        self.labels = np.asarray(labels, dtype=np.int32)
        self.linkage = np.zeros((0, 4)) if linkage is None else np.asarray(linkage, dtype=np.float64)
        self.n_neurons = int(sum(c for _, c in self.columns.values()))
        if self.labels.shape != (self.n_neurons,):
            raise InputError(f"labels has shape {self.labels.shape}, the columns say {self.n_neurons} neurons")
        self.neuron_share = np.asarray(mean_share, dtype=np.float64)
        if self.neuron_share.shape != (self.n_neurons,):
            raise InputError(f"mean_share has shape {self.neuron_share.shape}, the columns say {self.n_neurons} neurons")
        self.concepts = self._concepts(self.neuron_share, references or {})

    # ------------------------------------------------------------------ construction
    def _concepts(self, mean_share: np.ndarray, references: dict[int, list[tuple[int, float]]]) -> list[DictionaryConcept]:
        """Concepts from the labels and each neuron's mean share ``(neurons,)``."""
        names = self.neuron_names()
        layer_of = [n.rsplit(":", 1)[0] for n in names]
        k = int(self.labels.max()) + 1 if self.labels.size and self.labels.max() >= 0 else 0
        out = []
        for cid in range(k):
            cols = np.flatnonzero(self.labels == cid)
            cols = cols[np.lexsort((cols, -mean_share[cols]))]
            out.append(DictionaryConcept(cid, cols.astype(np.int64), names[int(cols[0])], float(mean_share[cols].sum()),
                                         dict(Counter(layer_of[int(c)] for c in cols)),
                                         [(int(r), float(s)) for r, s in references.get(cid, [])]))
        return out

    def neuron_names(self) -> list[str]:
        """``"layer:channel"`` of every column."""
        if getattr(self, "_names", None) is not None:
            return list(self._names)
        names = [""] * self.n_neurons
        for layer, (offset, channels) in self.columns.items():
            for c in range(channels):
                names[offset + c] = f"{layer}:{c}"
        self._names = tuple(names)
        return names

    def channels_of(self, columns: np.ndarray) -> dict[str, list[int]]:
        """Sorted neuron ``columns`` as ``layer -> channels`` (for :func:`layer_neuron_maps`)."""
        columns = np.sort(np.asarray(columns, dtype=np.int64))
        wanted: dict[str, list[int]] = {}
        for layer, (offset, channels) in self.columns.items():
            inside = columns[(columns >= offset) & (columns < offset + channels)]
            if inside.size:
                wanted[layer] = (inside - offset).tolist()
        return wanted

    @property
    def k(self) -> int:
        return len(self.concepts)

    def __len__(self) -> int:
        return self.k

    def __repr__(self) -> str:
        where = f"{str(self.path)!r}, " if self.path else ""
        return f"ConceptDictionary({where}k={self.k}, neurons={self.n_neurons}, inactive={int((self.labels < 0).sum())})"

    # ------------------------------------------------------------------ disk
    def save(self, path: str | Path) -> Path:
        """Write the folder (module docstring); files are replaced atomically, ``dictionary.json`` last."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, array in (("labels.npy", self.labels), ("linkage.npy", self.linkage)):
            tmp = path / f".{name}.tmp.npy"
            np.save(tmp, array)
            os.replace(tmp, path / name)
        meta = {
            "format": DICTIONARY_FORMAT, "key": self.key, "params": self.params,
            "neurons": [{"layer": layer, "offset": o, "channels": c} for layer, (o, c) in self.columns.items()],
            "k": self.k, "inactive": int((self.labels < 0).sum()),
            "concepts": [c.to_dict() for c in self.concepts],
            "mean_share": [round(float(v), 9) for v in self.neuron_share],
        }
        tmp = path / ".dictionary.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path / "dictionary.json")
        self.path = path
        return path

    # ------------------------------------------------------------------ compatibility
    def check(self, model_hash: str, composite: dict, layers: list[str], preprocessing: dict | None) -> None:
        """Refuse (one line) a dictionary of another model, rules, layers or preprocessing."""
        diff = key_mismatch(self.key, model_hash, composite, layers, preprocessing)
        if diff:
            raise InputError(f"the concept dictionary at {self.path} was built with other {', '.join(diff)} than this "
                             "explainer; build one from an index of this model (`conceptree dictionary`)")

    def check_index(self, index) -> None:
        """Refuse (one line) an index whose key or neuron columns differ from the dictionary's."""
        diff = key_difference(self.key, index.key)
        if diff or dict(index.columns) != self.columns:
            what = ", ".join(diff) or "neuron columns"
            raise InputError(f"the concept dictionary at {self.path} and the index at {index.path} differ in {what}; "
                             "use the index the dictionary was built from, or one of the same model and options")

    # ------------------------------------------------------------------ use
    def concept_relevance(self, neuron_relevance: np.ndarray) -> np.ndarray:
        """Each concept's relevance on one image: the sum of its members' ``r_p``.

        Parameters
        ----------
        neuron_relevance : np.ndarray
            ``(neurons,)`` (or ``(images, neurons)``) ``r_p`` in the dictionary's column order.

        Returns
        -------
        np.ndarray
            ``(k,)`` (or ``(images, k)``) float64.
        """
        r = np.asarray(neuron_relevance, dtype=np.float64)
        if r.shape[-1] != self.n_neurons:
            raise InputError(f"expected {self.n_neurons} neuron relevances (the dictionary's columns), got {r.shape[-1]}")
        active = self.labels >= 0
        if r.ndim == 1:
            return np.bincount(self.labels[active], weights=r[active], minlength=self.k)
        one_hot = np.zeros((self.n_neurons, self.k))
        one_hot[np.flatnonzero(active), self.labels[active]] = 1.0
        return r @ one_hot


def _read(path: Path) -> tuple:
    """The constructor's arguments from a dictionary folder (one-line errors when it is missing or stale)."""
    try:
        meta = json.loads((path / "dictionary.json").read_text())
    except FileNotFoundError:
        raise InputError(f"no concept dictionary at {path} (dictionary.json missing); build one with "
                         "`conceptree dictionary INDEX --out DICT`") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path / 'dictionary.json'} ({exc}); rebuild the dictionary") from None
    if meta.get("format") != DICTIONARY_FORMAT:
        raise InputError(f"{path} is a dictionary of format {meta.get('format')}, this conceptree reads "
                         f"{DICTIONARY_FORMAT}; rebuild it with `conceptree dictionary`")
    try:
        labels = np.load(path / "labels.npy")
        linkage = np.load(path / "linkage.npy")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the arrays of {path} ({exc}); rebuild the dictionary") from None
    columns = {n["layer"]: (int(n["offset"]), int(n["channels"])) for n in meta["neurons"]}
    references = {int(c["id"]): [(int(r), float(v)) for r, v in c.get("references", [])] for c in meta["concepts"]}
    return (meta["key"], columns, labels, linkage, meta.get("params", {}), references,
            np.asarray(meta["mean_share"], dtype=np.float64))
