"""What a neuron group shows *beyond the model's own relevance*: a part, a colour, a class, tested
against random groups of the same layers.

Why not consistency
-------------------
The previous control counted how many of a group's references showed one same part at the seed of
its map. Any large group's map lands where the model's relevance is (head, wing), so random groups
scored 0.33 against 0.12 for uniform seeds, and a group that *differs* from the model's overall
relevance was not rewarded (``docs/results/references.md``). The statistic here subtracts the model's
own map on the same reference images, so what is left is what the group adds.

The statistic (rule fixed before the first run: ``docs/results/what.md``)
-----------------------------------------------------------------------
*References* ``R(G)``: the ``top`` eligible index rows ranked by :meth:`ConceptIndex.scores` with the
group's weights (the product's ranking). On reference ``i``:

- the group's map is its members' positive relevance ``r_p(i)+`` at their stored peak cells, spread
  over their layer's cell (:func:`~conceptree.index.references.peak_map`); the *model's map* is the
  same over every neuron of the index;
- for a word ``w`` of a spatial family (a CUB part region; a colour word of the cell's mean colour,
  :mod:`conceptree.index.evidence`) with cells ``A_w(i)``: ``g_w(i)`` = the share of the group's
  map in ``A_w(i)``, ``m_w(i)`` = the share of the model's map there.

Per family ``f``: ``Δ_w = mean over R(G) of g_w(i) − m_w(i)`` (rows with that family's evidence:
parts need keypoints) and ``T_f = max_w Δ_w``, its word the argmax. The class family: ``Δ_z`` = the
share of ``R(G)`` of class ``z`` − the share of class ``z`` among the eligible rows.

*Null*: ``n_random`` groups with the same number of members in each layer, drawn uniformly among that
layer's channels, weighted as the group is (their own relevance on the explained photo, or uniform),
ranked and scored the same way. ``p_f = (1 + #{T_f(random) >= T_f}) / (1 + n_random)``.

*Several families*: the decision reads ``min_f p_f``; random groups get the same best-of (every group's
``p_f`` among all ``n_random + 1`` groups but itself, then its ``min_f``), and
``p = (1 + #{minp(random) <= minp}) / (1 + n_random)``. The group is *specific* when
``p < alpha``; its name is the word of the family with the smallest ``p_f`` (ties: parts, colours,
classes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, sparse

from ..errors import InputError
from .store import ConceptIndex

#: the decision's level and the default number of random groups
ALPHA = 0.05
N_RANDOM = 99
#: references per group for the statistic
TOP = 20
#: spatial families first: the tie order of the name
FAMILIES = ("part", "colour", "class")
#: the cell evidence's file in an index folder
EVIDENCE_FILE = "evidence.npz"


@dataclass
class CellEvidence:
    """What each cell of the index's peak grid shows on each index row.

    Attributes
    ----------
    words : dict[str, np.ndarray]
        Spatial family -> ``(rows, cells)`` int8: the word index of each cell (``-1``: none, e.g.
        outside every part's disk).
    has : dict[str, np.ndarray]
        Spatial family -> ``(rows,)`` bool: rows with that evidence (parts need keypoints).
    vocabulary : dict[str, list[str]]
        Family -> its words (``"class"`` included).
    classes : np.ndarray
        ``(rows,)`` int: the row's class index into ``vocabulary["class"]`` (``-1``: unknown).
    """

    words: dict[str, np.ndarray]
    has: dict[str, np.ndarray]
    vocabulary: dict[str, list[str]]
    classes: np.ndarray

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays: dict[str, Any] = {"classes": self.classes}
        for family, words in self.words.items():
            arrays[f"words_{family}"] = words
            arrays[f"has_{family}"] = self.has[family]
        for family, names in self.vocabulary.items():
            arrays[f"vocabulary_{family}"] = np.array(names, dtype=str)
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CellEvidence:
        with np.load(path) as data:
            families = [k.removeprefix("words_") for k in data.files if k.startswith("words_")]
            return cls(words={f: data[f"words_{f}"] for f in families}, has={f: data[f"has_{f}"] for f in families},
                       vocabulary={k.removeprefix("vocabulary_"): [str(w) for w in data[k]]
                                   for k in data.files if k.startswith("vocabulary_")},
                       classes=data["classes"])

    @classmethod
    def build(cls, index: ConceptIndex, load_picture: Callable[[int], np.ndarray], preprocessing: Any,
              progress: Callable[[int, int], None] | None = None) -> CellEvidence:
        """Parts (from the index's keypoint annotations), colours (from each row's displayed picture,
        ``load_picture(row) -> (H, W, 3) uint8``) and classes (the annotation's species, else the
        label, else the prediction) of every index row."""
        from ..datasets.cub_parts import REGIONS
        from .evidence import COLOURS, colour_grid, part_label_map

        gh, gw = index.peak_grid
        rows = len(index)
        parts = np.full((rows, gh * gw), -1, np.int8)
        colours = np.full((rows, gh * gw), -1, np.int8)
        has_parts = np.zeros(rows, bool)
        has_colours = np.zeros(rows, bool)
        class_of: dict[str, int] = {}
        classes = np.full(rows, -1, np.int64)
        for row, image in enumerate(index.images):
            if progress is not None:
                progress(row, rows)
            annotation = image.annotation or {}
            name = annotation.get("species") or index.class_name(index.image_class(row))
            if name is not None:
                classes[row] = class_of.setdefault(str(name), len(class_of))
            if not image.ok:
                continue
            picture = load_picture(row)
            height, width = picture.shape[:2]
            colours[row] = colour_grid(picture, (gh, gw)).ravel()
            has_colours[row] = True
            if annotation.get("keypoints"):
                ys = np.minimum(((np.arange(gh) + 0.5) * height / gh).astype(int), height - 1)
                xs = np.minimum(((np.arange(gw) + 0.5) * width / gw).astype(int), width - 1)
                labels, _ = part_label_map(annotation, preprocessing, (height, width), (ys, xs))
                parts[row] = labels.ravel()
                has_parts[row] = True
        return cls(words={"part": parts, "colour": colours}, has={"part": has_parts, "colour": has_colours},
                   vocabulary={"part": list(REGIONS), "colour": list(COLOURS), "class": list(class_of)},
                   classes=classes)


def index_evidence(index: ConceptIndex, load_picture: Callable[[int], np.ndarray], preprocessing: Any,
                   progress: Callable[[int, int], None] | None = None) -> CellEvidence:
    """The index's :class:`CellEvidence`, from ``evidence.npz`` in its folder, built (and saved there when
    the folder is writable) the first time; ``load_picture``, ``preprocessing``: as :meth:`CellEvidence.build`."""
    path = index.path / EVIDENCE_FILE
    if path.is_file():
        evidence = CellEvidence.load(path)
        if all(words.shape[0] == len(index) for words in evidence.words.values()):
            return evidence
    evidence = CellEvidence.build(index, load_picture, preprocessing, progress)
    try:
        evidence.save(path)
    except OSError:  # a read-only index: the evidence lives for this process only
        pass
    return evidence


@dataclass(frozen=True)
class FamilyResult:
    """One family's statistic for a group: its best word, ``T_f`` and ``p_f``."""

    family: str
    word: str | None
    statistic: float
    p_value: float
    random_mean: float

    def to_dict(self) -> dict:
        """JSON-ready (a statistic without evidence, nan, becomes None)."""
        return {"family": self.family, "word": self.word, "statistic": _finite(self.statistic), "p_value": self.p_value,
                "random_mean": _finite(self.random_mean)}


