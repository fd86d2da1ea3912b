"""Command line: ``conceptree explain`` and ``conceptree demo`` (thin: parse, call the API, save)."""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import typer

from .errors import ConceptreeError, InputError

app = typer.Typer(
    add_completion=False,
    help=(
        "Explain a CNN's decision with a few neuron-traceable concepts.\n\n"
        "Examples:\n\n"
        "  conceptree demo --out demo\n\n"
        "  conceptree explain parrot.jpg --model timm:mobilenetv2_100 --weights weights.pth "
        "--model-arg num_classes=965 --model-arg pad_type=same --model-arg bn_eps=1e-3 "
        "--resize 224 --crop 0 --mean 0.502 --std 0.502 --labels labels.txt --out parrot"
    ),
)


def _parse_kv(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--model-arg {pair!r} is not KEY=VALUE")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def _k_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        return int(low), int(high)
    except ValueError:
        raise InputError(f"--k-range {text!r} must be MIN:MAX, e.g. 10:40") from None


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {out} exists and is not empty; pass --overwrite or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write to {out} ({exc.strerror}); choose a writable --out") from None


@contextmanager
def _output_folder(out: Path, overwrite: bool, files: tuple[str, ...]):
    """Prepare ``out``; if the body fails, remove what it wrote (the folder, if it was new)."""
    existed = out.exists()
    _prepare_out(out, overwrite)
    try:
        yield out
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for name in files:
                (out / name).unlink(missing_ok=True)
        raise


def _run(model_spec, weights, model_args, image_path, target, layers, exclude, lam, linkage, k_range, k, out, overwrite, quiet, resize, crop, mean, std, labels, trust_checkpoint=False, neuron_maps=False, interpolation=None, max_neurons=None, preset="default", features=None, concept_map=None):
    from .concepts.options import preset as get_preset
    from .explain import OUTPUT_FILES, explain
    from .models.loading import load_image, load_model, preprocess

    out = Path(out)
    with _output_folder(out, overwrite, OUTPUT_FILES):
        spec = load_model(model_spec, weights, _parse_kv(model_args), labels, trust_checkpoint)
        picture, note = load_image(image_path)
        if note and not quiet:
            typer.echo(note, err=True)
        prep = spec.preprocessing.override(resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation)
        x, shown = preprocess(picture, prep)
        target_index = spec.resolve_target(target)
        options = get_preset(preset)
        overrides = {"features": features, "concept_map": concept_map, "method": linkage,
                     "k_range": _k_range(k_range) if k_range else None}
        options = options.replace(**{key: v for key, v in overrides.items() if v is not None})
        if max_neurons is not None:
            options = options.replace(max_neurons=None if max_neurons == 0 else max_neurons)
        if lam is not None:
            options = options.replace(distance=replace(options.distance, lam=lam))
        result = explain(
            spec.model, x, target_index, spec.class_names, shown, layers or None, exclude or None,
            distance=options.distance, method=options.method, k_range=options.k_range, k=k,
            progress=not quiet, model_spec=spec.spec, keep_neuron_maps=neuron_maps, max_neurons=options.max_neurons,
            features=options.features, concept_map=options.concept_map,
        )
        result.meta["preset"] = preset
        result.meta["preprocessing"] = prep.to_dict()
        result.meta["image"]["file"] = Path(image_path).name if image_path else "chelsea (scikit-image)"
        result.save(out)
    if not quiet:
        typer.echo(f"{result.target_name} (p={result.probability:.2f}): {result.concepts.k} concepts -> {out}")
        for concept in result.concepts.concepts[:10]:
            rep = concept.representative
            typer.echo(f"  #{concept.rank:<3} share {100 * concept.share:5.1f}%  {concept.size:5d} neurons  rep {rep.layer}:{rep.channel}")


@app.command("explain")
def explain_cmd(
    image: str = typer.Argument(..., help="Image file (JPEG/PNG/BMP...)."),
    model: str = typer.Option("default", help="default | timm:NAME | torchvision:NAME | pickle:PATH"),
    trust_checkpoint: bool = typer.Option(False, help="Allow pickle:PATH (unpickling can execute code)."),
    weights: str | None = typer.Option(None, help="Local state dict (loaded with weights_only=True)."),
    model_arg: list[str] = typer.Option([], help="Architecture argument KEY=VALUE (repeatable)."),
    target: str = typer.Option("auto", help="auto | class index | class name."),
    layers: list[str] = typer.Option([], help="Conv layer names/globs (repeatable)."),
    exclude_layers: list[str] = typer.Option([], help="Globs to drop, e.g. '*downsample*'."),
    preset: str = typer.Option("default", help="default (own-layer maps, fast) | paper (input-level CRP maps of every neuron)."),
    features: str | None = typer.Option(None, help="What is clustered: layer | input (default: the preset's)."),
    concept_map: str | None = typer.Option(None, help="Each concept's map: layer-group | group | representative."),
    lam: float | None = typer.Option(None, help="Weight of the map distance, 1-lam: relevance (default: the preset's)."),
    linkage: str | None = typer.Option(None, help="ward (exact) | average | complete | single (default: the preset's)."),
    k_range: str | None = typer.Option(None, help="MIN:MAX searched by silhouette (default: the preset's)."),
    k: int | None = typer.Option(None, help="Fixed number of concepts (skips the search)."),
    resize: int | None = typer.Option(None, help="Resize the shorter side (default: model's)."),
    crop: int | None = typer.Option(None, help="Centre crop size; 0 = resize to a square instead."),
    mean: float | None = typer.Option(None, help="Normalisation mean (all channels)."),
    std: float | None = typer.Option(None, help="Normalisation std (all channels)."),
    labels: str | None = typer.Option(None, help="Class names, one per line."),
    out: str = typer.Option("conceptree-out", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    neuron_maps: bool = typer.Option(False, help="Also save every neuron's pooled map (float16) in maps.npz."),
    interpolation: str | None = typer.Option(None, help="bilinear | bicubic resizing (default: model's)."),
    max_neurons: int | None = typer.Option(None, help="Cluster the N neurons with the largest |r_p|; 0 = all (default: the preset's)."),
) -> None:
    """Explain one image: concepts, maps and figures in --out."""
    _run(model, weights, model_arg, image, target, layers, exclude_layers, lam, linkage, k_range, k, out, overwrite, quiet,
         resize, crop, mean, std, labels, trust_checkpoint, neuron_maps, interpolation, max_neurons, preset, features, concept_map)


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("conceptree-demo", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Explain the built-in photo (scikit-image's 'chelsea') with the built-in EfficientNet-Lite0."""
    _run("default", None, [], None, "auto", [], [], None, None, None, None, out, overwrite, quiet, None, None, None, None, None)


@app.command("evaluate")
def evaluate_cmd(
    data: str = typer.Option(..., help="cub-parts: the cub_parts folder; cub-expert: the saliency_maps folder."),
    dataset: str = typer.Option("cub-parts", help="cub-parts | cub-expert"),
    images: str | None = typer.Option(None, help="cub-expert only: CUB's images folder."),
    annotator: str | None = typer.Option(None, help="cub-expert only: annotator folder (default: first)."),
    model: str = typer.Option(..., help="timm:NAME | torchvision:NAME | dcne:PATH (see `explain`)."),
    weights: str | None = typer.Option(None, help="Local state dict (weights_only=True)."),
    model_arg: list[str] = typer.Option([], help="Architecture argument KEY=VALUE (repeatable)."),
    resize: int | None = typer.Option(None, help="Resize the shorter side (default: model's)."),
    crop: int | None = typer.Option(None, help="Centre crop size; 0 = squash to a square."),
    mean: float | None = typer.Option(None, help="Normalisation mean (all channels)."),
    std: float | None = typer.Option(None, help="Normalisation std (all channels)."),
    interpolation: str | None = typer.Option(None, help="bilinear | bicubic resizing (default: model's)."),
    out: str = typer.Option("conceptree-eval", help="Output folder (results.json, table.md, per_species.csv, complexity_iou.png)."),
    cache: str | None = typer.Option(None, help="Per-image map cache (default: OUT/cache); reruns resume from it."),
    species: list[str] = typer.Option([], help="Only these species (name substrings, repeatable)."),
    per_species: int | None = typer.Option(None, help="At most this many photos per species."),
    limit: int | None = typer.Option(None, help="Only the first N photos (after --species and --per-species)."),
    workers: int = typer.Option(1, help="Processes computing maps (CPU threads are split between them)."),
    thresholds: str | None = typer.Option(None, help="thresholds.json of a dev run (default: choose here)."),
    preset: str = typer.Option("default", help="Our method's options: default | paper."),
    paper: bool = typer.Option(False, help="Also score the paper's method (input-level maps, representatives) as ours-paper."),
    paper_neurons: int = typer.Option(2000, help="Neurons (largest |r_p|) clustered by ours-paper (all 17k cost ~8 min/photo)."),
    max_neurons: int | None = typer.Option(None, help="Our method: neurons clustered (default: the preset's)."),
    lam: float | None = typer.Option(None, help="Our method: weight of the map distance (default: the preset's)."),
    linkage: str | None = typer.Option(None, help="Our method: ward | average | complete | single."),
    k_range: str | None = typer.Option(None, help="Our method: MIN:MAX searched by silhouette."),
    variant: list[str] = typer.Option([], help="Also score a variant of ours: 'NAME:key=value,...' with keys features, "
                                      "concept_map, max_neurons, lam, linkage, k_range, map_norm, term_norm (repeatable)."),
    faithfulness_method: list[str] = typer.Option([], help="Measure faithfulness of these methods only (default: all)."),
    region_rule: list[str] = typer.Option(["disks", "slic"], help="Region rules (repeatable; the first is the headline)."),
    randomise_from: list[str] = typer.Option(["all"], help="Model-randomisation control: first module re-initialised, or all (repeatable)."),
    seed: int = typer.Option(0, help="Seed of the random controls."),
    map_grid: int | None = typer.Option(None, help="Protocol variant: average-pool every map to GRIDxGRID first."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Score concept maps, every baseline and chance controls against human part regions."""
    import json
    import time

    from .concepts.options import preset as get_preset
    from .evaluation.outputs import write_outputs
    from .evaluation.runner import (
        EvaluationConfig,
        ModelArgs,
        build_cache,
        dataset_parts,
        evaluate_images,
        summarise_run,
    )

    t0 = time.perf_counter()
    if weights is None and not model.startswith(("dcne:", "default")):
        raise InputError(f"{model} without --weights has random weights; evaluate a trained model (--weights FILE)")
    kwargs = _parse_kv(model_arg)
    from .models.loading import load_model

    probe = load_model(model, weights, kwargs)
    prep = probe.preprocessing.override(resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation)
    model_args = ModelArgs(model, weights, kwargs, None, prep)
    if dataset == "cub-parts":
        from .evaluation.cub_parts import load_cub_parts, select

        items, skipped = load_cub_parts(data)
    elif dataset == "cub-expert":
        from .evaluation.cub_expert import load_cub_expert
        from .evaluation.cub_parts import select

        if images is None:
            raise InputError("--dataset cub-expert needs --images (CUB_200_2011/images)")
        items, skipped = load_cub_expert(data, images, annotator), {}
    else:
        raise InputError(f"unknown --dataset {dataset!r}; use cub-parts or cub-expert")
    if not items:
        raise InputError(f"no evaluable images in {data} (none has a target class for this model)")
    items = select(items, species or None, per_species)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be >= 1, got {limit}")
        items = items[:limit]
    fixed = None
    if thresholds is not None:
        try:
            found = json.loads(Path(thresholds).read_text())
            fixed = {rule: {k: int(v) for k, v in table.items()} for rule, table in found.items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"cannot read --thresholds {thresholds} ({exc}); expected a dev run's thresholds.json") from None
    options = get_preset(preset)
    overrides = {"max_neurons": max_neurons, "method": linkage, "k_range": _k_range(k_range) if k_range else None}
    options = options.replace(**{k: v for k, v in overrides.items() if v is not None})
    if lam is not None:
        options = options.replace(distance=replace(options.distance, lam=lam))
    ours = {"ours": options}
    if paper:
        ours["ours-paper"] = get_preset("paper").replace(max_neurons=paper_neurons)
    for spec_text in variant:
        name, options_variant = _parse_variant(spec_text, options)
        ours[name] = options_variant
    config = EvaluationConfig(ours=ours, region_rules=tuple(region_rule), randomise=tuple(randomise_from), seed=seed,
                              faithfulness_methods=tuple(faithfulness_method))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache) if cache else out_dir / "cache"
    build_cache(items, model_args, cache_dir, workers, progress=not quiet)
    grid = (map_grid, map_grid) if map_grid else None
    run = evaluate_images(items, model_args, cache_dir, config, progress=not quiet, map_grid=grid)
    parts = dataset_parts(items)
    summary = summarise_run(run, parts, config, fixed)
    summary.update(dataset=dataset, n_images=len(items), n_species=len(summary["species"]))
    meta = {
        "command": "conceptree " + " ".join(sys.argv[1:]),
        "model": {"spec": model, "weights": weights, "kwargs": kwargs, "preprocessing": prep.to_dict()},
        "skipped": skipped,
        "config": config.to_dict(),
        "map_grid": list(grid) if grid else None,
        "wall_s": time.perf_counter() - t0,
    }
    write_outputs(summary, run, out_dir, meta)
    if not quiet:
        fk = config.faithfulness_k
        for name, by_k in summary["at_k"].items():
            m = by_k.get(fk)
            if m:
                typer.echo(f"{name:24s} @{fk}: mIoU {m['mean_iou']:.3f} (lift {m['lift_iou']:+.3f})  "
                           f"pointing {m['pointing']:.2f} (lift {m['lift_pointing']:+.2f})")
        typer.echo(f"-> {out_dir}")


def _parse_variant(text: str, base):
    """``NAME:key=value,...`` -> (name, ConceptOptions) from ``base`` (one-line error on misuse)."""
    name, _, body = text.partition(":")
    if not name or not body:
        raise InputError(f"--variant {text!r}: expected NAME:key=value,... (e.g. 'ours-rep:concept_map=representative')")
    options, distance = {}, {}
    for item in body.split(","):
        key, _, value = item.partition("=")
        if key in ("features", "concept_map", "map_norm", "term_norm"):
            (distance if key in ("map_norm", "term_norm") else options)[key] = value
        elif key == "max_neurons":
            options[key] = None if value == "all" else int(value)
        elif key == "lam":
            distance[key] = float(value)
        elif key == "linkage":
            options["method"] = value
        elif key == "k_range":
            options[key] = _k_range(value)
        else:
            raise InputError(f"--variant {text!r}: unknown key {key!r}; use features, concept_map, max_neurons, lam, "
                             "linkage, k_range, map_norm or term_norm")
    result = base.replace(**options)
    if distance:
        result = result.replace(distance=replace(result.distance, **distance))
    return name, result


@app.command("compare")
def compare_cmd(
    explanation: str = typer.Argument(..., help="Folder written by `conceptree explain`."),
    images: list[str] = typer.Argument(..., help="Images to trace the concepts on."),
    model: str = typer.Option("default", help="The reference's model: default | timm:NAME | torchvision:NAME | dcne:PATH"),
    weights: str | None = typer.Option(None, help="Local state dict (weights_only=True)."),
    model_arg: list[str] = typer.Option([], help="Architecture argument KEY=VALUE (repeatable)."),
    target: int | None = typer.Option(None, help="Class to follow (default: the reference's)."),
    missing_fraction: float = typer.Option(0.5, help="Flag a concept missing below this ratio to the reference."),
    new_overlap: float = typer.Option(0.5, help="Flag an image's own concept new when its overlap with every group is below this."),
    explain_new: bool = typer.Option(True, help="Explain each image to find new concepts (costs one explanation each)."),
    max_neurons: int | None = typer.Option(None, help="Neurons clustered when explaining the images (default: the reference's)."),
    out: str = typer.Option("conceptree-compare", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Trace a reference explanation's concepts (neuron groups) on other images."""
    from .compare import OUTPUT_FILES, compare
    from .explain import Explanation
    from .models.loading import load_image, load_model

    ref = Explanation.load(explanation)
    spec = load_model(model, weights, _parse_kv(model_arg))
    for path in images:
        load_image(path)  # unreadable images fail here, before any work
    out_dir = Path(out)
    with _output_folder(out_dir, overwrite, OUTPUT_FILES):
        result = compare(ref, spec.model, images, target, missing_fraction=missing_fraction, new_overlap=new_overlap,
                         explain_new=explain_new, max_neurons=max_neurons, progress=not quiet)
        result.save(out_dir)
    if not quiet:
        for im in result.images:
            missing = [c.rank for c in im.concepts if c.missing]
            new = [c.rank for c in im.new_concepts if c.new]
            typer.echo(f"{im.name}: p={im.probability:.2f}; missing concepts {missing or '-'}; new {new or '-'}")
        typer.echo(f"-> {out_dir}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except ConceptreeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
