"""What a concept is: its strongest reference images, cropped to its region, and suggested names.

Ranking a neuron group (a concept spans many layers, so per-channel top-k lists cannot rank it)
-----------------------------------------------------------------------------------------------
Reference image ``i`` scores ``sum_p w_p r_p(i) / sum_q |r_q(i)|`` (:meth:`ConceptIndex.scores`):
the share of ``i``'s decision that flows through the group, each member weighted by its
relevance on the explained image (``w_p = max(r_p, 0) / sum``; ``|r_p|`` if no member is
positive). Why weighted and not a plain sum: a concept is a per-image cut of a continuum of
neurons, and its weakest members (many, shallow, near zero on the explained image) carry
little of it; an equal-weight sum lets an image rank high through neurons that hardly made
the concept. The explained image itself (same preprocessed pixels) is excluded.

Concept map on a reference (no second LRP pass)
-----------------------------------------------
An explanation's default map is the sum of its members' own-layer relevance maps in input
geometry (:func:`~conceptree.concepts.layer_maps.layer_group_maps`). On a reference image the
index has, per member, its relevance ``r_p(i)`` and the cell of its own-layer peak on a 56×56
grid over the input; :func:`peak_map` puts each member's positive relevance at its peak,
spread over its layer's cell (a 7×7 layer's neuron covers 8×8 grid cells), and sums. With
``exact=True`` the members' full own-layer maps are recomputed from the reference's own LRP
pass instead (one pass per distinct reference image: about 30 s per explanation here); the
agreement of the two is measured in ``docs/results/references.md``.

Crop rule (relevance-seeded, deterministic)
-------------------------------------------
On the concept's map on the reference, positive part, area-pooled onto the same 56×56 grid
(4 pixels at 224) and smoothed with a Gaussian of ``CROP_SIGMA`` = 2 cells (:func:`region_grid`:
a region's seed is where its relevance mass is, not one pixel; chosen by the agreement of
stored-peak and exact maps, ``docs/results/references.md``):
``seed`` = the first maximum (row-major), shown at its cell's centre; ``region`` = the 4-connected
component of ``{map >= CROP_THRESHOLD · max}`` holding the seed; ``box`` = the region's
bounding box grown by ``CROP_MARGIN`` of the image side on each side and to at least
``CROP_MIN_SIDE`` of it around its centre, shifted to lie inside the image. A map with no
positive value gives the whole image and ``empty=True``.

Names (only where a test with power passes)
-------------------------------------------
With a :class:`~conceptree.index.specificity.SpecificityTest` (the explainer's default), a concept is
named by its best family's word (a part, a colour, ``"<class>-specific"``) only when what its
references show *beyond the model's own relevance on them* beats layer-matched random groups
(:func:`specific_name`; the rule, its planted positive control and false-positive rate:
``docs/results/what.md``). The test's statistic and p-value are in the evidence (``specificity``).

Without one, the earlier, untested description: over the top references, the classes they belong to
(label where the set has one, else the prediction) against each class's share of the set; the part at
the seed and the region's colour (:mod:`conceptree.index.evidence`) against their chance rates. A word
is suggested when at least half the references agree and that fraction is at least twice its mean
chance rate (``NAME_MIN_FRACTION``, ``NAME_MIN_LIFT``); a class when at least half the references are
of it and that is ``CLASS_MIN_LIFT`` times its share of the set. This description is kept in the
evidence either way.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .evidence import COLOURS, colour_grid, part_label_map
from .specificity import SpecificityResult, SpecificityTest, ranking_weights
from .store import PEAK_GRID, ConceptIndex

#: references shown per concept (one place for the default).
DEFAULT_REFERENCES = 8
CROP_SIGMA = 2.0  # grid cells (8 px at 224)
CROP_THRESHOLD = 0.5
CROP_MARGIN = 0.08
CROP_MIN_SIDE = 0.25
NAME_MIN_FRACTION = 0.5
NAME_MIN_LIFT = 2.0
CLASS_MIN_LIFT = 5.0


@dataclass
class Reference:
    """One reference image of a concept.

    Attributes
    ----------
    row : int
        The image's row in the index.
    file : str
        Its path relative to the index's root.
    class_name : str or None
        Its label's name where the set has labels, else its predicted class's.
    score : float
        The concept's relevance-weighted share on it (module docstring).
    box : tuple[int, int, int, int]
        Crop ``(x0, y0, x1, y1)`` in the model-input pixels of that image (x1, y1 exclusive).
    seed : tuple[int, int]
        ``(x, y)`` of the map's maximum, inside ``box``.
    empty : bool
        The concept had no positive relevance on this image (box = whole image).
    part, colour : str or None
        The part at the seed (sets with keypoints) and the region's dominant colour.
    crop : np.ndarray
        The cropped model input as displayed, ``(h, w, 3)`` uint8.
    """

    row: int
    file: str
    class_name: str | None
    score: float
    box: tuple[int, int, int, int]
    seed: tuple[int, int]
    empty: bool = False
    part: str | None = None
    colour: str | None = None
    crop: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("crop")
        data["box"], data["seed"] = list(self.box), list(self.seed)
        return data

    @classmethod
    def from_dict(cls, data: dict, crop: np.ndarray | None = None) -> Reference:
        return cls(**{**data, "box": tuple(data["box"]), "seed": tuple(data["seed"]), "crop": crop})


@dataclass
class ConceptReferences:
    """References of one concept and the names they suggest.

    Attributes
    ----------
    rank : int
        The concept's rank in its explanation.
    references : list[Reference]
        Best first.
    name : str or None
        The suggested name (None: no word beats chance under the rule of the module docstring).
    evidence : dict
        ``classes`` (top classes: count, share of the references, share of the set, lift),
        ``part`` and ``colour`` (word, fraction of the references, mean chance, counts).
    """

    rank: int
    references: list[Reference]
    name: str | None
    evidence: dict

    def to_dict(self) -> dict:
        return {"rank": self.rank, "name": self.name, "evidence": self.evidence,
                "references": [r.to_dict() for r in self.references]}

    @classmethod
    def from_dict(cls, data: dict, crops: Sequence[np.ndarray | None] | None = None) -> ConceptReferences:
        crops = crops or [None] * len(data["references"])
        return cls(int(data["rank"]), [Reference.from_dict(r, c) for r, c in zip(data["references"], crops)],
                   data.get("name"), data.get("evidence", {}))


def group_weights(index: ConceptIndex, neurons: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Columns of a group's neurons (objects with ``layer``, ``channel``, ``relevance``) and
    their ranking weights (module docstring), ``(columns, weights)`` each ``(m,)``."""
    columns = np.array([index.column(n.layer, int(n.channel)) for n in neurons], dtype=np.int64)
    return columns, ranking_weights(np.array([float(n.relevance) for n in neurons], dtype=np.float64))


