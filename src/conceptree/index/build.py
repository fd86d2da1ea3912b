"""Build a reference index: one batched LRP pass per image, sharded, local or on Ray, resumable.

The images are split into shards of ``shard_size``; a task computes one shard (its images in
batches of ``batch_size`` through :meth:`CRPEngine.attribute_batch`) and writes
``shards/shard-NNNNN.npz`` atomically. A rerun into the same folder skips the shards that
exist (resume after a kill); shards of another key are refused. When every shard is there
they are assembled into ``relevance.npy`` and ``index.json`` (written last, so an index
folder with ``index.json`` is complete) and the shards are removed.

An unreadable image is recorded as ``failed`` with its one-line error and the build goes on;
any other exception in a shard is retried (``max_retries``) and, if it persists, stops the
build with a message to rerun (the finished shards stay): :func:`~conceptree.jobs.fan_out` with
``on_failure="raise"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..attribution import Composite
from ..errors import ConceptreeError, InputError
from ..jobs import Progress, TaskFailed, fan_out
from ..tasks import ModelSource, atomic_write_text, collect_images, executor_kind
from .store import (
    FLOAT16_MAX,
    INDEX_FORMAT,
    PEAK_GRID,
    ConceptIndex,
    composite_key,
    index_key,
    key_difference,
)

#: images per LRP batch: the fastest on the bird MobileNetV2 on a 2-core CPU
#: (``benchmarks/results/index_throughput.json``).
DEFAULT_BATCH_SIZE = 4
#: images per task (and per shard file).
DEFAULT_SHARD_SIZE = 64
TARGETS = ("predicted", "label")


@dataclass(frozen=True)
class ReferenceItem:
    """One image of a reference set: path relative to the set's root, label, part keypoints."""

    path: str
    label: int | None = None
    annotation: dict | None = None


def reference_set(source: str | Path | Sequence[str | Path]) -> tuple[Path, list[ReferenceItem]]:
    """The images of a reference set and the folder their paths are relative to.

    A ``cub_parts`` folder (``annotations.json``) gives every photo with its label (the bird
    model's class of its species, where the model knows it) and its visible part keypoints;
    anything else is read by :func:`~conceptree.tasks.collect_images` (no labels).
    """
    if isinstance(source, (str, Path)) and (Path(source) / "annotations.json").is_file():
        from ..datasets.cub_parts import load_cub_parts

        root = Path(source).resolve()
        images, _ = load_cub_parts(root, require_target=False)
        items = [ReferenceItem(str(im.path.relative_to(root)), im.target,
                               {"keypoints": {k: list(v) for k, v in im.keypoints.items()},
                                "bird_size_px": list(im.bird_size_px), "width": im.width, "height": im.height,
                                "species": im.species})
                 for im in images]
        return root, items
    paths = [p.resolve() for p in collect_images(source)]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return root, [ReferenceItem(str(p.relative_to(root))) for p in paths]


