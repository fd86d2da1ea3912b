"""``evaluate``: concept maps, baselines and chance controls scored against human part regions."""

from __future__ import annotations

import sys
from dataclasses import replace

import typer

from ..concepts.options import PAPER_POOL
from ..errors import InputError
from .options import (
    Crop,
    Interpolation,
    Labels,
    Mean,
    Model,
    ModelArgs,
    ModelConfig,
    Resize,
    Std,
    Weights,
    concept_options,
    model_choice,
)
from .output import check_folder, echo_failures


def evaluate_cmd(
    data: str = typer.Option(..., help="cub-parts: the cub_parts folder; cub-expert: the saliency_maps folder; faces: a folder with faces.json."),
    dataset: str = typer.Option("cub-parts", help="cub-parts | cub-expert | faces"),
    images: str | None = typer.Option(None, help="cub-expert only: CUB's images folder."),
    annotator: str | None = typer.Option(None, help="cub-expert only: annotator folder (default: first)."),
    model_config: ModelConfig = None,
    model: Model = None,
    weights: Weights = None,
    model_arg: ModelArgs = [],  # noqa: B006 - typer's way to declare a repeatable option's default
    labels: Labels = None,
    resize: Resize = None,
    crop: Crop = None,
    mean: Mean = None,
    std: Std = None,
    interpolation: Interpolation = None,
    out: str = typer.Option("conceptree-eval", help="Output folder (results.json, table.md, per_species.csv, complexity_iou.png)."),
    cache: str | None = typer.Option(None, help="Per-image map cache (default: OUT/cache); reruns resume from it."),
    species: list[str] = typer.Option([], help="Only these species (name substrings, repeatable)."),
    per_species: int | None = typer.Option(None, help="At most this many photos per species."),
    limit: int | None = typer.Option(None, help="Only the first N photos (after --species and --per-species)."),
    workers: int = typer.Option(1, help="Processes (or Ray tasks) computing maps (CPU threads are split between them)."),
    executor: str = typer.Option("process", help="process (a local pool) | ray (local Ray, or --ray-address)."),
    ray_address: str | None = typer.Option(None, help="An existing Ray cluster for --executor ray."),
    thresholds: str | None = typer.Option(None, help="thresholds.json of a dev run (default: choose here)."),
    preset: str = typer.Option("default", help="Our method's options: default | paper."),
    paper: bool = typer.Option(False, help="Also score the paper's method (input-level maps, representatives) as ours-paper."),
    paper_neurons: int = typer.Option(PAPER_POOL, help="Neurons (largest |r_p|) clustered by ours-paper (all 17k cost ~8 min/photo)."),
    max_neurons: int | None = typer.Option(None, help="Our method: neurons clustered (default: the preset's)."),
    lam: float | None = typer.Option(None, help="Our method: weight of the map distance (default: the preset's)."),
    linkage: str | None = typer.Option(None, help="Our method: ward | average | complete | single."),
    k_range: str | None = typer.Option(None, help="Our method: MIN:MAX searched by silhouette."),
    variant: list[str] = typer.Option([], help="Also score a variant of ours: 'NAME:key=value,...' with keys features, "
                                      "concept_map, max_neurons, lam, linkage, k_range, map_norm, term_norm (repeatable)."),
    dictionary: list[str] = typer.Option([], help="Also score a concept dictionary of the model: NAME=FOLDER or FOLDER "
                                         "(named 'dictionary'; repeatable)."),
    faithfulness_method: list[str] = typer.Option([], help="Measure faithfulness of these methods only (default: all)."),
    region_rule: list[str] = typer.Option(["disks", "slic"], help="Region rules (repeatable; the first is the headline)."),
    randomise_from: list[str] = typer.Option(["all"], help="Model-randomisation control: first module re-initialised, or all (repeatable)."),
    seed: int = typer.Option(0, help="Seed of the random controls."),
    map_grid: int | None = typer.Option(None, help="Protocol variant: average-pool every map to GRIDxGRID first."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Score concept maps, every baseline and chance controls against human part regions."""
    from ..concepts.options import parse_variant
    from ..concepts.options import preset as get_preset
    from ..evaluation.evaluate import check_trained, evaluate, spec_source
    from ..evaluation.runner import EvaluationConfig

    check_folder(out)
    if model_config is None and model is None:
        raise InputError("evaluate needs the model: --model-config FILE or --model SPEC --weights FILE")
    choice = model_choice(model_config, model, weights, model_arg, labels)
    if model_config is not None:
        from ..models.config import load_model_config

        config_file = load_model_config(model_config)
        check_trained(config_file.spec, config_file.weights)  # before loading: random weights are refused at once
    else:
        check_trained(model, weights)
    spec = choice.load(resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation)
    source = spec_source(replace(choice.source(), preprocessing=spec.preprocessing))  # the file's fields, resolved
    options = concept_options(preset, linkage=linkage, k_range=k_range, lam=lam, max_neurons=max_neurons)
    ours = {"ours": options}
    if paper:
        ours["ours-paper"] = get_preset("paper").replace(max_neurons=paper_neurons)
    for text in variant:
        name, options_variant = parse_variant(text, options)
        ours[name] = options_variant
    dictionaries = {}
    for item in dictionary:
        name, sep, folder = item.partition("=")
        name, folder = (name, folder) if sep else ("dictionary", item)
        if not name or not folder or name in dictionaries:
            raise InputError(f"--dictionary {item!r}: expected NAME=FOLDER or FOLDER, each name once")
        dictionaries[name] = folder
    config = EvaluationConfig(ours=ours, region_rules=tuple(region_rule), randomise=tuple(randomise_from), seed=seed,
                              faithfulness_methods=tuple(faithfulness_method), dictionaries=dictionaries)
    result = evaluate(data, source, out=out, dataset=dataset, images=images, annotator=annotator, config=config,
                      cache=cache, species=species, per_species=per_species, limit=limit, workers=workers,
                      executor=executor, ray_address=ray_address, thresholds=thresholds, map_grid=map_grid,
                      progress=not quiet, command="conceptree " + " ".join(sys.argv[1:]))
    if not quiet:
        fk = config.faithfulness_k
        for name, by_k in result.summary["at_k"].items():
            m = by_k.get(fk)
            if m:
                typer.echo(f"{name:24s} @{fk}: mIoU {m['mean_iou']:.3f} (lift {m['lift_iou']:+.3f})  "
                           f"pointing {m['pointing']:.2f} (lift {m['lift_pointing']:+.2f})")
        typer.echo(f"-> {result.out}")
    echo_failures(result.out / "results.json")