def region_grid(concept_map: np.ndarray, grid: tuple[int, int] = PEAK_GRID) -> np.ndarray:
    """The map the crop rule reads: positive part, area-pooled onto ``grid`` (no-op when the map
    is already that size) and smoothed with a Gaussian of ``CROP_SIGMA`` cells, ``grid`` float64."""
    import torch

    from ..concepts.layer_maps import to_grid

    positive = np.clip(np.nan_to_num(np.asarray(concept_map, dtype=np.float32)), 0.0, None)
    if positive.shape != tuple(grid):
        positive = to_grid(torch.from_numpy(positive)[None], grid)[0].numpy()
    return ndimage.gaussian_filter(positive.astype(np.float64), CROP_SIGMA, mode="constant")


def crop_box(concept_map: np.ndarray, grid: tuple[int, int] = PEAK_GRID, size: tuple[int, int] | None = None
             ) -> tuple[tuple[int, int, int, int], tuple[int, int], np.ndarray, bool]:
    """The crop rule of the module docstring on one ``(H, W)`` map, or on a ``grid`` map of an
    image of ``size`` ``(H, W)`` (e.g. :func:`peak_map` without upsampling).

    Returns
    -------
    box : (x0, y0, x1, y1)
        In the image's pixels.
    seed : (x, y)
        The image pixel at the centre of the seed cell.
    region : np.ndarray
        ``(H, W)`` bool, the seed's component in the image's pixels.
    empty : bool
    """
    height, width = size or concept_map.shape
    smooth = region_grid(concept_map, grid)
    gh, gw = smooth.shape
    peak = smooth.max(initial=0.0)
    if peak <= 0:
        return (0, 0, width, height), (width // 2, height // 2), np.zeros((height, width), bool), True
    sy, sx = divmod(int(np.argmax(smooth)), gw)  # first maximum, row-major
    components, _ = ndimage.label(smooth >= CROP_THRESHOLD * peak)
    cells = components == components[sy, sx]
    rows = np.minimum((np.arange(height) * gh) // height, gh - 1)
    cols = np.minimum((np.arange(width) * gw) // width, gw - 1)
    region = cells[np.ix_(rows, cols)]
    ys, xs = np.nonzero(region)
    margin = CROP_MARGIN * max(height, width)
    x0, x1 = xs.min() - margin, xs.max() + 1 + margin
    y0, y1 = ys.min() - margin, ys.max() + 1 + margin
    min_w, min_h = CROP_MIN_SIDE * width, CROP_MIN_SIDE * height
    if x1 - x0 < min_w:
        cx = (x0 + x1) / 2
        x0, x1 = cx - min_w / 2, cx + min_w / 2
    if y1 - y0 < min_h:
        cy = (y0 + y1) / 2
        y0, y1 = cy - min_h / 2, cy + min_h / 2

    def fit(lo: float, hi: float, size: int) -> tuple[int, int]:
        lo, hi = round(lo), round(hi)
        if hi - lo >= size:
            return 0, size
        shift = max(0, -lo) - max(0, hi - size)
        return lo + shift, hi + shift

    bx0, bx1 = fit(x0, x1, width)
    by0, by1 = fit(y0, y1, height)
    seed = (min(int((sx + 0.5) * width / gw), width - 1), min(int((sy + 0.5) * height / gh), height - 1))
    return (bx0, by0, bx1, by1), seed, region, False


def peak_map(index: ConceptIndex, row: int, columns: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A neuron group's map on index image ``row`` from the stored peaks, ``(56, 56)`` float32.

    Each member's positive relevance ``max(r_p(row), 0)`` is placed at its peak cell and spread
    uniformly over its layer's cell size on the peak grid. Sums to the members' positive
    relevance, up to what a spread loses over the image border. With ``size`` the grid is
    repeated up to ``(H, W)`` pixels (each cell covers ``H / 56`` of them).
    """
    gh, gw = index.peak_grid
    columns = np.asarray(columns, dtype=np.int64)
    relevance = np.clip(np.asarray(index.relevance[row, columns], dtype=np.float64), 0.0, None)
    cells = np.asarray(index.peaks[row, columns], dtype=np.int64)
    sides = index.cell_size(columns)
    grid = np.zeros((gh, gw), dtype=np.float64)
    for side in np.unique(sides):
        chosen = sides == side
        mass = np.bincount(cells[chosen], weights=relevance[chosen], minlength=gh * gw)[: gh * gw].reshape(gh, gw)
        grid += ndimage.uniform_filter(mass, size=int(side), mode="constant") if side > 1 else mass
    if size is None:
        return grid.astype(np.float32)
    height, width = size
    rows = np.minimum((np.arange(height) * gh) // height, gh - 1)
    cols = np.minimum((np.arange(width) * gw) // width, gw - 1)
    return grid[np.ix_(rows, cols)].astype(np.float32)


class ReferenceFinder:
    """Finds the references of concepts in an index with an explainer's engine.

    Parameters
    ----------
    engine : CRPEngine
        The explainer's engine (same model, rules and layers as the index: checked).
    preprocessing : Preprocessing
        How the index's images become inputs (the index's own, checked by the explainer).
    index : ConceptIndex
    n : int
        References per concept.
    batch_size : int
        Reference images per LRP batch (``exact=True``).
    exact : bool
        Recompute each reference's exact concept map from its own LRP pass instead of drawing it
        from the stored peaks (module docstring).
    """

    def __init__(self, engine, preprocessing, index: ConceptIndex, *, n: int = DEFAULT_REFERENCES, batch_size: int = 4,
                 exact: bool = False, specificity: SpecificityTest | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"the number of references must be a positive int, got {n!r}")
        self.engine, self.preprocessing, self.index, self.n, self.batch_size = engine, preprocessing, index, n, batch_size
        self.exact = exact
        self.specificity = specificity

    def rank(self, concepts: Sequence, exclude_row: int | None = None) -> list[list[tuple[int, float]]]:
        """Top ``(row, score)`` of each concept (objects with ``neurons``)."""
        exclude = {exclude_row} if exclude_row is not None else None
        return [self.index.top(*group_weights(self.index, c.neurons), self.n, exclude) for c in concepts]

    def load(self, row: int, model_input: bool = True):
        """The model input ``(1, C, H, W)`` (None unless ``model_input``) and displayed picture of
        index row ``row`` (its file must be unchanged since indexing)."""
        from ..models.loading import load_image, preprocess, resize_for_model

        image = self.index.images[row]
        path = self.index.image_path(row)
        try:
            data = path.read_bytes()
        except OSError:
            raise InputError(f"reference image {path} is missing; rebuild the index or restore the file") from None
        if image.file_sha1 and hashlib.sha1(data).hexdigest() != image.file_sha1:
            raise InputError(f"reference image {path} changed since the index was built; rebuild the index")
        picture, _ = load_image(str(path))
        if not model_input:
            return None, resize_for_model(picture.convert("RGB"), self.preprocessing)
        return preprocess(picture.convert("RGB"), self.preprocessing)

    def maps(self, rows: Sequence[int], groups_by_row: dict[int, list[dict]]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """For each row: its displayed picture and the maps of the groups it is a reference of,
        ``{row: (picture (H, W, 3) uint8, maps (g, H, W) float32)}`` (one batched LRP pass)."""
        import torch

        from ..concepts.layer_maps import layer_group_maps

        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        rows = list(rows)
        for first in range(0, len(rows), self.batch_size):
            chunk = rows[first : first + self.batch_size]
            loaded = [self.load(row) for row in chunk]
            x = torch.cat([t for t, _ in loaded])
            targets = [self.index.images[row].target for row in chunk]
            batch = self.engine.attribute_batch(x, targets, keep_maps=True)
            for j, row in enumerate(chunk):
                shown = loaded[j][1]
                out[row] = (shown, layer_group_maps(batch.image(j), groups_by_row[row], tuple(shown.shape[:2])))
        return out

    def find(self, concepts: Sequence, exclude_row: int | None = None,
             ranked: list[list[tuple[int, float]]] | None = None,
             photo_relevance: np.ndarray | None = None) -> list[ConceptReferences]:
        """References and names of each concept (objects with ``rank``, ``neurons`` and ``groups()``).

        ``ranked``: each concept's ``(row, score)`` list found earlier (a concept dictionary's
        stored references: a lookup instead of :meth:`rank`); ``exclude_row`` is left out of it
        and it is cut to ``n``. ``photo_relevance`` ``(index neurons,)``: every index neuron's relevance
        on the explained photo (the specificity test weights random groups by it; uniform without).
        With a :class:`~conceptree.index.specificity.SpecificityTest`, a concept is named only when it
        passes it (:func:`specific_name`).
        """
        if ranked is None:
            ranked = self.rank(concepts, exclude_row)
        else:
            if len(ranked) != len(concepts):
                raise InputError(f"{len(ranked)} reference lists for {len(concepts)} concepts")
            ranked = [[(int(r), float(v)) for r, v in top if r != exclude_row][: self.n] for top in ranked]
        concepts_by_row: dict[int, list[int]] = {}  # the concepts each reference image serves, in order
        slot: dict[tuple[int, int], int] = {}
        for c, top in enumerate(ranked):
            for row, _ in top:
                slot[(c, row)] = len(concepts_by_row.setdefault(row, []))
                concepts_by_row[row].append(c)
        if self.exact:
            maps = self.maps(sorted(concepts_by_row),
                             {row: [concepts[c].groups() for c in cs] for row, cs in concepts_by_row.items()})
        else:  # grid maps (56 x 56) from the stored peaks; the crop rule reads them at that grid
            columns = [group_weights(self.index, concept.neurons)[0] for concept in concepts]
            maps = {row: (self.load(row, model_input=False)[1],
                          np.stack([peak_map(self.index, row, columns[c]) for c in cs]))
                    for row, cs in sorted(concepts_by_row.items())}
        labels_cache: dict[int, tuple[np.ndarray, list[str]] | None] = {}
        colours_cache: dict[int, np.ndarray] = {}
        gh, gw = self.index.peak_grid
        result = []
        for c, top in enumerate(ranked):
            refs, part_maps, colour_hists = [], [], []
            for row, score in top:
                shown, group_maps = maps[row]
                height, width = shown.shape[:2]
                box, seed, region, empty = crop_box(group_maps[slot[(c, row)]], size=(height, width))
                # parts and colours are read per grid cell, at the pixel a seed is shown at
                ys = np.minimum(((np.arange(gh) + 0.5) * height / gh).astype(int), height - 1)
                xs = np.minimum(((np.arange(gw) + 0.5) * width / gw).astype(int), width - 1)
                if row not in labels_cache:
                    annotation = self.index.images[row].annotation
                    labels_cache[row] = (part_label_map(annotation, self.preprocessing, (height, width), (ys, xs))
                                         if annotation and annotation.get("keypoints") else None)
                    colours_cache[row] = colour_grid(shown, (gh, gw))
                part = colour = None
                if not empty:
                    words = colours_cache[row][region[np.ix_(ys, xs)]]
                    colour = COLOURS[int(np.bincount(words, minlength=len(COLOURS)).argmax())]
                    colour_hists.append(np.bincount(colours_cache[row].ravel(), minlength=len(COLOURS))
                                        / colours_cache[row].size)
                    if labels_cache[row] is not None:
                        label_map, names = labels_cache[row]
                        cell_y = min(int(seed[1] * gh / height), gh - 1)
                        cell_x = min(int(seed[0] * gw / width), gw - 1)
                        at = int(label_map[cell_y, cell_x])
                        part = names[at] if at >= 0 else "none"
                        part_maps.append(label_map)
                x0, y0, x1, y1 = box
                refs.append(Reference(row, self.index.images[row].path, self.index.class_name(self.index.image_class(row)),
                                      score, box, seed, empty, part, colour, shown[y0:y1, x0:x1].copy()))
            name, evidence = suggest_name(self.index, refs, part_maps, colour_hists)
            result.append(ConceptReferences(concepts[c].rank, refs, name, evidence))
        if self.specificity is not None and concepts:
            columns = [group_weights(self.index, concept.neurons)[0] for concept in concepts]
            tests = self.specificity.test(columns, None if photo_relevance is None else [photo_relevance] * len(columns),
                                          exclude=[exclude_row] * len(columns))
            for refs_c, test in zip(result, tests):
                refs_c.evidence["specificity"] = test.to_dict()
                refs_c.name = specific_name(test)
        return result


def specific_name(result: SpecificityResult) -> str | None:
    """The name a concept gets from its specificity test: its best family's word (a part, a colour, or
    ``"<class>-specific"``), only when it passes; None otherwise."""
    if not result.specific or result.word is None:
        return None
    return f"{result.word}-specific" if result.family == "class" else result.word


def _word_evidence(words: list[str | None], chance: dict[str, float], n: int) -> dict | None:
    counted = Counter(w for w in words if w is not None and w != "none")
    if not counted:
        return None
    word, count = sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    fraction = count / n
    rate = chance.get(word, 0.0)
    return {"word": word, "fraction": fraction, "chance": rate, "lift": fraction / rate if rate > 0 else None,
            "counts": dict(counted), "suggested": bool(fraction >= NAME_MIN_FRACTION and rate > 0
                                                      and fraction >= NAME_MIN_LIFT * rate)}


def suggest_name(index: ConceptIndex, refs: list[Reference], part_maps: list[np.ndarray],
                 colour_hists: list[np.ndarray]) -> tuple[str | None, dict]:
    """The suggested name and its evidence (rule in the module docstring).

    ``part_maps``: the part label map of each reference with keypoints and a non-empty region;
    ``colour_hists``: each non-empty reference's whole-image share of every colour word.
    """
    n = len(refs)
    evidence: dict = {"n": n}
    if n == 0:
        return None, evidence
    # classes against their share of the set
    set_classes = Counter(index.image_class(i) for i in range(len(index)) if index.images[i].ok)
    total = sum(set_classes.values())
    counts = Counter(index.image_class(r.row) for r in refs)
    classes = []
    for cls, count in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:3]:
        base = set_classes.get(cls, 0) / total if total else 0.0
        classes.append({"class": index.class_name(cls), "count": count, "share": count / n, "share_of_set": base,
                        "lift": (count / n) / base if base > 0 else None})
    evidence["classes"] = classes
    # parts: chance = mean share of input pixels in each part over the references with keypoints
    part = None
    annotated = [r for r in refs if r.part is not None]
    if annotated:
        from ..datasets.cub_parts import REGIONS

        names = list(REGIONS)
        shares = np.zeros(len(names))
        for label_map in part_maps:
            shares += np.bincount(label_map[label_map >= 0].ravel(), minlength=len(names))[: len(names)] / label_map.size
        chance = {name: float(shares[i] / len(part_maps)) for i, name in enumerate(names)}
        part = _word_evidence([r.part for r in annotated], chance, len(annotated))
        if part is not None:
            part["annotated"] = len(annotated)
    evidence["part"] = part
    # colour: chance = mean share of the whole image's pixels of that colour word
    colour = None
    coloured = [r for r in refs if r.colour is not None]
    if coloured:
        counted = Counter(r.colour for r in coloured)
        word = sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        rate = float(np.mean([h[COLOURS.index(word)] for h in colour_hists])) if colour_hists else 0.0
        colour = _word_evidence([r.colour for r in coloured], {word: rate}, len(coloured))
    evidence["colour"] = colour
    words = [w["word"] for w in (colour, part) if w is not None and w["suggested"]]
    name = " ".join(words) if words else None
    top = classes[0] if classes else None
    if name is None and top and top["share"] >= NAME_MIN_FRACTION and (top["lift"] or 0) >= CLASS_MIN_LIFT:
        name = f"{top['class']}-specific"
    return name, evidence