@dataclass(kw_only=True)
class ShardWorker:
    """The model and its traced engine that compute shards (picklable).

    Built on first use, once per process: the shards run in this process share one worker (the
    builder passes the ``spec`` and ``engine`` it has already built); a Ray task gets a pickled
    copy without them and loads the model itself, checking its parameter hash.

    Parameters
    ----------
    source : ModelSource
        How a worker builds the model.
    composite : Composite
        LRP rules.
    layers, exclude_layers : tuple of str, optional
        The engine's layers, as :class:`IndexBuilder` takes them.
    model_hash : str
        The hash of the model the index was started with.
    spec, engine : optional
        A loaded ``LoadedModel`` and its ``CRPEngine`` (not pickled).
    """

    source: ModelSource
    composite: Composite
    layers: tuple[str, ...] | None
    exclude_layers: tuple[str, ...] | None
    model_hash: str
    spec: object | None = field(default=None, repr=False, compare=False)
    engine: object | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "spec": None, "engine": None}  # each process loads its own model

    def load(self) -> None:
        """Load the model and build the engine (nothing when they are there)."""
        if self.engine is not None:
            return
        from ..attribution import CRPEngine
        from ..models.loading import model_hash

        spec = self.source.load()
        if model_hash(spec.model) != self.model_hash:
            raise InputError("the model a worker loaded differs from the one the index was started with "
                             "(parameter hash); use the same model files everywhere")
        self.spec, self.engine = spec, CRPEngine(spec.model, self.composite, self.layers, self.exclude_layers)

    def run(self, job: ShardJob) -> None:
        """Compute one shard and write ``shards/shard-NNNNN.npz`` atomically."""
        import torch

        from ..models.loading import load_image, preprocess

        self.load()
        engine, spec = self.engine, self.spec
        n_neurons = sum(layer.channels for layer in engine.layers)
        relevance = np.zeros((len(job.rows), n_neurons), dtype=np.float16)
        peaks = np.zeros((len(job.rows), n_neurons), dtype=np.uint16)
        records: list[dict] = []
        layer_sizes: dict[str, list[int]] = {}
        inputs: list[tuple[int, torch.Tensor]] = []
        for i, item in enumerate(job.items):
            path = Path(job.root) / item.path
            record = {"row": job.rows[i], "path": item.path, "status": "ok", "label": item.label,
                      "annotation": item.annotation}
            try:
                data = path.read_bytes()
                record["file_sha1"] = hashlib.sha1(data).hexdigest()
                picture, _ = load_image(str(path))
                x, shown = preprocess(picture.convert("RGB"), spec.preprocessing)
                record["pixels_sha1"] = hashlib.sha1(np.ascontiguousarray(shown).tobytes()).hexdigest()
                if inputs and x.shape != inputs[0][1].shape:
                    raise InputError(f"{item.path} preprocesses to {tuple(x.shape)}, the others to "
                                     f"{tuple(inputs[0][1].shape)}; use a preprocessing with a fixed size")
                inputs.append((i, x))
            except (OSError, ConceptreeError) as exc:
                record.update(status="failed", error=str(exc).splitlines()[0])
            records.append(record)
        for first in range(0, len(inputs), job.batch_size):
            chunk = inputs[first : first + job.batch_size]
            x = torch.cat([t for _, t in chunk])
            targets = [job.items[i].label if job.target == "label" else None for i, _ in chunk]
            result = engine.attribute_batch(x, targets, keep_maps=True)
            peak_cells = peak_grid_cells(result.layer_relevance)
            layer_sizes = {name: list(rel.shape[-2:]) for name, rel in result.layer_relevance.items()}
            probs = torch.softmax(result.logits.double(), 1)
            values = result.channel_relevance.cpu().numpy()
            if np.abs(values).max(initial=0.0) > FLOAT16_MAX:
                raise InputError(f"a relevance exceeds float16's range ({FLOAT16_MAX:g}): this model's logits are too "
                                 "large for a float16 index")
            for j, (i, _) in enumerate(chunk):
                relevance[i] = values[j].astype(np.float16)
                peaks[i] = peak_cells[j]
                records[i].update(target=int(result.targets[j]), abs_total=float(np.abs(values[j]).sum()),
                                  predicted=int(probs[j].argmax()), probability=float(probs[j].max()))
        final = shard_path(Path(job.out), job.shard)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}-{os.getpid()}.tmp.npz")
        np.savez(tmp, relevance=relevance, peaks=peaks, meta=np.array(json.dumps({"key": job.key, "records": records, "layer_sizes": layer_sizes})))
        os.replace(tmp, final)


@dataclass(frozen=True, kw_only=True)
class ShardJob:
    """One shard's task for :func:`~conceptree.jobs.fan_out` (picklable): its images, where it
    is written, and the worker that computes it."""

    shard: int
    rows: tuple[int, ...]
    items: tuple[ReferenceItem, ...]
    root: str
    out: str
    key: dict
    batch_size: int
    target: str
    worker: ShardWorker

    @property
    def task_id(self) -> str:
        return f"shard {self.shard}"

    @property
    def size(self) -> int:
        """Images in the shard (its weight on the progress bar)."""
        return len(self.rows)

    def __call__(self) -> int:
        self.worker.run(self)
        return self.shard


