"""A concept atlas across the images of one class: which concepts recur, their neuron cores,
and where they sit in each image.

**Matching.** Two concepts (of two images) are compared by their neuron groups, weighted by
relevance: each member's weight is its share of the concept's ``sum |r_p|``, and the overlap
is ``sum over shared neurons of min(w_A, w_B)`` (a weighted Jaccard in [0, 1]). Weighting
by relevance makes the few neurons that carry a concept count more than its many weak
members, and normalising per concept makes the overlap independent of each image's total
relevance. All concepts of the class are linked by average linkage on ``1 - overlap``, and
the tree is cut at ``1 - link`` (default ``link`` = 0.25: the mean weighted overlap of a
group's occurrences is at least a quarter); a group keeps at most one occurrence per image
(the most relevant one).

**Recurring** groups occur in at least ``min_fraction`` of the images (default 0.5); the rest
are listed as rare. A recurring concept's **core** is the set of neurons that are members in
at least half of its occurrences. The core is traced on every image of the class with the
explainer's engine (as ``compare`` does: its relevance there and its map), the images are
ranked by that relevance, and the strongest region of each map (the smallest set of pixels
holding a quarter of its positive relevance; of its negative relevance for a core that speaks
against the class) is cropped.

With part keypoints (input coordinates), each recurring concept gets a ``consistency``: the
part whose keypoint lies most often inside the strongest region of its occurrences (the
smallest set of pixels holding ``region_mass`` = 25 % of the core's positive relevance), the
fraction of occurrences where it does, its chance level (the mean area of those regions: the
probability that a keypoint falls into a region of that size placed at random) and the mean
fraction of the visible parts inside the region (a region that holds every part is not a
part concept, however consistent).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..explainer import ConceptExplainer
from ..explanation import Explanation

DEFAULT_LINK = 0.25
DEFAULT_MIN_FRACTION = 0.5
#: share of a traced core's positive relevance that defines its "strongest region" (tight, so
#: that a region can single out a part; half of the mass covers most of a bird).
DEFAULT_REGION_MASS = 0.25


@dataclass
class Occurrence:
    """A recurring concept in one image: its own concept there and the traced core."""

    image: str
    folder: str
    concept_rank: int
    overlap_with_core: float
    core_relevance: float
    core_share: float
    box: list[int] | None = None  # strongest region's bounding box (x0, y0, x1, y1), input pixels
    region_area: float = 0.0  # fraction of the image in the strongest region
    parts_inside: list[str] = field(default_factory=list)
    parts_visible: int = 0


@dataclass
class AtlasConcept:
    """A group of matching concepts across images."""

    id: int
    recurring: bool
    frequency: float
    n_images: int
    core: list[tuple[str, int]]
    core_layers: dict[str, int]
    occurrences: list[Occurrence]
    consistency: dict | None = None


@dataclass
class Atlas:
    """The atlas of one class."""

    target: str
    n_images: int
    link: float
    min_fraction: float
    concepts: list[AtlasConcept]

    def to_dict(self) -> dict:
        return {"target": self.target, "n_images": self.n_images, "link": self.link, "min_fraction": self.min_fraction,
                "recurring": [asdict(c) for c in self.concepts if c.recurring],
                "rare": [{"id": c.id, "n_images": c.n_images, "frequency": c.frequency,
                          "images": [o.image for o in c.occurrences]} for c in self.concepts if not c.recurring]}

    def _repr_html_(self) -> str:
        """A notebook's view: one row per recurring concept (text only; crops are in ``atlas.html``,
        :func:`write_atlas`), scoped like :mod:`conceptree.render.notebook`'s views."""
        from ..render.notebook import WRAPPER

        esc = html.escape
        rows = []
        for c in self.concepts:
            if not c.recurring:
                continue
            layers = ", ".join(f"{esc(k)} ({v})" for k, v in sorted(c.core_layers.items(), key=lambda kv: -kv[1])[:3])
            cons = c.consistency or {}
            part = (f"{esc(str(cons['part']))} {100 * cons['consistency']:.0f}% (chance {100 * cons['chance']:.0f}%)"
                    if cons.get("part") else "–")
            rows.append(f"<tr><td>A{c.id}</td><td>{c.n_images}/{self.n_images} ({100 * c.frequency:.0f}%)</td>"
                        f"<td>{len(c.core)}</td><td>{layers}</td><td>{part}</td></tr>")
        rare = sum(1 for c in self.concepts if not c.recurring)
        return (f"<div class='{WRAPPER}'><style>.{WRAPPER} td,.{WRAPPER} th{{padding:0 8px 0 0;text-align:left;"
                f"font:12px sans-serif}}</style><b>Atlas of {esc(self.target)}</b>: {len(rows)} recurring concepts "
                f"over {self.n_images} images ({rare} rare)<table><tr><th>concept</th><th>images</th><th>core neurons</th>"
                f"<th>main layers</th><th>part at its region</th></tr>{''.join(rows)}</table></div>")


