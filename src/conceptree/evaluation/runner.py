"""``conceptree evaluate``: every method's maps on annotated photos, scored by the IoU protocol."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..attribution.engine import CRPEngine
from ..concepts.options import PRESETS, ConceptOptions
from ..datasets.cub_parts import REGION_RULES
from ..datasets.images import AnnotatedImage
from ..errors import InputError
from ..models.loading import LoadedModel
from ..tasks import ModelSource
from .cache import (  # noqa: F401  (the cache's names stay importable from here)
    CacheChunk,
    CacheWorker,
    _input,
    build_cache,
    cache_model,
    cache_path,
    cached_input_neurons,
    check_manifest,
    input_neurons_path,
    load_input_neurons,
)
from .controls import randomise_model
from .faithfulness import FaithfulnessResult, occlusion_drops, summarise_faithfulness
from .image_maps import ImageMaps
from .methods import K_VALUES, at_key, baseline_maps, disk_maps, ours_maps, redundancy
from .protocol import (
    THRESHOLDS,
    RegionWeights,
    best_iou,
    cell_weights,
    method_score,
    nanmean_last,
    normalise_255,
    pointing,
    species_scores,
)


@dataclass(frozen=True)
class EvaluationConfig:
    """What ``conceptree evaluate`` scores besides the cached baselines.

    Parameters
    ----------
    ours : dict[str, ConceptOptions]
        Variants of our method by name (``"ours"``: the default; ``"ours-paper"``: the paper).
    ks : tuple of int
        Equal-complexity budgets K.
    region_rules : tuple of str
        Region rules every number is reported under (first = the headline).
    randomise : tuple of str
        Model-randomisation controls: the first module re-initialised (``"all"``: every one);
        ours is rerun on each randomised model at K = ``faithfulness_k``.
    faithfulness_k : int
        K of the faithfulness, redundancy and randomisation numbers.
    faithfulness_methods : tuple of str
        Methods whose faithfulness is measured (empty: every one; each costs 2K forward passes
        per photo).
    seed : int
        Seed of the random disks, the faithfulness controls and the randomisation.
    dictionaries : dict[str, str]
        Concept dictionaries of the model scored as methods, by name -> folder
        (:mod:`conceptree.dictionary`): at each K the K dictionary concepts with the largest
        relevance on the photo, each shown by its layer-group map; natively, the concise list.
    """

    ours: dict[str, ConceptOptions] = field(default_factory=lambda: {"ours": PRESETS["default"]})
    ks: tuple[int, ...] = K_VALUES
    region_rules: tuple[str, ...] = REGION_RULES
    randomise: tuple[str, ...] = ("all",)
    faithfulness_k: int = 20
    faithfulness_methods: tuple[str, ...] = ()
    seed: int = 0
    dictionaries: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.faithfulness_k not in self.ks:
            raise InputError(f"faithfulness K={self.faithfulness_k} must be one of the budgets {list(self.ks)}")
        if not self.region_rules:
            raise InputError("at least one region rule is needed")
        clash = set(self.dictionaries) & set(self.ours)
        if clash:
            raise InputError(f"dictionary name {sorted(clash)[0]!r} is also a variant of ours; give it another name")

    def to_dict(self) -> dict:
        return {
            "ours": {name: o.to_dict() for name, o in self.ours.items()}, "ks": list(self.ks),
            "region_rules": list(self.region_rules), "randomise": list(self.randomise),
            "faithfulness_k": self.faithfulness_k,
            "faithfulness_methods": list(self.faithfulness_methods), "seed": self.seed,
            "dictionaries": {name: str(path) for name, path in self.dictionaries.items()},
        }


@dataclass
class ImageScores:
    """Per method: ``iou`` ``(T, P)`` best IoU per threshold and region, ``pointing`` ``(P,)``, ``n_maps``."""

    image_id: str
    species: str
    target: int
    predicted: int
    probability: float
    iou: dict[str, np.ndarray]
    pointing: dict[str, np.ndarray]
    n_maps: dict[str, int]
    k: int


def dataset_parts(images: list) -> list[str]:
    """Region names in evaluation order: the dataset's fixed list, else every label seen."""
    fixed = getattr(images[0], "parts", None)
    if fixed:
        return list(fixed)
    return sorted({name for im in images for name in im.region_masks()})