def peak_grid_cells(layer_relevance: dict) -> np.ndarray:
    """Cell of each channel's own-layer relevance peak on the :data:`PEAK_GRID` over the input.

    Parameters
    ----------
    layer_relevance : dict[str, Tensor]
        ``(N, channels, h, w)`` per layer, in the engine's layer order (each layer's grid covers
        the whole input, as in :func:`~conceptree.concepts.layer_maps.to_grid`).

    Returns
    -------
    np.ndarray
        ``(N, neurons)`` uint16, ``row * PEAK_GRID[1] + col`` of the grid cell holding the centre
        of the layer cell with the largest relevance (first maximum, row-major).
    """
    gh, gw = PEAK_GRID
    columns = []
    for rel in layer_relevance.values():
        n, c, h, w = rel.shape
        flat = rel.reshape(n, c, h * w).argmax(2).cpu().numpy()
        row, col = np.divmod(flat, w)
        grid_row = np.minimum(((row + 0.5) * gh / h).astype(np.int64), gh - 1)
        grid_col = np.minimum(((col + 0.5) * gw / w).astype(np.int64), gw - 1)
        columns.append((grid_row * gw + grid_col).astype(np.uint16))
    return np.concatenate(columns, axis=1)


def shard_path(out: Path, shard: int) -> Path:
    return out / "shards" / f"shard-{shard:05d}.npz"


