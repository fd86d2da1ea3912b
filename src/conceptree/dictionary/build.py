"""Build a concept dictionary: cluster a model's neurons once, over a reference index.

Features: :mod:`conceptree.dictionary.features` (co-relevance across the reference images
plus, weighted by β, where each neuron's relevance peaks). Clustering: Ward's linkage
(fastcluster) on the Euclidean distances of the normalised features, cut at ``k``; every
active neuron lands in exactly one concept. The choice of features, β and k was made on the
dev photos by the rule in ``docs/results/dictionary.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..concepts.clustering import cut_labels, linkage_matrix
from ..concepts.distance import check_linkage
from ..errors import InputError
from ..index.store import ConceptIndex
from .features import DEFAULT_LOCATION_WEIGHT, condensed_euclidean, index_features
from .store import ConceptDictionary

#: concepts of the default dictionary (chosen on the dev photos, docs/results/dictionary.md).
DEFAULT_K = 50
#: reference images stored per concept (one more than an explanation shows, so that the
#: explained photo itself can be left out).
DEFAULT_DICTIONARY_REFERENCES = 9


@dataclass
class DictionaryBuilder:
    """Cluster the neurons of an index into a :class:`ConceptDictionary`.

    Parameters
    ----------
    k : int
        Number of concepts.
    location_weight : float
        β of :func:`~conceptree.dictionary.features.index_features` (0: co-relevance only).
    method : str
        Linkage of the active neurons (``"ward"``, ``"average"``, ``"complete"``, ``"single"``).
    n_references : int
        Strongest reference images stored per concept.
    progress : bool
        Print the stages and their times.

    Attributes
    ----------
    timings_ : dict[str, float]
        Seconds per stage of the last :meth:`fit`.
    """

    k: int = DEFAULT_K
    location_weight: float = DEFAULT_LOCATION_WEIGHT
    method: str = "ward"
    n_references: int = DEFAULT_DICTIONARY_REFERENCES
    progress: bool = False
    timings_: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InputError(f"k must be a positive int, got {self.k!r}")
        if self.location_weight < 0:
            raise InputError(f"location_weight must be >= 0, got {self.location_weight}")
        check_linkage(self.method)
        if self.n_references < 0:
            raise InputError(f"n_references must be >= 0, got {self.n_references}")

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)

    def fit(self, index: ConceptIndex | str | Path, rows: Sequence[int] | None = None) -> ConceptDictionary:
        """Cluster the index's neurons.

        Parameters
        ----------
        index : ConceptIndex or path
            A reference index (:mod:`conceptree.index`).
        rows : sequence of int, optional
            The index rows (images) to use (default: every image indexed without error).

        Returns
        -------
        ConceptDictionary
        """
        index = index if isinstance(index, ConceptIndex) else ConceptIndex(index)
        rows = np.flatnonzero(index.ok) if rows is None else np.asarray(sorted(set(int(r) for r in rows)), dtype=np.int64)
        if rows.size < 2:
            raise InputError(f"a dictionary needs at least 2 indexed images, got {rows.size}")
        if rows.min() < 0 or rows.max() >= len(index) or not index.ok[rows].all():
            raise InputError(f"rows must be indexed images without error, within 0..{len(index) - 1}")
        t0 = time.perf_counter()
        relevance = np.asarray(index.relevance[rows], dtype=np.float32)
        peaks = np.asarray(index.peaks[rows]) if self.location_weight > 0 else None
        total = index.abs_total[rows]
        features, active = index_features(relevance, total, peaks, index.peak_grid, self.location_weight)
        n_active = int(active.sum())
        if not 1 <= self.k <= n_active:
            raise InputError(f"cannot cut {n_active} active neurons into {self.k} concepts; use 1 <= k <= {n_active}")
        t1 = time.perf_counter()
        self._say(f"features: {n_active} active neurons × {features.shape[1]} ({t1 - t0:.1f} s)")
        condensed = condensed_euclidean(features)
        del features
        t2 = time.perf_counter()
        self._say(f"distances: {condensed.size:,} pairs ({t2 - t1:.1f} s)")
        linkage = linkage_matrix(condensed, self.method)
        del condensed
        t3 = time.perf_counter()
        self._say(f"{self.method} linkage ({t3 - t2:.1f} s)")
        share = relevance / total[:, None].astype(np.float32)  # (images, neurons)
        neuron_share = share.mean(0, dtype=np.float64)
        cut = cut_labels(linkage, [self.k])[self.k]
        # ids by decreasing mean share of the concept
        concept_share = np.bincount(cut, weights=neuron_share[active], minlength=self.k)
        order = np.lexsort((np.arange(self.k), -concept_share))
        rename = np.empty(self.k, dtype=np.int64)
        rename[order] = np.arange(self.k)
        labels = np.full(index.n_neurons, -1, dtype=np.int32)
        labels[active] = rename[cut]
        one_hot = np.zeros((index.n_neurons, self.k), dtype=np.float32)
        one_hot[np.flatnonzero(active), labels[active]] = 1.0
        per_image = share @ one_hot  # (images, k)
        references = {}
        for cid in range(self.k):
            best = np.lexsort((rows, -per_image[:, cid]))[: self.n_references]
            references[cid] = [(int(rows[i]), float(per_image[i, cid])) for i in best]
        self.timings_ = {"features_s": t1 - t0, "distances_s": t2 - t1, "linkage_s": t3 - t2,
                         "total_s": time.perf_counter() - t0}
        params = {"features": "co-relevance + peak location" if self.location_weight > 0 else "co-relevance",
                  "location_weight": self.location_weight, "method": self.method, "k": self.k,
                  "images": int(rows.size), "rows": _row_ranges(rows), "index": index.summary(),
                  "index_fingerprint": index.fingerprint,
                  "active_neurons": n_active, "timings": self.timings_}
        return ConceptDictionary(key=index.key, columns=index.columns, labels=labels, linkage=linkage,
                                 params=params, references=references, mean_share=neuron_share)


def _row_ranges(rows: np.ndarray) -> list[list[int]]:
    """Sorted rows as inclusive ``[first, last]`` runs (short in JSON)."""
    runs: list[list[int]] = []
    for r in rows.tolist():
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return runs


def build_dictionary(index: ConceptIndex | str | Path, out: str | Path | None = None, *,
                     rows: Sequence[int] | None = None, **params) -> ConceptDictionary:
    """Build a dictionary from an index (``params``: :class:`DictionaryBuilder`'s) and save it to ``out``."""
    dictionary = DictionaryBuilder(**params).fit(index, rows)
    if out is not None:
        dictionary.save(out)
    return dictionary