def _weights(concept) -> dict[tuple[str, int], float]:
    total = sum(abs(n.relevance) for n in concept.neurons) or 1.0
    return {(n.layer, n.channel): abs(n.relevance) / total for n in concept.neurons}


def weighted_overlap(a: dict, b: dict) -> float:
    """``sum_shared min(w_a, w_b)`` of two relevance-weighted neuron groups (each summing to 1)."""
    small, large = (a, b) if len(a) < len(b) else (b, a)
    return float(sum(min(w, large[n]) for n, w in small.items() if n in large))


def match_concepts(explanations: list[Explanation], link: float = DEFAULT_LINK) -> list[list[tuple[int, int]]]:
    """Groups of matching concepts: lists of ``(image index, concept index)``, one per image at most."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    items = [(i, j) for i, e in enumerate(explanations) for j in range(len(e.concepts.concepts))]
    weights = [_weights(explanations[i].concepts.concepts[j]) for i, j in items]
    n = len(items)
    if n == 0:
        return []
    if n == 1:
        return [items]
    dist = np.ones((n, n))
    for a in range(n):
        dist[a, a] = 0.0
        for b in range(a + 1, n):
            if items[a][0] != items[b][0]:  # concepts of one image never match each other
                dist[a, b] = dist[b, a] = 1.0 - weighted_overlap(weights[a], weights[b])
    labels = fcluster(linkage(squareform(dist, checks=False), "average"), t=1.0 - link, criterion="distance")
    groups: dict[int, list[tuple[int, int]]] = {}
    for item, label in zip(items, labels):
        groups.setdefault(int(label), []).append(item)
    result = []
    for members in groups.values():
        best: dict[int, tuple[int, int]] = {}
        for i, j in members:  # one occurrence per image: its most relevant concept in the group
            if i not in best or explanations[i].concepts.concepts[j].relevance > explanations[i].concepts.concepts[best[i][1]].relevance:
                best[i] = (i, j)
        result.append(sorted(best.values()))
    return sorted(result, key=lambda g: -len(g))


def _core(explanations, members) -> list[tuple[str, int]]:
    counts = Counter(n for i, j in members for n in _weights(explanations[i].concepts.concepts[j]))
    return sorted(n for n, c in counts.items() if c >= len(members) / 2)


def _box(mask: np.ndarray) -> list[int] | None:
    from scipy.ndimage import label

    labels, count = label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def build_atlas(
    explanations: list[Explanation],
    folders: list[str],
    explainer,
    *,
    link: float = DEFAULT_LINK,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    keypoints: dict[str, dict[str, tuple[float, float]]] | None = None,
    region_mass: float = DEFAULT_REGION_MASS,
) -> tuple[Atlas, dict[int, np.ndarray]]:
    """The atlas of explanations of one class, and each recurring concept's traced maps.

    Parameters
    ----------
    explanations, folders
        The explanations (same model and target class) and their folder names.
    explainer : ConceptExplainer
        For the model: its engine traces each core on every image (no second engine).
    keypoints : dict, optional
        Image file name -> part -> ``(x, y)`` in input pixels, for ``consistency``.

    Returns
    -------
    (Atlas, maps)
        ``maps[id]``: ``(n_images, H, W)`` traced core maps of recurring concept ``id``.
    """
    from ..concepts.layer_maps import layer_group_maps
    from ..render.report import region_mask

    if not explanations:
        raise InputError("the atlas needs at least one explanation")
    if not 0 < link <= 1 or not 0 < min_fraction <= 1:
        raise InputError("link and min_fraction must be in (0, 1]")
    targets = {e.target.index for e in explanations}
    if len(targets) != 1:
        raise InputError(f"the explanations explain {len(targets)} different classes; build one atlas per class")
    if any(e.model.hash != explainer.model_info.hash for e in explanations):
        raise InputError("the explainer's model differs from the one that made the explanations (parameter hash "
                         "mismatch); pass the same model and weights")
    n_images = len(explanations)
    groups = match_concepts(explanations, link)
    concepts: list[AtlasConcept] = []
    for gid, members in enumerate(groups):
        recurring = len(members) / n_images >= min_fraction
        core = _core(explanations, members) if recurring else []
        occurrences = [Occurrence(explanations[i].image_info.file or folders[i], folders[i],
                                  explanations[i].concepts.concepts[j].rank, 0.0, 0.0, 0.0) for i, j in members]
        layers = Counter(layer for layer, _ in core)
        concepts.append(AtlasConcept(gid, recurring, len(members) / n_images, len(members), core, dict(layers),
                                     occurrences))
    recurring = [c for c in concepts if c.recurring and c.core]
    maps: dict[int, np.ndarray] = {}
    if recurring:
        engine = explainer.engine
        kind = explanations[0].options.concept_map
        per_image = []
        for e in explanations:
            attribution = engine.attribute(_input(e), e.target.index)
            core_groups = [{layer: [ch for lay, ch in c.core if lay == layer] for layer in c.core_layers} for c in recurring]
            if kind == "layer-group":
                traced = layer_group_maps(attribution, core_groups, tuple(e.image.shape[:2]))
            else:
                traced = engine.group_maps(attribution, core_groups).float().cpu().numpy()
            total = float(sum(attribution.channel_relevance(layer.name).double().sum() for layer in engine.layers))
            per_image.append((traced, total))
        for k, concept in enumerate(recurring):
            maps[concept.id] = np.stack([traced[k] for traced, _ in per_image])
            by_image = {o.folder: o for o in concept.occurrences}
            weights_core = set(concept.core)
            for i, e in enumerate(explanations):
                occ = by_image.get(folders[i])
                if occ is None:
                    continue
                own = e.concepts.concepts[occ.concept_rank - 1]
                members = {(n.layer, n.channel) for n in own.neurons}
                occ.overlap_with_core = len(members & weights_core) / max(len(weights_core), 1)
                core_map = maps[concept.id][i]
                occ.core_relevance = float(core_map.sum())
                occ.core_share = occ.core_relevance / per_image[i][1] if per_image[i][1] else 0.0
                # a core with negative relevance (it speaks against the class): the region of that
                # negative relevance, as the report does for negative concepts
                mask = region_mask(core_map if occ.core_relevance >= 0 else -core_map, region_mass)
                occ.box = _box(mask)
                occ.region_area = float(mask.mean())
                if keypoints is not None:
                    parts = keypoints.get(Path(occ.image).name, {})
                    h, w = mask.shape
                    occ.parts_inside = sorted(p for p, (x, y) in parts.items()
                                              if 0 <= int(y) < h and 0 <= int(x) < w and mask[int(y), int(x)])
                    occ.parts_visible = len(parts)
            concept.occurrences.sort(key=lambda o: -o.core_relevance)
            if keypoints is not None:
                counted = Counter(p for o in concept.occurrences for p in o.parts_inside)
                occs = concept.occurrences
                part, hits = counted.most_common(1)[0] if counted else (None, 0)
                concept.consistency = {
                    "part": part, "consistency": hits / len(occs), "parts_seen": dict(counted),
                    # a keypoint falls into a region of this area by chance with this probability
                    "chance": float(np.mean([o.region_area for o in occs])),
                    "parts_inside_fraction": float(np.mean([len(o.parts_inside) / o.parts_visible
                                                            for o in occs if o.parts_visible] or [0.0])),
                }
    concepts.sort(key=lambda c: (not c.recurring, -c.frequency))
    return Atlas(explanations[0].target_name, n_images, link, min_fraction, concepts), maps


def _input(explanation: Explanation):
    """The model input of an explanation, rebuilt from its displayed image (``preprocess`` is
    resizing, then :func:`~conceptree.models.loading.normalise` of the displayed pixels)."""
    from ..models.loading import normalise

    if explanation.preprocessing is None:
        raise InputError("an explanation made from a tensor has no preprocessing; the atlas needs image files")
    return normalise(explanation.image, explanation.preprocessing)


def write_atlas(atlas: Atlas, explanations: list[Explanation], folders: list[str], out: str | Path,
                crops_per_concept: int = 8) -> Path:
    """``atlas.json`` and a self-contained ``atlas.html`` (crops of the strongest regions) in ``out``."""
    from ..render.report import image_data_uri

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "atlas.json").write_text(json.dumps(atlas.to_dict(), indent=1))
    by_folder = dict(zip(folders, explanations))
    esc = html.escape
    rows = []
    for c in atlas.concepts:
        if not c.recurring:
            continue
        crops = []
        for o in c.occurrences[:crops_per_concept]:
            image = by_folder[o.folder].image
            x0, y0, x1, y1 = o.box or [0, 0, image.shape[1], image.shape[0]]
            pad = 8
            crop = image[max(0, y0 - pad): y1 + pad, max(0, x0 - pad): x1 + pad]
            crops.append(f"<figure><img src='{image_data_uri(crop)}' alt='crop'><figcaption>{esc(o.folder)}<br>"
                         f"share {100 * o.core_share:.1f}% · {', '.join(map(esc, o.parts_inside)) or '–'}"
                         "</figcaption></figure>")
        cons = c.consistency
        cons_text = (f"{esc(str(cons['part']))}: {100 * cons['consistency']:.0f}% of occurrences (chance "
                     f"{100 * cons['chance']:.0f}%; the region holds {100 * cons['parts_inside_fraction']:.0f}% of the "
                     "visible parts)" if cons and cons["part"] else "–")
        layers = ", ".join(f"{esc(k)} ({v})" for k, v in sorted(c.core_layers.items(), key=lambda kv: -kv[1])[:6])
        rows.append(f"<section><h2>concept {c.id}: in {c.n_images}/{atlas.n_images} images "
                    f"({100 * c.frequency:.0f}%), core of {len(c.core)} neurons</h2>"
                    f"<p class='meta'>consistency with a part keypoint: {cons_text} · core layers: {layers}</p>"
                    f"<div class='crops'>{''.join(crops)}</div></section>")
    rare = [c for c in atlas.concepts if not c.recurring]
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>conceptree atlas</title><style>"
        "body{font-family:system-ui,sans-serif;margin:16px;background:#f6f6f4}h2{font-size:15px;margin:18px 0 4px}"
        ".meta{font-size:12px;color:#555}.crops{display:flex;flex-wrap:wrap;gap:6px}"
        "figure{margin:0;background:#fff;border:1px solid #ccc;border-radius:4px;padding:4px}"
        "figure img{height:120px;display:block}figcaption{font-size:10px;color:#444;max-width:160px}"
        f"</style></head><body><h1>Concept atlas: {esc(atlas.target)} ({atlas.n_images} images)</h1>"
        f"<p class='meta'>Concepts matched across images by relevance-weighted overlap of their neurons (average "
        f"linkage, cut at mean overlap {atlas.link}); recurring = in at least {100 * atlas.min_fraction:.0f}% of the "
        "images. Crops: the strongest region of the core's map in each image, ranked by the core's relevance.</p>"
        + "".join(rows)
        + f"<h2>rare concepts ({len(rare)})</h2><p class='meta'>"
        + "; ".join(f"{c.id}: {c.n_images} image(s)" for c in rare)
        + "</p></body></html>"
    )
    (out / "atlas.html").write_text(page, encoding="utf-8")
    return out


def run_explanations(run_folder: str | Path) -> tuple[list[Explanation], list[str]]:
    """The explanations of an ``explain-many`` run (explained now or by an earlier run) and
    their folder names, in the run's order.

    Parameters
    ----------
    run_folder : path
        The ``out`` folder of :func:`~conceptree.runs.explain_many` (holding ``index.json``).

    Returns
    -------
    (explanations, folders)
        Lists of the same length; ``folders`` relative to ``run_folder``.
    """
    run = Path(run_folder)
    index_path = run / "index.json"
    try:
        records = json.loads(index_path.read_text())["images"]
        done = [r for r in records if r["status"] in ("ok", "skipped")]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{index_path} not found or unreadable; pass the --out folder of explain-many") from None
    if not done:
        raise InputError(f"no explanations in {run}; every image of the run failed (see {index_path})")
    return [Explanation.load(run / r["folder"]) for r in done], [r["folder"] for r in done]


def atlas_from_run(
    run_folder: str | Path,
    model,
    *,
    target: str | int | None = None,
    link: float = DEFAULT_LINK,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    out: str | Path | None = None,
) -> Atlas:
    """The atlas of one class of an ``explain-many`` run (what ``conceptree atlas`` computes).

    Parameters
    ----------
    run_folder : path
        The run's folder (``index.json`` and one explanation folder per image).
    model : LoadedModel or ModelSource
        The run's model (:func:`~conceptree.models.loading.load_model`): its network traces the
        cores, its class names resolve ``target``. Anything with a ``load()`` that gives one
        (a :class:`~conceptree.tasks.ModelSource`) is loaded once the run has been read.
    target : str or int, optional
        The class (index or name) whose explanations form the atlas; default: the class
        explained most often in the run (on a tie, the one explained first).
    link, min_fraction
        As :func:`build_atlas`.
    out : path, optional
        Also write ``atlas.json`` and ``atlas.html`` there (:func:`write_atlas`).

    Returns
    -------
    Atlas
    """
    explanations, folders = run_explanations(run_folder)
    if not hasattr(model, "resolve_target"):
        model = model.load()
    if target is None:
        wanted = Counter(e.target.index for e in explanations).most_common(1)[0][0]
    else:
        wanted = model.resolve_target(str(target))
    chosen = [(e, f) for e, f in zip(explanations, folders) if e.target.index == wanted]
    if not chosen:
        raise InputError(f"no explanation of class {target!r} in {run_folder}; pick a class the run explained "
                         "(its index.json) or leave the target out")
    kept, names = [e for e, _ in chosen], [f for _, f in chosen]
    explainer = ConceptExplainer.for_explanation(model.model, kept[0])
    atlas, _ = build_atlas(kept, names, explainer, link=link, min_fraction=min_fraction)
    if out is not None:
        write_atlas(atlas, kept, names, out)
    return atlas
