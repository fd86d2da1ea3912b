"""Many images: ``explain-many`` (one explanation per image) and ``atlas`` (one class of a run)."""

from __future__ import annotations

from pathlib import Path

import typer

from .options import (
    Dictionary,
    Executor,
    Graph,
    Hierarchy,
    Labels,
    Model,
    ModelArgs,
    ModelConfig,
    Precision,
    RayAddress,
    Stability,
    Weights,
    Workers,
    check_workers,
    concept_options,
    model_choice,
)
from .output import check_folder, echo_failures


def explain_many_cmd(
    images: str = typer.Argument(..., help="A folder of images, a glob ('photos/*.jpg') or a list file (.txt)."),
    model_config: ModelConfig = None,
    model: Model = None,
    weights: Weights = None,
    model_arg: ModelArgs = [],  # noqa: B006 - typer's way to declare a repeatable option's default
    labels: Labels = None,
    preset: str = typer.Option("default", help="default | paper."),
    max_neurons: int | None = typer.Option(None, help="Cluster the N strongest neurons; 0 = all (default: the preset's)."),
    stability: Stability = None,
    precision: Precision = None,
    graph: Graph = None,
    out: str = typer.Option("conceptree-many", help="Run folder: one explanation folder per image, index.json/html."),
    executor: Executor = "auto",
    ray_address: RayAddress = None,
    workers: Workers = None,
    max_retries: int = typer.Option(2, help="Retries of a task that crashes (not of a bad image)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    index: str | None = typer.Option(None, help="A reference index of this model: references and names per concept."),
    dictionary: Dictionary = None,
    hierarchy: Hierarchy = None,
) -> None:
    """Explain every image of a folder, glob or list file (resumable; Ray when installed)."""
    from ..runs import explain_many

    check_workers(workers)
    check_folder(out)
    source = model_choice(model_config, model, weights, model_arg, labels).source()
    spec = source.load()  # a bad model fails here, once, before any task
    if index is not None or dictionary is not None:  # and so does an index or dictionary of another model
        from ..explainer import ConceptExplainer

        ConceptExplainer.from_spec(spec, index=index, dictionary=dictionary,
                                   options=concept_options(preset, hierarchy=hierarchy))
        index = str(Path(index).resolve()) if index is not None else None
        dictionary = str(Path(dictionary).resolve()) if dictionary is not None else None
    options = concept_options(preset, max_neurons=max_neurons, stability=stability, precision=precision, graph=graph,
                              hierarchy=hierarchy)
    result = explain_many(images, source, out, options=options, executor=executor, ray_address=ray_address,
                          workers=workers, max_retries=max_retries, progress=not quiet, index=index,
                          dictionary=dictionary)
    if not quiet:
        ok = sum(r.status == "ok" for r in result.records)
        skipped = sum(r.status == "skipped" for r in result.records)
        typer.echo(f"{len(result.records)} images: {ok} explained, {skipped} done earlier, {len(result.failed)} failed "
                   f"({result.executor}, {result.workers} worker(s), {result.wall_s:.0f} s) -> {result.out}/index.html")
        for record in result.failed:
            typer.echo(f"  failed: {record.image}: {record.error}")
    echo_failures(Path(result.out) / "index.json")


def atlas_cmd(
    run: str = typer.Argument(..., help="A run folder written by `conceptree explain-many`."),
    model_config: ModelConfig = None,
    model: Model = None,
    weights: Weights = None,
    model_arg: ModelArgs = [],  # noqa: B006
    labels: Labels = None,
    target: str | None = typer.Option(None, help="Class (index or name) whose explanations form the atlas "
                                                 "(default: the most frequent explained class)."),
    link: float = typer.Option(0.25, help="Concepts match when their mean relevance-weighted overlap is at least this."),
    min_fraction: float = typer.Option(0.5, help="Recurring: in at least this fraction of the images."),
    out: str = typer.Option("conceptree-atlas", help="Output folder (atlas.json, atlas.html)."),
) -> None:
    """A concept atlas across the images of one class of a run: recurring concepts and their neuron cores."""
    from ..runs import atlas_from_run

    check_folder(out)
    atlas = atlas_from_run(run, model_choice(model_config, model, weights, model_arg, labels), target=target, link=link,
                           min_fraction=min_fraction, out=out)
    recurring = [c for c in atlas.concepts if c.recurring]
    typer.echo(f"{atlas.target}: {atlas.n_images} images, {len(recurring)} recurring concepts, "
               f"{len(atlas.concepts) - len(recurring)} rare -> {out}/atlas.html")
