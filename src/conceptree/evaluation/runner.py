"""``conceptree evaluate``: every method's maps on annotated photos, scored by the IoU protocol."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..attribution.engine import CRPEngine
from ..attribution.graph import canonize
from ..concepts import ConceptSet, DistanceConfig, find_concepts
from ..errors import InputError
from ..explain import representative_maps
from ..models.loading import ModelSpec, Preprocessing, load_image, load_model, preprocess
from .baselines import CAM_METHODS
from .image_maps import ImageMaps, compute_image_maps
from .images import AnnotatedImage
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

#: Methods in table order.
METHODS: tuple[str, ...] = ("ours", "crp-10", "crp-300", "dcne", *CAM_METHODS)


@dataclass(frozen=True)
class ModelArgs:
    """How to load the classifier (picklable, so worker processes can load it themselves)."""

    spec: str
    weights: str | None
    kwargs: dict = field(default_factory=dict)
    labels: str | None = None
    preprocessing: Preprocessing | None = None

    def load(self) -> ModelSpec:
        spec = load_model(self.spec, self.weights, self.kwargs, self.labels)
        if self.preprocessing is not None:
            spec.preprocessing = self.preprocessing
        return spec


@dataclass(frozen=True)
class OursConfig:
    """Parameters of our method (defaults = ``conceptree explain``'s, plus the neuron pool)."""

    distance: DistanceConfig = field(default_factory=DistanceConfig)
    method: str = "ward"
    k_range: tuple[int, int] = (15, 30)
    pool_neurons: int = 2000

    def to_dict(self) -> dict:
        return {"distance": self.distance.to_dict(), "method": self.method, "k_range": list(self.k_range), "pool_neurons": self.pool_neurons}


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


def cache_path(cache_dir: Path, image: AnnotatedImage) -> Path:
    return cache_dir / f"{image.image_id}.npz"


def _input(image: AnnotatedImage, spec: ModelSpec) -> torch.Tensor:
    picture, _ = load_image(str(image.path))
    x, _ = preprocess(picture, spec.preprocessing)
    return x


def _cache_one(model_args: ModelArgs, image: AnnotatedImage, path: Path, pool_neurons: int, threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    spec = model_args.load()
    engine = CRPEngine(spec.model)
    maps = compute_image_maps(engine, spec.model, canonize(spec.model), _input(image, spec), image.target, pool_neurons)
    maps.save(path)
    return time.perf_counter() - t0


def check_manifest(cache_dir: Path, model_args: ModelArgs, pool_neurons: int) -> None:
    """Write ``manifest.json`` on first use; refuse a cache built with another model or settings."""
    import json

    from .image_maps import CACHE_VERSION

    prep = model_args.preprocessing.to_dict() if model_args.preprocessing else None
    manifest = {
        "version": CACHE_VERSION, "model": model_args.spec,
        "weights": str(Path(model_args.weights).resolve()) if model_args.weights else None,
        "kwargs": model_args.kwargs, "preprocessing": prep, "pool_neurons": pool_neurons,
    }
    manifest = json.loads(json.dumps(manifest))
    path = cache_dir / "manifest.json"
    if path.exists():
        found = json.loads(path.read_text())
        diff = sorted(k for k in set(found) | set(manifest) if found.get(k) != manifest.get(k))
        if diff:
            raise InputError(
                f"cache {cache_dir} was built with other settings ({', '.join(diff)} differ); "
                "use another --cache or delete it"
            )
    else:
        path.write_text(json.dumps(manifest, indent=1))


def build_cache(
    images: list[AnnotatedImage],
    model_args: ModelArgs,
    cache_dir: str | Path,
    pool_neurons: int = 2000,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, float]:
    """Compute and store :class:`ImageMaps` for every image not cached yet (resumable).

    Returns seconds per newly computed image id.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    check_manifest(cache_dir, model_args, pool_neurons)
    todo = [im for im in images if not cache_path(cache_dir, im).exists()]
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"CRP + baselines ({len(images) - len(todo)} cached)", unit="image")
    seconds: dict[str, float] = {}
    if workers == 1:
        for im in todo:
            seconds[im.image_id] = _cache_one(model_args, im, cache_path(cache_dir, im), pool_neurons, threads)
            if bar:
                bar.update()
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_cache_one, model_args, im, cache_path(cache_dir, im), pool_neurons, threads): im for im in todo}
            for future in as_completed(futures):
                seconds[futures[future].image_id] = future.result()
                if bar:
                    bar.update()
    if bar:
        bar.close()
    return seconds


def ours_concepts(maps: ImageMaps, config: OursConfig) -> ConceptSet:
    """Our concepts on one image from its cached neuron pool (the manifest guarantees its size)."""
    return find_concepts(maps.pool_neurons(), config.distance, config.method, config.k_range)


def dataset_parts(images: list) -> list[str]:
    """Region names in evaluation order: the dataset's fixed list, else every label seen."""
    fixed = getattr(images[0], "parts", None)
    if fixed:
        return list(fixed)
    return sorted({name for im in images for name in im.region_masks()})


def region_weights(image: AnnotatedImage, grid_hw: tuple[int, int], parts: list[str]) -> RegionWeights:
    masks = image.region_masks()
    return cell_weights([masks.get(r) for r in parts], (image.height, image.width), grid_hw)


def score_maps(maps: np.ndarray, regions: RegionWeights, thresholds: tuple[int, ...] = THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """``(iou (T, P), pointing (P,))`` of one method's maps ``(n, h, w)``."""
    maps = np.asarray(maps, dtype=np.float32)
    return best_iou(normalise_255(maps), regions, thresholds), pointing(maps, regions)


def score_image(
    image: AnnotatedImage,
    maps: ImageMaps,
    ours_maps: np.ndarray,
    k: int,
    parts: list[str],
    methods: tuple[str, ...] = METHODS,
    map_grid: tuple[int, int] | None = None,
) -> ImageScores:
    """Score every method's maps of one image against its part regions.

    ``map_grid`` average-pools every method's maps to that grid first (a variant of the
    protocol that puts sharp pixel-level CRP maps and smooth upsampled CAMs on one footing).
    """
    method_maps = {
        "ours": ours_maps,
        "crp-10": maps.crp_maps[:10],
        "crp-300": maps.crp_maps[:300],
        "dcne": maps.dcne_maps,
        **maps.cam,
    }
    weights: dict[tuple[int, int], RegionWeights] = {}
    iou, point, n_maps = {}, {}, {}
    for method in methods:
        m = method_maps[method]
        if map_grid is not None and m.shape[0] and tuple(m.shape[-2:]) != tuple(map_grid):
            pooled = F.adaptive_avg_pool2d(torch.from_numpy(np.asarray(m, np.float32))[:, None], map_grid)
            m = pooled[:, 0].numpy()
        grid = tuple(m.shape[-2:])
        if grid not in weights:
            weights[grid] = region_weights(image, grid, parts)
        iou[method], point[method] = score_maps(m, weights[grid])
        n_maps[method] = int(m.shape[0])
    return ImageScores(image.image_id, image.species, maps.target, maps.predicted, maps.probability, iou, point, n_maps, k)


def evaluate_images(
    images: list[AnnotatedImage],
    model_args: ModelArgs,
    cache_dir: str | Path,
    config: OursConfig = OursConfig(),
    full_resolution: bool = True,
    methods: tuple[str, ...] = METHODS,
    progress: bool = True,
    map_grid: tuple[int, int] | None = None,
) -> list[ImageScores]:
    """Score cached images. ``full_resolution=False`` scores our representatives on their
    pooled maps (no model needed: the fast path of the parameter sweep)."""
    cache_dir = Path(cache_dir)
    spec = model_args.load() if full_resolution and "ours" in methods else None
    engine = CRPEngine(spec.model) if spec else None
    parts = dataset_parts(images)
    iterator = images
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(images, desc="scoring", unit="image")
    out = []
    for image in iterator:
        maps = ImageMaps.load(cache_path(cache_dir, image))
        ours_maps, k = np.zeros((0, 1, 1), np.float32), 0
        if "ours" in methods:
            concepts = ours_concepts(maps, config)
            k = concepts.k
            if engine is not None:
                attribution = engine.attribute(_input(image, spec), image.target)
                ours_maps = representative_maps(engine, attribution, concepts)
            else:
                neurons = maps.pool_neurons()
                ours_maps = neurons.maps[[c.representative_index for c in concepts.concepts]]
        out.append(score_image(image, maps, ours_maps, k, parts, methods, map_grid))
    return out


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
