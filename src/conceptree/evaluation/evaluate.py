"""``evaluate(...)``: score concept maps, every baseline and chance controls against part regions.

The library function behind ``conceptree evaluate`` (the CLI only parses and prints): load the
annotated photos, compute (or reuse from the cache) every method's maps, score ours and its
variants, summarise with the controls and write the result files. Protocol:
``docs/evaluation.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..tasks import ModelSource
from .runner import (
    EvaluationConfig,
    EvaluationRun,
    build_cache,
    dataset_parts,
    evaluate_images,
    summarise_run,
)

DATASETS = ("cub-parts", "cub-expert", "faces")


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed and where it wrote it.

    Attributes
    ----------
    summary : dict
        Every number (the content of ``results.json``): ``methods``, ``at_k``, ``faithfulness``,
        ``redundancy``, ``randomisation``, ``region_rules``, ``species``.
    run : EvaluationRun
        Per-photo scores.
    out : Path
        The folder with ``results.json``, ``thresholds.json``, ``table.md``, ``per_species.csv``,
        ``complexity_iou.png``.
    """

    summary: dict
    run: EvaluationRun
    out: Path


def check_trained(spec: str, weights: str | None) -> None:
    """Refuse a spec that would have random weights (an evaluation of noise)."""
    if weights is None and not spec.startswith(("dcne:", "default", "fer:", "dlib:")):  # built-in trained weights
        raise InputError(f"{spec} without weights has random weights; evaluate a trained model (--weights FILE)")


def spec_source(model: ModelSource) -> ModelSource:
    """``model`` with a configuration file resolved into spec, weights, kwargs, labels and
    preprocessing (what an evaluation cache's manifest records)."""
    if model.config is None:
        return model
    from ..models.config import load_model_config

    config = load_model_config(model.config)
    preprocessing = model.preprocessing or config.load().preprocessing  # the file's overrides on the spec's own
    return ModelSource(spec=config.spec, weights=config.weights, kwargs=config.kwargs, labels=config.labels,
                       preprocessing=preprocessing)


def read_thresholds(path: str | Path) -> dict[str, dict[str, int]]:
    """A dev run's ``thresholds.json`` (region rule -> method -> threshold percentile)."""
    try:
        found = json.loads(Path(path).read_text())
        return {rule: {k: int(v) for k, v in table.items()} for rule, table in found.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"cannot read thresholds {path} ({exc}); expected a dev run's thresholds.json") from None


def load_items(data: str | Path, dataset: str = "cub-parts", images: str | Path | None = None,
               annotator: str | None = None) -> tuple[list, dict]:
    """The annotated photos of ``dataset`` under ``data`` and the skipped ones (with reasons)."""
    if dataset == "cub-parts":
        from ..datasets.cub_parts import load_cub_parts

        items, skipped = load_cub_parts(data)
    elif dataset == "cub-expert":
        from ..datasets.cub_expert import load_cub_expert

        if images is None:
            raise InputError("the cub-expert dataset needs images= (CUB_200_2011/images); CLI: --images")
        items, skipped = load_cub_expert(data, images, annotator), {}
    elif dataset == "faces":
        from ..datasets.faces_parts import load_faces

        items, skipped = load_faces(data), {}
    else:
        raise InputError(f"unknown dataset {dataset!r}; use {' or '.join(DATASETS)}")
    if not items:
        raise InputError(f"no evaluable images in {data} (none has a target class for this model)")
    return items, skipped


def evaluate(
    data: str | Path,
    model: ModelSource,
    *,
    out: str | Path,
    dataset: str = "cub-parts",
    images: str | Path | None = None,
    annotator: str | None = None,
    config: EvaluationConfig | None = None,
    cache: str | Path | None = None,
    species: list[str] | None = None,
    per_species: int | None = None,
    limit: int | None = None,
    workers: int = 1,
    executor: str = "process",
    ray_address: str | None = None,
    thresholds: str | Path | dict | None = None,
    map_grid: int | None = None,
    progress: bool = False,
    command: str | None = None,
) -> EvaluationResult:
    """Score our concept maps (and its variants), the baselines and the chance controls.

    Parameters
    ----------
    data : path
        ``cub_parts`` folder (``dataset="cub-parts"``) or CUB-expert saliency folder.
    model : ModelSource
        How to load the classifier (picklable: worker processes load it themselves).
        Random weights are refused: evaluate a trained model.
    out : path
        Folder for the result files.
    dataset, images, annotator
        Which annotations (``images``/``annotator``: cub-expert only).
    config : EvaluationConfig, optional
        Variants of ours, budgets K, region rules, controls, seed (default: ours = the
        default preset).
    cache : path, optional
        Per-photo map cache (default ``out/cache``); a rerun resumes from it.
    species, per_species, limit
        Photo selection: species name substrings, at most this many photos per species,
        the first N after that.
    workers : int
        Processes (or Ray tasks) computing the maps.
    executor, ray_address
        ``"process"`` (a local process pool) or ``"ray"`` (Ray tasks, local or on a cluster);
        see :func:`~conceptree.evaluation.runner.build_cache`.
    thresholds : path or dict, optional
        A dev run's thresholds, reapplied unchanged (default: chosen on these photos).
    map_grid : int, optional
        Protocol variant: average-pool every map to ``map_grid``² first.
    progress : bool
        Progress bars.
    command : str, optional
        The command line recorded in ``results.json``.

    Returns
    -------
    EvaluationResult
    """
    from ..datasets.cub_parts import select
    from .baselines import require_grad_cam
    from .outputs import write_outputs

    t0 = time.perf_counter()
    require_grad_cam()  # before any work: the baselines need the eval extra
    model = spec_source(model)
    check_trained(model.spec, model.weights)
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    if map_grid is not None and map_grid < 1:
        raise InputError(f"map_grid must be >= 1, got {map_grid}")
    config = config or EvaluationConfig()
    fixed = read_thresholds(thresholds) if isinstance(thresholds, (str, Path)) else thresholds
    items, skipped = load_items(data, dataset, images, annotator)
    items = select(items, species or None, per_species)
    if limit is not None:
        items = items[:limit]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache) if cache else out_dir / "cache"
    build_cache(items, model, cache_dir, workers, progress=progress, executor=executor, ray_address=ray_address)
    grid = (map_grid, map_grid) if map_grid else None
    run = evaluate_images(items, model, cache_dir, config, progress=progress, map_grid=grid)
    summary = summarise_run(run, dataset_parts(items), config, fixed)
    summary.update(dataset=dataset, n_images=len(items), n_species=len(summary["species"]))
    meta = {
        "command": command,
        "model": {"spec": model.spec, "weights": model.weights, "kwargs": model.kwargs,
                  "preprocessing": model.preprocessing.to_dict() if model.preprocessing else None},
        "skipped": skipped,
        "config": config.to_dict(),
        "map_grid": list(grid) if grid else None,
        "wall_s": time.perf_counter() - t0,
    }
    write_outputs(summary, run, out_dir, meta)
    return EvaluationResult(summary, run, out_dir)