@dataclass
class IndexBuilder:
    """Builds a reference index (scikit-learn style: parameters here, work in :meth:`build`).

    Parameters
    ----------
    composite : Composite, optional
        LRP rules (default :class:`Composite`; must equal the explainer's).
    layers, exclude_layers : sequence of str, optional
        Conv layers whose channels are indexed (default: all, as the explainer).
    target : {"predicted", "label"}
        Class each image is indexed for: its prediction, or its label where the set has one
        (images without a label fall back to their prediction, recorded in ``target``).
    batch_size : int
        Images per LRP batch (default :data:`DEFAULT_BATCH_SIZE`).
    shard_size : int
        Images per task and shard file.
    executor : {"auto", "ray", "local"}
        Ray when installed (``auto``), or sequential in this process.
    workers : int, optional
        Concurrent Ray tasks (default: the machine's CPUs); each gets ``CPUs / workers`` threads.
    ray_address : str, optional
        An existing Ray cluster.
    max_retries : int
        Retries of a shard that raised an unexpected exception (or whose worker died); a shard
        that still fails stops the build (rerun to resume).
    progress : bool
        A progress bar with the rate and ETA.

    Attributes
    ----------
    computed_ : int
        Images whose LRP pass the last :meth:`build` computed (0: the index was complete).
    """

    composite: Composite | None = None
    layers: Sequence[str] | None = None
    exclude_layers: Sequence[str] | None = None
    target: str = "predicted"
    batch_size: int = DEFAULT_BATCH_SIZE
    shard_size: int = DEFAULT_SHARD_SIZE
    executor: str = "auto"
    workers: int | None = None
    ray_address: str | None = None
    max_retries: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"unknown index target {self.target!r}; use one of {', '.join(TARGETS)}")
        for name in ("batch_size", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive int, got {value!r}")
        if self.composite is not None and not isinstance(self.composite, Composite):
            raise InputError(f"composite must be a Composite, got {type(self.composite).__name__}")
        executor_kind(self.executor)  # validates the name

    def build(self, images, source: ModelSource, out: str | Path, *, overwrite: bool = False) -> ConceptIndex:
        """Index ``images`` (a ``cub_parts`` folder, an image folder, glob or list) into ``out``.

        Returns
        -------
        ConceptIndex
            The finished index (also when ``out`` already held it: nothing is recomputed).
        """
        from ..attribution import CRPEngine
        from ..models.loading import model_hash

        out = Path(out)
        composite = self.composite or Composite()
        spec = source.load()
        engine = CRPEngine(spec.model, composite, self.layers, self.exclude_layers)
        key = index_key(model_hash(spec.model), composite_key(composite), [layer.name for layer in engine.layers],
                        spec.preprocessing.to_dict() if spec.preprocessing else None, self.target)
        if overwrite and out.exists():
            shutil.rmtree(out)
        self._check_existing(out, key)
        self.computed_ = 0
        if (out / "index.json").is_file():
            return ConceptIndex(out)
        root, items = reference_set(images)
        worker = ShardWorker(source=source, composite=composite, layers=tuple(self.layers) if self.layers else None,
                             exclude_layers=tuple(self.exclude_layers) if self.exclude_layers else None,
                             model_hash=key["model_hash"], spec=spec, engine=engine)
        jobs = [ShardJob(shard=s, rows=tuple(range(first, min(first + self.shard_size, len(items)))),
                         items=tuple(items[first : first + self.shard_size]), root=str(root), out=str(out), key=key,
                         batch_size=self.batch_size, target=self.target, worker=worker)
                for s, first in enumerate(range(0, len(items), self.shard_size))]
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / "shards").glob(".*.tmp.npz"):
            stale.unlink()
        todo = [job for job in jobs if not shard_path(out, job.shard).is_file()]
        kind = executor_kind(self.executor)
        t0 = time.perf_counter()
        progress = Progress(description=f"index ({len(items) - sum(len(j.rows) for j in todo)} done before)",
                            unit="image") if self.progress else None
        try:
            ran = fan_out(todo, executor=kind, retries=self.max_retries, on_failure="raise", workers=self.workers,
                          ray_address=self.ray_address, gpu_per_task=True, progress=progress)
        except TaskFailed as exc:
            raise TaskFailed(exc.failure, hint="rerun the same command to resume") from None
        workers = ran.workers
        wall = time.perf_counter() - t0
        self.computed_ = sum(len(j.rows) for j in todo)
        index = self._assemble(out, jobs, key, root, spec, engine)
        summary = {"images": len(items), "failed": int((~index.ok).sum()), "computed_now": sum(len(j.rows) for j in todo),
                   "wall_s": wall, "images_per_s": sum(len(j.rows) for j in todo) / wall if todo and wall > 0 else None,
                   "executor": kind, "workers": workers, "batch_size": self.batch_size, "shard_size": self.shard_size,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        meta = json.loads((out / "index.json").read_text())
        meta["build"] = summary
        atomic_write_text(out / "index.json", json.dumps(meta, indent=1))
        return ConceptIndex(out)

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _check_existing(out: Path, key: dict) -> None:
        found = None
        if (out / "index.json").is_file():
            found = json.loads((out / "index.json").read_text()).get("key")
        else:
            for shard in sorted((out / "shards").glob("shard-*.npz")):
                found = json.loads(str(np.load(shard)["meta"]))["key"]
                break
        if found is not None and key_difference(key, found):
            raise InputError(f"{out} holds an index built with other {', '.join(key_difference(key, found))}; "
                             "pass another --out or --overwrite")

    @staticmethod
    def _assemble(out: Path, jobs: list[ShardJob], key: dict, root: Path, spec, engine) -> ConceptIndex:
        n_images = sum(len(j.rows) for j in jobs)
        n_neurons = sum(layer.channels for layer in engine.layers)
        tmp = out / ".relevance.npy.tmp"
        tmp_peaks = out / ".peaks.npy.tmp"
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n_images, n_neurons))
        peaks = np.lib.format.open_memmap(tmp_peaks, mode="w+", dtype=np.uint16, shape=(n_images, n_neurons))
        records: list[dict] = []
        layer_sizes: dict[str, list[int]] = {}
        for job in jobs:
            with np.load(shard_path(out, job.shard)) as shard:
                meta = json.loads(str(shard["meta"]))
                if key_difference(key, meta["key"]):  # as the resume check: an equal key of an older form passes
                    raise InputError(f"shard {job.shard} in {out} was built with another key; pass --overwrite")
                matrix[job.rows[0] : job.rows[-1] + 1] = shard["relevance"]
                peaks[job.rows[0] : job.rows[-1] + 1] = shard["peaks"]
                records.extend(meta["records"])
                layer_sizes = layer_sizes or meta.get("layer_sizes", {})
        matrix.flush()
        peaks.flush()
        del matrix, peaks
        os.replace(tmp, out / "relevance.npy")
        os.replace(tmp_peaks, out / "peaks.npy")
        neurons = [{"layer": name, "offset": offset, "channels": channels}
                   for name, offset, channels in engine.neuron_columns()]
        meta = {"format": INDEX_FORMAT, "key": key, "root": str(root), "model_spec": spec.spec, "peak_grid": list(PEAK_GRID),
                "layer_sizes": layer_sizes,
                "class_names": list(spec.class_names or []), "neurons": neurons, "images": records}
        atomic_write_text(out / "index.json", json.dumps(meta, indent=1))
        shutil.rmtree(out / "shards", ignore_errors=True)
        return ConceptIndex(out)


def build_index(images, source: ModelSource, out: str | Path, *, overwrite: bool = False, **params) -> ConceptIndex:
    """Build (or resume) a reference index: :class:`IndexBuilder` ``(**params).build(...)``."""
    return IndexBuilder(**params).build(images, source, out, overwrite=overwrite)