def score_maps(maps: np.ndarray, regions: RegionWeights, thresholds: tuple[int, ...] = THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """``(iou (T, P), pointing (P,))`` of one method's maps ``(n, h, w)``."""
    maps = np.asarray(maps, dtype=np.float32)
    return best_iou(normalise_255(maps), regions, thresholds), pointing(maps, regions)


def score_method_maps(
    image: AnnotatedImage,
    method_maps: dict[str, np.ndarray],
    parts: list[str],
    cached: ImageMaps | None = None,
    k: int = 0,
    map_grid: tuple[int, int] | None = None,
    masks: dict[str, np.ndarray | None] | None = None,
) -> ImageScores:
    """Score every method's maps of one photo against its part regions.

    ``map_grid`` average-pools every method's maps to that grid first (a protocol variant
    that puts sharp pixel-level CRP maps and smooth upsampled CAMs on one footing).
    ``masks`` are the photo's region masks (computed from ``image`` when not given).
    """
    masks = image.region_masks() if masks is None else masks
    weights: dict[tuple[int, int], RegionWeights] = {}
    iou, point, n_maps = {}, {}, {}
    for method, m in method_maps.items():
        if map_grid is not None and m.shape[0] and tuple(m.shape[-2:]) != tuple(map_grid):
            pooled = F.adaptive_avg_pool2d(torch.from_numpy(np.asarray(m, np.float32))[:, None], map_grid)
            m = pooled[:, 0].numpy()
        grid = tuple(m.shape[-2:])
        if grid not in weights:
            weights[grid] = cell_weights([masks.get(r) for r in parts], (image.height, image.width), grid)
        iou[method], point[method] = score_maps(m, weights[grid])
        n_maps[method] = int(m.shape[0])
    target = cached.target if cached else (image.target or 0)
    predicted = cached.predicted if cached else -1
    probability = cached.probability if cached else float("nan")
    return ImageScores(image.image_id, image.species, target, predicted, probability, iou, point, n_maps, k)


@dataclass
class EvaluationRun:
    """Everything measured on a set of photos (input of :func:`summarise_run`).

    Attributes
    ----------
    scores : dict[str, list[ImageScores]]
        Per region rule, per photo: every method's and every ``method@K``'s scores.
    faithfulness : dict[str, list[FaithfulnessResult]]
        Per ``method@K`` (K = ``config.faithfulness_k``), per photo.
    redundancy : dict[str, list[float]]
        Per ``method@K``, per photo: mean pairwise correlation of its maps.
    ours_stats : dict[str, list[dict]]
        Per variant of ours, per photo: k, largest share, largest size fraction.
    subsets : list[str]
        Per photo: ``original`` or ``bbox_crop227`` (empty when the dataset has none).
    """

    scores: dict[str, list[ImageScores]]
    faithfulness: dict[str, list[FaithfulnessResult]]
    redundancy: dict[str, list[float]]
    ours_stats: dict[str, list[dict]]
    subsets: list[str]


def _grey(spec: LoadedModel) -> torch.Tensor:
    prep = spec.preprocessing
    mean = torch.as_tensor(prep.mean, dtype=torch.float32)
    std = torch.as_tensor(prep.std, dtype=torch.float32)
    return (128.0 / 255.0 - mean) / std


def evaluate_images(
    images: list[AnnotatedImage],
    model_args: ModelSource,
    cache_dir: str | Path,
    config: EvaluationConfig = EvaluationConfig(),
    progress: bool = True,
    map_grid: tuple[int, int] | None = None,
) -> EvaluationRun:
    """Score cached photos: baselines, controls, every variant of ours, faithfulness, randomisation."""
    cache_dir = Path(cache_dir)
    spec = model_args.load()
    model = spec.model.eval()
    engine = CRPEngine(model)
    grey = _grey(spec)
    randomised = {}
    for scope in config.randomise:
        rmodel = randomise_model(model, None if scope == "all" else scope, config.seed)
        randomised[scope] = CRPEngine(rmodel)
    parts = dataset_parts(images)
    dictionaries = _load_dictionaries(config.dictionaries, engine, spec)
    fk = config.faithfulness_k
    run = EvaluationRun({rule: [] for rule in config.region_rules}, {}, {}, {name: [] for name in config.ours}, [])
    iterator = images
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(images, desc="scoring", unit="image")
    for image in iterator:
        cached = ImageMaps.load(cache_path(cache_dir, image))
        x = _input(image, spec)
        attribution = engine.attribute(x, image.target)
        native, restricted = baseline_maps(cached, config.ks)
        disks_native, disks_restricted = disk_maps(image, config.seed, config.ks)
        native.update(disks_native)
        restricted.update(disks_restricted)
        k_main = 0
        for name, options in config.ours.items():
            neurons = (cached_input_neurons(engine, attribution, cache_dir, image, options)
                       if options.features == "input" else None)
            result = ours_maps(engine, attribution, options, config.ks, neurons)
            native[name] = result.maps
            restricted.update({at_key(name, k): m for k, m in result.at_k.items()})
            run.ours_stats[name].append({"k": result.k, "largest_share": result.largest_share,
                                         "largest_size_fraction": result.largest_size_fraction,
                                         "n_neurons": result.n_neurons})
            k_main = k_main or result.k
        for name, dictionary in dictionaries.items():
            native[name], by_k = dictionary_maps(engine, attribution, dictionary, config.ks)
            restricted.update({at_key(name, k): m for k, m in by_k.items()})
        main_options = next(iter(config.ours.values()))
        for scope, r_engine in randomised.items():
            r_attr = r_engine.attribute(x, image.target)
            result = ours_maps(r_engine, r_attr, main_options.replace(features="layer") if main_options.features == "input"
                               else main_options, (fk,))
            if fk in result.at_k:
                restricted[at_key(f"{next(iter(config.ours))}-randomised-{scope}", fk)] = result.at_k[fk]
            else:  # fewer than K active neurons: the randomised model explains with what it has
                restricted[at_key(f"{next(iter(config.ours))}-randomised-{scope}", fk)] = result.maps
        maps_all = {**native, **restricted}
        for key, maps in restricted.items():
            if not key.endswith(f"@{fk}") or "-randomised-" in key:
                continue
            run.redundancy.setdefault(key, []).append(redundancy(maps))
            if not config.faithfulness_methods or key.rsplit("@", 1)[0] in config.faithfulness_methods:
                run.faithfulness.setdefault(key, []).append(
                    occlusion_drops(model, x, image.target, maps, grey, image.image_id, config.seed))
        for rule in config.region_rules:
            rule_image = replace(image, region_rule=rule) if hasattr(image, "region_rule") else image
            run.scores[rule].append(score_method_maps(rule_image, maps_all, parts, cached, k_main, map_grid))
        run.subsets.append(getattr(image, "subset", ""))
    return run


def _load_dictionaries(paths: dict[str, str], engine: CRPEngine, spec: LoadedModel) -> dict:
    """The evaluated dictionaries, each checked against the evaluated model, rules, layers and preprocessing."""
    from ..compatibility import composite_key
    from ..dictionary import ConceptDictionary
    from ..models.loading import model_hash

    out = {}
    for name, path in paths.items():
        dictionary = ConceptDictionary(path)
        dictionary.check(model_hash(spec.model), composite_key(engine.composite), [layer.name for layer in engine.layers],
                         spec.preprocessing.to_dict() if spec.preprocessing else None)
        out[name] = dictionary
    return out


def dictionary_maps(engine: CRPEngine, attribution, dictionary, ks: tuple[int, ...]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """A dictionary's maps on one photo: its concise list's, and the K strongest concepts' for each K.

    The concise list and every K are prefixes of one order (decreasing relevance), so the maps
    of the longest prefix are computed once and sliced.
    """
    from ..concepts.features import concept_maps
    from ..dictionary import concise_list, dictionary_concepts, neuron_relevance

    n_listed = len(concise_list(dictionary.concept_relevance(neuron_relevance(attribution, dictionary))))
    fitting = [k for k in ks if k <= dictionary.k]
    top, _ = dictionary_concepts(dictionary, attribution, [layer.name for layer in engine.layers],
                                 k=max([n_listed, *fitting]))
    maps = concept_maps(engine, attribution, top.concepts, "layer-group")
    return maps[:n_listed], {k: maps[:k] for k in fitting}


def summarise(
    scores: list[ImageScores],
    parts: list[str],
    thresholds: dict[str, int] | None = None,
    methods: tuple[str, ...] | None = None,
) -> dict:
    """Aggregate per-image scores: per part and species, per method, with each method's threshold.

    ``thresholds`` fixes a threshold per method (e.g. chosen on the dev species); otherwise
    each method's threshold is the one with the best mean IoU on these images.
    """
    methods = methods or tuple(scores[0].iou)
    species = [s.species for s in scores]
    summary: dict = {"parts": parts, "threshold_grid": list(THRESHOLDS), "methods": {}}
    for method in methods:
        iou = np.stack([s.iou[method] for s in scores], axis=1)  # (T, n_images, P)
        names, by_species = species_scores(iou, species)  # (T, S, P)
        per_threshold = method_score(by_species)  # (T,)
        if thresholds is not None:
            if method not in thresholds:
                raise InputError(f"the thresholds file has no entry for {method!r}; it needs one per method")
            t_index = THRESHOLDS.index(int(thresholds[method]))
            source = "fixed"
        else:
            t_index = int(np.nanargmax(per_threshold))
            source = "chosen on these images"
        point = np.stack([s.pointing[method] for s in scores])[None]
        _, point_species = species_scores(point, species)
        with np.errstate(invalid="ignore"):
            part_means = nanmean_last(np.moveaxis(by_species[t_index], 0, -1))  # (P,)
        summary["methods"][method] = {
            "mean_iou": float(per_threshold[t_index]),
            "complexity": float(np.mean([s.n_maps[method] for s in scores])),
            "threshold": int(THRESHOLDS[t_index]),
            "threshold_source": source,
            "pointing": float(method_score(point_species)[0]),
            "mean_iou_by_threshold": {str(t): float(v) for t, v in zip(THRESHOLDS, per_threshold)},
            "parts": {p: float(v) for p, v in zip(parts, part_means)},
            "per_species": {n: float(v) for n, v in zip(names, nanmean_last(by_species[t_index]))},
            "per_species_parts": {n: [float(v) for v in row] for n, row in zip(names, by_species[t_index])},
        }
    summary["species"] = sorted(set(species))
    return summary


def _split_key(key: str) -> tuple[str, int] | None:
    if "@" not in key:
        return None
    method, k = key.rsplit("@", 1)
    return method, int(k)


def at_k_table(methods: dict[str, dict], ks: tuple[int, ...]) -> dict[str, dict[int, dict]]:
    """``method -> K -> {mean_iou, pointing, lift_iou, lift_pointing, threshold, n_maps, parts}``.

    The lifts are differences to ``random-disks@K`` on the same photos (same summary).
    """
    out: dict[str, dict[int, dict]] = {}
    for key, m in methods.items():
        split = _split_key(key)
        if split is None:
            continue
        method, k = split
        chance = methods.get(at_key("random-disks", k))
        entry = {
            "mean_iou": m["mean_iou"], "pointing": m["pointing"], "threshold": m["threshold"],
            "n_maps": m["complexity"], "parts": m["parts"],
            "lift_iou": m["mean_iou"] - chance["mean_iou"] if chance else None,
            "lift_pointing": m["pointing"] - chance["pointing"] if chance else None,
        }
        out.setdefault(method, {})[k] = entry
    return {method: dict(sorted(by_k.items())) for method, by_k in out.items()}


def summarise_run(
    run: EvaluationRun,
    parts: list[str],
    config: EvaluationConfig,
    thresholds: dict[str, dict[str, int]] | None = None,
) -> dict:
    """Every number of an :class:`EvaluationRun`: per region rule and subset, at every K,
    faithfulness, redundancy and the randomisation control.

    ``thresholds`` (``rule -> key -> threshold``, e.g. a dev run's ``thresholds.json``) fixes
    each method's threshold; otherwise it is chosen on these photos per rule and method.
    """
    out: dict = {"parts": parts, "threshold_grid": list(THRESHOLDS), "region_rules": {}, "thresholds": {}}
    for rule, scores in run.scores.items():
        fixed = None
        if thresholds is not None:
            if rule not in thresholds:
                raise InputError(f"the thresholds file has no entry for region rule {rule!r}; rerun the dev evaluation")
            fixed = thresholds[rule]
        summary = summarise(scores, parts, fixed)
        chosen = {key: m["threshold"] for key, m in summary["methods"].items()}
        native = {key: m for key, m in summary["methods"].items() if "@" not in key}
        subsets = {}
        for subset in sorted(set(run.subsets) - {""}):
            rows = [s for s, sub in zip(scores, run.subsets) if sub == subset]
            part = summarise(rows, parts, chosen)
            subsets[subset] = {
                "n_images": len(rows),
                "methods": {key: {f: part["methods"][key][f] for f in ("mean_iou", "pointing", "complexity", "threshold")}
                            for key in native},
                "at_k": at_k_table(part["methods"], config.ks),
            }
        out["region_rules"][rule] = {"methods": native, "at_k": at_k_table(summary["methods"], config.ks), "subsets": subsets}
        out["thresholds"][rule] = chosen
        out.setdefault("species", summary["species"])
    headline = config.region_rules[0]
    out["region_rule"] = headline
    out["methods"] = out["region_rules"][headline]["methods"]
    out["at_k"] = out["region_rules"][headline]["at_k"]
    fk = config.faithfulness_k
    out["faithfulness"] = {key.rsplit("@", 1)[0]: {"k": fk, **summarise_faithfulness(v)} for key, v in run.faithfulness.items()}
    out["redundancy"] = {key.rsplit("@", 1)[0]: {"k": fk, "mean_correlation": float(np.nanmean(v)) if np.any(np.isfinite(v)) else None}
                         for key, v in run.redundancy.items()}
    main = next(iter(config.ours))
    randomisation: dict = {}
    for scope in config.randomise:
        name = f"{main}-randomised-{scope}"
        per_rule = {rule: out["region_rules"][rule]["at_k"].get(name, {}).get(fk) for rule in out["region_rules"]}
        randomisation[scope] = {"lift_iou": per_rule[headline]["lift_iou"], "lift_pointing": per_rule[headline]["lift_pointing"],
                                "mean_iou": per_rule[headline]["mean_iou"],
                                "by_region_rule": {r: v["lift_iou"] for r, v in per_rule.items()}}
    real = out["at_k"][main][fk]
    first = config.randomise[0] if config.randomise else None
    out["randomisation"] = {main: {
        "k": fk, "lift_iou": real["lift_iou"], "lift_pointing": real["lift_pointing"],
        "lift_iou_randomised": randomisation[first]["lift_iou"] if first else None,
        "lift_pointing_randomised": randomisation[first]["lift_pointing"] if first else None,
        "randomised_from": first, "scopes": randomisation,
    }}
    out["ours_stats"] = {
        name: {
            "mean_k": float(np.mean([s["k"] for s in stats])),
            "median_largest_share": float(np.median([s["largest_share"] for s in stats])),
            "max_largest_share": float(np.max([s["largest_share"] for s in stats])),
            "median_largest_size_fraction": float(np.median([s["largest_size_fraction"] for s in stats])),
            "neurons_clustered": float(np.mean([s["n_neurons"] for s in stats])),
        }
        for name, stats in run.ours_stats.items() if stats
    }
    return out
