"""The evaluation cache: every photo's maps (CRP, the baselines) computed once and stored, resumable,
on :func:`~conceptree.jobs.fan_out`; a manifest refuses a cache of another model; input-level neuron
maps cached per photo and pool size."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..attribution.engine import CRPEngine
from ..attribution.results import NeuronMaps
from ..attribution.tracing import canonize
from ..concepts.features import features_for
from ..concepts.options import ConceptOptions
from ..datasets.images import AnnotatedImage
from ..errors import InputError
from ..jobs import Progress, TaskFailed, fan_out
from ..models.loading import LoadedModel, Preprocessing, load_image, preprocess
from ..tasks import ModelSource
from .image_maps import CACHE_VERSION, compute_image_maps


def cache_model(cache_dir: str | Path) -> ModelSource:
    """The model an evaluation cache was built with (its ``manifest.json``)."""
    path = Path(cache_dir) / "manifest.json"
    if not path.is_file():
        raise InputError(f"{path} not found; point at a cache written by conceptree evaluate")
    manifest = json.loads(path.read_text())
    prep = manifest["preprocessing"]
    return ModelSource(spec=manifest["model"], weights=manifest["weights"], kwargs=manifest["kwargs"],
                       preprocessing=Preprocessing.from_dict(prep) if prep else None)


def cache_path(cache_dir: Path, image: AnnotatedImage) -> Path:
    return cache_dir / f"{image.image_id}.npz"


def _input(image: AnnotatedImage, spec: LoadedModel) -> torch.Tensor:
    picture, _ = load_image(str(image.path))
    x, _ = preprocess(picture, spec.preprocessing)
    return x


@dataclass(kw_only=True)
class CacheWorker:
    """Computes and stores photos' maps, loading and canonizing the model once per process
    (picklable: a copy sent to another process loads the model there).

    Parameters
    ----------
    source : ModelSource
        The evaluated model.
    cache_dir : str
        Where the maps are stored (:func:`cache_path`).
    """

    source: ModelSource
    cache_dir: str
    _loaded: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None}

    def __call__(self, images: Sequence[AnnotatedImage]) -> dict[str, float]:
        """Compute and store the maps of ``images``; seconds per image id."""
        if self._loaded is None:
            spec = self.source.load()
            self._loaded = (spec, CRPEngine(spec.model), canonize(spec.model))
        spec, engine, canonized = self._loaded
        seconds = {}
        for image in images:
            t0 = time.perf_counter()
            maps = compute_image_maps(engine, spec.model, canonized, _input(image, spec), image.target)
            maps.save(cache_path(Path(self.cache_dir), image))
            seconds[image.image_id] = time.perf_counter() - t0
        return seconds


@dataclass(frozen=True, kw_only=True)
class CacheChunk:
    """A task of :func:`build_cache` (picklable): the maps of some photos."""

    worker: CacheWorker
    images: tuple[AnnotatedImage, ...]

    @property
    def task_id(self) -> str:
        return f"photos {self.images[0].image_id}..{self.images[-1].image_id}" if len(self.images) > 1 else \
            f"photo {self.images[0].image_id}"

    @property
    def size(self) -> int:
        return len(self.images)

    def __call__(self) -> dict[str, float]:
        return self.worker(self.images)


def check_manifest(cache_dir: Path, model_args: ModelSource) -> None:
    """Write ``manifest.json`` on first use; refuse a cache built with another model or settings."""
    prep = model_args.preprocessing.to_dict() if model_args.preprocessing else None
    manifest = {
        "version": CACHE_VERSION, "model": model_args.spec,
        "weights": str(Path(model_args.weights).resolve()) if model_args.weights else None,
        "kwargs": model_args.kwargs, "preprocessing": prep,
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
    model_args: ModelSource,
    cache_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
    executor: str = "process",
    ray_address: str | None = None,
    *,
    retries: int = 2,
) -> dict[str, float]:
    """Compute and store :class:`ImageMaps` for every image not cached yet (resumable).

    ``executor``: ``"process"`` (a process pool of ``workers`` on this machine; in this process
    when ``workers`` is 1) or ``"ray"`` (one Ray task per chunk of photos, on a local Ray with
    ``workers`` tasks at a time or on the cluster at ``ray_address``; the cache and its manifest
    are the same). Each task loads the model once for its chunk (~4 chunks per worker); in this
    process the model is loaded once. Runs on :func:`~conceptree.jobs.fan_out`: a task that
    fails is retried ``retries`` times, then the build stops (the photos done stay cached).
    Returns seconds per newly computed image id.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    check_manifest(cache_dir, model_args)
    todo = [im for im in images if not cache_path(cache_dir, im).exists()]
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if executor not in ("process", "ray"):
        raise InputError(f"unknown executor {executor!r}; use process or ray")
    worker = CacheWorker(source=model_args, cache_dir=str(cache_dir))
    if executor == "process" and (workers == 1 or len(todo) <= 1):
        kind, tasks = "local", [CacheChunk(worker=worker, images=(im,)) for im in todo]  # one model load in all
    else:
        kind = executor
        size = max(1, -(-len(todo) // (4 * workers)))  # ~4 chunks per worker: one model load per chunk
        tasks = [CacheChunk(worker=worker, images=tuple(todo[i : i + size])) for i in range(0, len(todo), size)]
    bar = Progress(description=f"CRP + baselines ({len(images) - len(todo)} cached)", unit="image") if progress else None
    try:
        ran = fan_out(tasks, executor=kind, retries=retries, on_failure="raise", workers=workers, ray_address=ray_address,
                      progress=bar)
    except TaskFailed as exc:
        raise TaskFailed(exc.failure, hint="rerun the same command to resume (the photos done stay cached)") from None
    seconds: dict[str, float] = {}
    for part in ran.results:
        seconds.update(part or {})
    return seconds


def input_neurons_path(cache_dir: Path, image_id: str, max_neurons: int | None, coverage: float | None = None,
                       pooled: bool = False) -> Path:
    """Cache file of a photo's input-level neuron maps for a pool size (None: every neuron), a
    coverage cut and the pooled approximation."""
    name = f"{image_id}.input{'all' if max_neurons is None else max_neurons}"
    if coverage is not None and coverage < 1.0:
        name += f".cov{coverage:g}"
    if pooled:
        name += ".pooled"
    return Path(cache_dir) / f"{name}.npz"


def load_input_neurons(path: str | Path) -> NeuronMaps:
    """Reload what :func:`cached_input_neurons` stored (maps as float32)."""
    with np.load(path) as npz:
        return NeuronMaps([str(x) for x in npz["layers"]], npz["layer_index"], npz["channel"], npz["relevance"],
                          npz["maps"].astype(np.float32), npz["map_sums"])


def cached_input_neurons(
    engine: CRPEngine, attribution, cache_dir: Path, image: AnnotatedImage, options: ConceptOptions
) -> NeuronMaps:
    """Input-level neuron maps (``features="input"``), cached per photo and pool size."""
    path = input_neurons_path(cache_dir, image.image_id, options.max_neurons, options.coverage,
                              options.pool_below_map_size)
    if path.exists():
        return load_input_neurons(path)
    neurons = features_for(engine, attribution, options.replace(features="input"))
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, layers=np.array(neurons.layers), layer_index=neurons.layer_index, channel=neurons.channel,
             relevance=neurons.relevance, maps=neurons.maps.astype(np.float16), map_sums=neurons.map_sums)
    os.replace(tmp, path)
    neurons.maps = neurons.maps.astype(np.float16).astype(np.float32)  # same numbers as a reload
    return neurons
