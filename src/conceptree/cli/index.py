"""What a concept is, model-wide: ``index`` (a reference set's relevance) and ``dictionary``
(the model's neurons clustered once over an index)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InputError
from .options import (
    Executor,
    Labels,
    Model,
    ModelArgs,
    ModelConfig,
    RayAddress,
    Weights,
    Workers,
    check_workers,
    model_choice,
)
from .output import check_folder, echo_failures


def index_cmd(
    source: str = typer.Argument(..., help="Reference images: a cub_parts folder (annotations.json: labels and "
                                           "part keypoints), an image folder, a glob or a list file (.txt)."),
    model_config: ModelConfig = None,
    model: Model = None,
    weights: Weights = None,
    model_arg: ModelArgs = [],  # noqa: B006 - typer's way to declare a repeatable option's default
    labels: Labels = None,
    out: str = typer.Option("conceptree-index", help="Index folder (index.json, relevance.npy); a rerun resumes."),
    target: str = typer.Option("predicted", help="Class each image is indexed for: predicted | label."),
    batch_size: int | None = typer.Option(None, help="Images per LRP batch (default: the fastest measured, 4)."),
    shard_size: int | None = typer.Option(None, help="Images per task and shard file (default 64)."),
    executor: Executor = "auto",
    ray_address: RayAddress = None,
    workers: Workers = None,
    overwrite: bool = typer.Option(False, help="Delete an existing index in --out first."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Index a reference set: every neuron's relevance on every image (for references and names)."""
    from ..index import IndexBuilder

    check_workers(workers)
    check_folder(out)
    model_source = model_choice(model_config, model, weights, model_arg, labels).source()
    sizes = {k: v for k, v in {"batch_size": batch_size, "shard_size": shard_size}.items() if v is not None}
    builder = IndexBuilder(target=target, executor=executor, ray_address=ray_address, workers=workers,
                           progress=not quiet, **sizes)
    index = builder.build(source, model_source, out, overwrite=overwrite)
    if not quiet:
        rate = index.meta.get("build", {}).get("images_per_s")
        done = f", {rate:.2f} images/s" if builder.computed_ and rate else ", complete already: nothing to compute"
        typer.echo(f"{len(index)} images x {index.n_neurons:,} neurons, {int((~index.ok).sum())} failed{done} -> {index.path}")
        for image in index.images:
            if not image.ok:
                typer.echo(f"  failed: {image.path}: {image.error}")
    echo_failures(Path(index.path) / "index.json")


def dictionary_cmd(
    index: str = typer.Argument(..., help="A reference index (`conceptree index`)."),
    out: str = typer.Option("conceptree-dictionary", help="Dictionary folder (dictionary.json, labels.npy, linkage.npy)."),
    k: int | None = typer.Option(None, help="Number of concepts (default: the measured default, 50)."),
    location_weight: float | None = typer.Option(None, help="Weight of where the neurons' relevance peaks, next to "
                                                            "their co-relevance (0: co-relevance only; default 3)."),
    linkage: str = typer.Option("ward", help="ward | average | complete | single."),
    overwrite: bool = typer.Option(False, help="Replace an existing dictionary in --out."),
    quiet: bool = typer.Option(False, help="No stage times."),
) -> None:
    """Cluster a model's neurons once over a reference index: concepts that are the same neurons on every image."""
    from ..dictionary import DictionaryBuilder

    out_dir = check_folder(out)
    if (out_dir / "dictionary.json").exists() and not overwrite:
        raise InputError(f"{out_dir} already holds a dictionary; pass --overwrite or another --out")
    params = {name: v for name, v in (("k", k), ("location_weight", location_weight)) if v is not None}
    dictionary = DictionaryBuilder(method=linkage, progress=not quiet, **params).fit(index)
    dictionary.save(out_dir)
    if not quiet:
        top = ", ".join(f"D{c.id} {100 * c.mean_share:.0f}%" for c in dictionary.concepts[:5])
        typer.echo(f"{dictionary.k} concepts of {dictionary.n_neurons:,} neurons ({int((dictionary.labels < 0).sum())} "
                   f"inactive) from {dictionary.params['images']} images -> {out_dir}; largest mean shares: {top}")