@dataclass(frozen=True)
class SpecificityResult:
    """The test of one group (module docstring)."""

    specific: bool
    p_value: float
    family: str | None
    word: str | None
    families: tuple[FamilyResult, ...]
    references: tuple[int, ...]
    n_random: int
    alpha: float = ALPHA

    @property
    def name(self) -> str | None:
        """The word to suggest, only when the group passes."""
        return self.word if self.specific else None

    def to_dict(self) -> dict:
        return {"specific": self.specific, "p_value": self.p_value, "family": self.family, "word": self.word,
                "name": self.name, "families": [f.to_dict() for f in self.families],
                "references": list(self.references), "n_random": self.n_random, "alpha": self.alpha}


class SpecificityTest:
    """The specificity test of the module docstring, over one index.

    Parameters
    ----------
    index : ConceptIndex
    evidence : CellEvidence
        What each cell of each row shows (:meth:`CellEvidence.build`).
    top : int
        References per group.
    n_random : int
        Random groups per tested group.
    alpha : float
        The decision's level.
    rows : sequence of int, optional
        The eligible reference rows (default: every row that did not fail), e.g. one half of the index.
    families : sequence of str
        Families tried (a subset of ``("part", "colour", "class")``).
    seed : int
        Seed of the random groups (each tested group draws from ``seed`` and its position).
    """

    def __init__(self, index: ConceptIndex, evidence: CellEvidence, *, top: int = TOP, n_random: int = N_RANDOM,
                 alpha: float = ALPHA, rows: Sequence[int] | None = None, families: Sequence[str] = FAMILIES,
                 seed: int = 0) -> None:
        unknown = set(families) - set(FAMILIES)
        if unknown:
            raise InputError(f"unknown families {sorted(unknown)}; choose among {list(FAMILIES)}")
        if not 0 < alpha < 1 or n_random < 1 or top < 1:
            raise InputError(f"need 0 < alpha < 1, n_random >= 1 and top >= 1, got {alpha}, {n_random}, {top}")
        self.index, self.evidence = index, evidence
        self.top, self.n_random, self.alpha, self.seed = top, n_random, alpha, seed
        self.families = tuple(f for f in FAMILIES if f in families)
        eligible = np.zeros(len(index), bool)
        eligible[list(rows) if rows is not None else np.arange(len(index))] = True
        self.eligible = eligible & index.ok
        sides = index.cell_size(np.arange(index.n_neurons))
        self._side_values, self._side_index = np.unique(sides, return_inverse=True)
        self._layer_of = np.empty(index.n_neurons, np.int64)
        self._layers = list(index.columns)
        for i, (offset, channels) in enumerate(index.columns.values()):
            self._layer_of[offset : offset + channels] = i
        self._eligible_block: np.ndarray | None = None
        self._row_cache: dict[int, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
        classes = evidence.classes[self.eligible]
        n_classes = len(evidence.vocabulary.get("class", []))
        known = classes[classes >= 0]
        self._class_base = np.bincount(known, minlength=n_classes) / max(1, known.size)

    # ------------------------------------------------------------------ per row
    def _row(self, row: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Positive relevance and peak cells ``(neurons,)`` of ``row``; per spatial family the word masks
        box-filtered at each cell size, ``(sides, words, cells)`` float32 (the share in each word of the
        block a neuron at that cell is spread over); the model's map's share of each word ``(words,)``.
        Cached for up to 1,024 rows (about 1.3 MB a row: an explainer with the 840-photo CUB index holds
        about 1.1 GB once every row was a reference)."""
        if row in self._row_cache:
            return self._row_cache[row]
        gh, gw = self.index.peak_grid
        relevance = np.clip(np.asarray(self.index.relevance[row], dtype=np.float64), 0.0, None)
        cells = np.asarray(self.index.peaks[row], dtype=np.int64)
        filtered: dict[str, np.ndarray] = {}
        model: dict[str, np.ndarray] = {}
        total = relevance.sum()
        # the model's mass per cell size and peak cell: its map's share of a word is then one product per size
        mass = np.zeros((len(self._side_values), gh * gw))
        np.add.at(mass, (self._side_index, cells), relevance)
        for family, words in self.evidence.words.items():
            if family not in self.families:
                continue
            n_words = len(self.evidence.vocabulary[family])
            masks = np.zeros((len(self._side_values), n_words, gh * gw), np.float32)
            if self.evidence.has[family][row]:
                labels = words[row].reshape(gh, gw)
                onehot = (labels[None] == np.arange(n_words)[:, None, None]).astype(np.float64)
                for i, side in enumerate(self._side_values):
                    if side > 1:  # the share in w of the block that peak_map spreads a cell over: the adjoint of
                        # its uniform filter (the mirrored window, for even sides), all words at once
                        spread = ndimage.uniform_filter(onehot[:, ::-1, ::-1], size=(1, int(side), int(side)),
                                                        mode="constant")[:, ::-1, ::-1]
                    else:
                        spread = onehot
                    masks[i] = spread.reshape(n_words, gh * gw)
            filtered[family] = masks
            model[family] = (np.einsum("swc,sc->w", masks, mass) / total) if total > 0 else np.zeros(n_words)
        if len(self._row_cache) >= 1024:  # an 840-photo index fits (about 1.1 GB)
            self._row_cache.pop(next(iter(self._row_cache)))
        self._row_cache[row] = (relevance, cells, filtered, model)
        return self._row_cache[row]

    def fractions(self, row: int, family: str, columns: np.ndarray) -> np.ndarray:
        """``(len(columns), words)``: the share of each neuron's spread peak on ``row`` in each word."""
        _, cells, filtered, _ = self._row(row)
        return filtered[family][self._side_index[columns], :, cells[columns]].astype(np.float64)

    def _block(self) -> np.ndarray:
        """The eligible rows' relevance ``(eligible, neurons)`` float32 (read once)."""
        if self._eligible_block is None:
            self._eligible_block = np.asarray(self.index.relevance[self.eligible], dtype=np.float32)
        return self._eligible_block

    # ------------------------------------------------------------------ statistics of many groups
    def statistics(self, members: sparse.csr_matrix, weights: sparse.csr_matrix, exclude: int | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """``T_f`` and its word for every group, and the references.

        Parameters
        ----------
        members : sparse ``(groups, neurons)``
            1 where a neuron belongs to a group.
        weights : sparse ``(groups, neurons)``
            The ranking weights (rows sum to 1).
        exclude : int, optional
            A row that is no reference (the photo the groups were found on).

        Returns
        -------
        statistic : dict
            Family -> ``(groups,)`` float ``T_f`` (nan where no reference has the family's evidence).
        word : dict
            Family -> ``(groups,)`` int, the argmax word.
        references : np.ndarray
            ``(groups, top)`` int rows (``-1`` padding when fewer rows are eligible).
        """
        n_groups = members.shape[0]
        rows_of = np.flatnonzero(self.eligible)
        raw = np.asarray(weights @ self._block().T, dtype=np.float64)  # (groups, eligible)
        total = self.index.abs_total[rows_of]
        scores = np.where(total > 0, raw / np.where(total > 0, total, 1.0), 0.0)  # (groups, eligible)
        if exclude is not None:
            scores[:, rows_of == exclude] = -np.inf
        top = min(self.top, rows_of.size - int(exclude is not None and bool((rows_of == exclude).any())))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
        references = np.full((n_groups, self.top), -1, np.int64)
        references[:, :top] = rows_of[order]
        sums = {f: np.zeros((n_groups, len(self.evidence.vocabulary[f]))) for f in self.families if f != "class"}
        counts = {f: np.zeros(n_groups) for f in sums}
        members = members.tocsr()
        for g in range(n_groups):  # one gather per (group, reference): numpy, no sparse slicing per row
            columns = members.indices[members.indptr[g] : members.indptr[g + 1]]
            sides = self._side_index[columns]
            for row in references[g, :top]:
                relevance, cells, filtered, model = self._row(int(row))
                r = relevance[columns]
                mass = r.sum()
                for family in sums:
                    if not self.evidence.has[family][row]:
                        continue
                    if mass > 0:
                        share = r @ filtered[family][sides, :, cells[columns]] / mass
                    else:  # a group silent on this row shows what the model shows
                        share = model[family]
                    sums[family][g] += share - model[family]
                    counts[family][g] += 1
        statistic: dict[str, np.ndarray] = {}
        word: dict[str, np.ndarray] = {}
        for family in sums:
            with np.errstate(invalid="ignore", divide="ignore"):
                delta = sums[family] / counts[family][:, None]
            statistic[family] = np.where(counts[family] > 0, np.nanmax(np.nan_to_num(delta, nan=-np.inf), axis=1),
                                         np.nan)
            word[family] = np.argmax(np.nan_to_num(delta, nan=-np.inf), axis=1)
        if "class" in self.families:
            classes = self.evidence.classes
            n_classes = len(self._class_base)
            delta = np.zeros((n_groups, n_classes))
            for g in range(n_groups):
                found = classes[references[g, :top]]
                found = found[found >= 0]
                if found.size:
                    delta[g] = np.bincount(found, minlength=n_classes) / found.size - self._class_base
            statistic["class"] = delta.max(axis=1) if n_classes else np.full(n_groups, np.nan)
            word["class"] = delta.argmax(axis=1) if n_classes else np.zeros(n_groups, np.int64)
        return statistic, word, references

    # ------------------------------------------------------------------ the test
    def random_groups(self, columns: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """``n_random`` groups with the same number of members in each layer as ``columns``."""
        columns = np.asarray(columns, np.int64)
        per_layer = np.bincount(self._layer_of[columns], minlength=len(self._layers))
        offsets = [self.index.columns[layer] for layer in self._layers]
        groups = []
        for _ in range(self.n_random):
            drawn = [offset + rng.choice(channels, size=count, replace=False)
                     for (offset, channels), count in zip(offsets, per_layer) if count]
            groups.append(np.concatenate(drawn) if drawn else np.zeros(0, np.int64))
        return groups

    def test(self, groups: Sequence[np.ndarray], relevance: Sequence[np.ndarray | None] | None = None,
             exclude: Sequence[int | None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[SpecificityResult]:
        """Test each group (columns of the index) against its own random groups.

        Parameters
        ----------
        groups : sequence of ``(m,)`` int arrays
            Each group's index columns.
        relevance : sequence of ``(neurons,)`` arrays or None, optional
            Per group, the relevance of every index neuron on the photo the group was found on: the
            group's and its random groups' ranking weights are their members' positive part of it
            (as the product ranks a concept's references). None: uniform weights.
        exclude : sequence of int or None, optional
            Per group, an index row that is none of its or its random groups' references (its photo).
        """
        if relevance is not None and len(relevance) != len(groups):
            raise InputError(f"{len(relevance)} relevance vectors for {len(groups)} groups")
        if exclude is not None and len(exclude) != len(groups):
            raise InputError(f"{len(exclude)} excluded rows for {len(groups)} groups")
        results = []
        for g, columns in enumerate(groups):
            if progress is not None:
                progress(g, len(groups))
            columns = np.unique(np.asarray(columns, np.int64))
            if columns.size == 0:
                raise InputError(f"group {g} has no neurons")
            rng = np.random.default_rng([self.seed, g])
            everyone = [columns, *self.random_groups(columns, rng)]
            photo = relevance[g] if relevance is not None else None
            stats, words, refs = self.statistics(*self._matrices(everyone, photo),
                                                 exclude=exclude[g] if exclude is not None else None)
            results.append(self._decide(stats, words, refs))
        return results

    def _matrices(self, groups: list[np.ndarray], photo: np.ndarray | None) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        n = self.index.n_neurons
        rows = np.concatenate([np.full(len(c), i) for i, c in enumerate(groups)])
        cols = np.concatenate(groups)
        members = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(groups), n))
        if photo is None:
            values = np.concatenate([np.full(len(c), 1.0 / len(c)) for c in groups])
        else:
            photo = np.asarray(photo, np.float64)
            values = np.concatenate([ranking_weights(photo[c]) for c in groups])
        return members, sparse.csr_matrix((values, (rows, cols)), shape=(len(groups), n))

    def _decide(self, stats: dict[str, np.ndarray], words: dict[str, np.ndarray], refs: np.ndarray) -> SpecificityResult:
        """Index 0 is the tested group, 1.. its random groups (module docstring)."""
        n = self.n_random
        p_family: dict[str, np.ndarray] = {}
        for family in self.families:
            t = stats[family]
            if np.isnan(t[0]):
                continue
            t = np.nan_to_num(t, nan=-np.inf)
            # every group's p_f among all n + 1 groups but itself: the tested group and its random groups are
            # treated alike, so under the null the tested group's rank below is uniform
            greater = (t[None, :] >= t[:, None]).sum(1) - 1
            p_family[family] = (1 + greater) / (1 + n)
        if not p_family:
            return SpecificityResult(False, 1.0, None, None, (), tuple(int(r) for r in refs[0] if r >= 0), n, self.alpha)
        min_p = np.min(np.stack(list(p_family.values())), axis=0)  # the best-of, for every group alike
        p = float((1 + (min_p[1:] <= min_p[0]).sum()) / (1 + n))
        best = min(p_family, key=lambda f: (p_family[f][0], self.families.index(f)))
        families = tuple(
            FamilyResult(f, self.evidence.vocabulary[f][int(words[f][0])] if f in p_family else None,
                         float(stats[f][0]), float(p_family[f][0]) if f in p_family else 1.0,
                         float(np.nanmean(stats[f][1:])) if np.isfinite(stats[f][1:]).any() else float("nan"))
            for f in self.families)
        word = self.evidence.vocabulary[best][int(words[best][0])]
        return SpecificityResult(p < self.alpha, p, best, word, families,
                                 tuple(int(r) for r in refs[0] if r >= 0), n, self.alpha)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def ranking_weights(relevance: np.ndarray) -> np.ndarray:
    """The product's ranking weights of a group from its members' relevance on the photo, ``(m,)``:
    the positive part normalised (``|r_p|`` if no member is positive, uniform if all are zero)."""
    w = np.clip(relevance, 0.0, None)
    if w.sum() <= 0:
        w = np.abs(relevance)
    if w.sum() <= 0:
        w = np.ones_like(relevance)
    return w / w.sum()
