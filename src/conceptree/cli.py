"""Command line (thin: parse the arguments, call the library, print).

Errors: a usage mistake (missing argument, unknown option, bad value) prints click's usage
message and exits 2; a :class:`ConceptreeError` (bad image, unknown layer, bad config file...)
prints one ``error:`` line and exits 2; anything else is a bug: one line saying so and where
to report it, exit 1, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click
import typer

from .concepts.options import PAPER_POOL
from .errors import ConceptreeError, InputError

BUG_REPORT = "please report it with the command and this message to the conceptree maintainers (issue tracker)"

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help=(
        "Explain a CNN's decision with a few neuron-traceable concepts.\n\n"
        "Examples:\n\n"
        "  conceptree demo --out demo\n\n"
        "  conceptree explain parrot.jpg --model-config docs/models/bird.json --out parrot"
    ),
)


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an unexpected error."),
) -> None:
    """Explain a CNN's decision with a few neuron-traceable concepts."""


# ---------------------------------------------------------------------- parsing helpers
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
    low, _, high = text.partition(":")
    try:
        return int(low), int(high)
    except ValueError:
        raise InputError(f"--k-range {text!r} must be MIN:MAX, e.g. 15:30") from None


def _check_one_model_source(model_config, model, weights, model_arg, labels=None) -> None:
    """``--model-config`` holds the whole model: refuse it together with the single flags."""
    if model_config is not None and (model is not None or weights is not None or model_arg or labels is not None):
        raise InputError("--model-config holds the model; drop --model/--weights/--model-arg/--labels")


def _load_spec(model: str | None, model_config: str | None, weights, model_arg, labels, trust_checkpoint=False,
               resize=None, crop=None, mean=None, std=None, interpolation=None):
    """The model from ``--model-config`` or ``--model/--weights/--model-arg/--labels``, with
    the preprocessing flags applied on top."""
    from .models.loading import load_model

    _check_one_model_source(model_config, model, weights, model_arg, labels)
    if model_config is not None:
        from .models.config import load_model_config

        spec = load_model_config(model_config).load()
    else:
        spec = load_model(model or "default", weights, _parse_kv(model_arg), labels, trust_checkpoint)
    spec.preprocessing = spec.preprocessing.override(resize=resize, crop=crop, mean=mean, std=std,
                                                     interpolation=interpolation)
    return spec


def _model_source(model_config, model, weights, model_arg, labels):
    """A picklable :class:`~conceptree.tasks.ModelSource` for worker tasks (absolute paths)."""
    from .tasks import ModelSource

    _check_one_model_source(model_config, model, weights, model_arg, labels)
    return ModelSource(config=str(Path(model_config).resolve()) if model_config else None, spec=model or "default",
                       weights=str(Path(weights).resolve()) if weights else None, kwargs=_parse_kv(model_arg),
                       labels=str(Path(labels).resolve()) if labels else None)


def _options(preset: str, features=None, concept_map=None, linkage=None, k_range=None, lam=None, max_neurons=None,
             coverage=None, stability=None, k_rule=None, precision=None, graph=None, hierarchy=None):
    """The preset's :class:`ConceptOptions` with the given flags on top (``max_neurons`` 0 = all,
    ``coverage`` 1 = no cut, ``stability`` = draws, 0 = none)."""
    from .concepts.options import preset as get_preset

    options = get_preset(preset)
    if stability is not None:
        if stability < 0:
            raise InputError(f"--stability {stability} must be >= 0 (draws; 0 = no stability scores)")
        options = options.replace(stability=replace(options.stability, resamples=stability))
    overrides = {"features": features, "concept_map": concept_map, "method": linkage,
                 "k_range": _k_range(k_range) if k_range else None, "k_rule": k_rule, "precision": precision,
                 "graph": graph, "hierarchy": hierarchy}
    options = options.replace(**{key: v for key, v in overrides.items() if v is not None})
    if max_neurons is not None:
        options = options.replace(max_neurons=None if max_neurons == 0 else max_neurons)
    if coverage is not None:
        options = options.replace(coverage=None if coverage == 1 else coverage)
    if lam is not None:
        options = options.replace(distance=replace(options.distance, lam=lam))
    return options


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


# ---------------------------------------------------------------------- shared options
MODEL_HELP = "default | timm:NAME | torchvision:NAME | dcne:PATH | pickle:PATH (or --model-config)."
CONFIG_HELP = "Model configuration file (.json/.toml): spec, weights, kwargs, preprocessing, labels."
DICTIONARY_HELP = ("A concept dictionary of this model (`conceptree dictionary`): with --hierarchy tree or tree+own its "
                   "model-level tree gives the top level (same node ids on every image); with --hierarchy none its "
                   "flat concise list is the explanation.")
HIERARCHY_HELP = ("How the concepts are arranged: own | consensus (a top level over the photo's own clustering) | tree "
                  "| tree+own (a dictionary's model-level tree) | none (a flat list). Default: the best route measured "
                  "for the situation (docs/results/concise.md).")


def _device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return device


def _explain(image: str | None, spec, options, *, target, layers, exclude_layers, k, out, overwrite, quiet,
             neuron_maps, device="cpu", index=None, references=None, exact_references=False, dictionary=None) -> None:
    from .explainer import ConceptExplainer
    from .explanation import OUTPUT_FILES
    from .models.loading import load_image

    spec.model.to(_device(device))

    out_dir = Path(out)
    with _output_folder(out_dir, overwrite, OUTPUT_FILES):
        picture, note = load_image(image)
        if note and not quiet:
            typer.echo(note, err=True)
        extra = {"n_references": references} if references is not None else {}
        explainer = ConceptExplainer.from_spec(spec, options=options, layers=layers or None,
                                               exclude_layers=exclude_layers or None, progress=not quiet,
                                               index=index, exact_references=exact_references, dictionary=dictionary,
                                               **extra)
        result = explainer.explain(picture, target=spec.resolve_target(target), k=k, keep_neuron_maps=neuron_maps)
        result.image_info = replace(result.image_info, file=Path(image).name if image else "chelsea (scikit-image)")
        result.save(out_dir)
    if not quiet:
        lines = result.summary(limit=3)
        typer.echo(f"{lines[0]} -> {out_dir}")
        for text in lines[1:]:
            typer.echo(text)


@app.command("explain")
def explain_cmd(
    image: str = typer.Argument(..., help="Image file (JPEG/PNG/BMP...)."),
    model_config: str | None = typer.Option(None, help=CONFIG_HELP),
    model: str | None = typer.Option(None, help=MODEL_HELP + " Default: the built-in model."),
    trust_checkpoint: bool = typer.Option(False, help="Allow pickle:PATH (unpickling can execute code)."),
    weights: str | None = typer.Option(None, help="Local state dict (loaded with weights_only=True)."),
    model_arg: list[str] = typer.Option([], help="Architecture argument KEY=VALUE (repeatable)."),
    labels: str | None = typer.Option(None, help="Class names, one per line."),
    target: str = typer.Option("auto", help="auto | class index | class name."),
    layers: list[str] = typer.Option([], help="Conv layer names/globs (repeatable)."),
    exclude_layers: list[str] = typer.Option([], help="Globs to drop, e.g. '*downsample*'."),
    preset: str = typer.Option("default", help="default (own-layer maps, fast) | paper (input-level CRP maps of every neuron)."),
    features: str | None = typer.Option(None, help="What is clustered: layer | input (default: the preset's)."),
    concept_map: str | None = typer.Option(None, help="Each concept's map: layer-group | group | representative."),
    lam: float | None = typer.Option(None, help="Weight of the map distance, 1-lam: relevance (default: the preset's)."),
    linkage: str | None = typer.Option(None, help="ward | average | complete | single (default: the preset's)."),
    k_range: str | None = typer.Option(None, help="MIN:MAX searched (default: the preset's)."),
    k: int | None = typer.Option(None, help="Fixed number of concepts (skips the search)."),
    k_rule: str | None = typer.Option(None, help="How k is chosen in the range: silhouette | stability (default: the preset's)."),
    stability: int | None = typer.Option(None, help="Draws of each concept's stability score; 0 = none (default: the preset's)."),
    precision: str | None = typer.Option(None, help="LRP pass in float64 (the same concepts on any thread count) | float32 (faster)."),
    graph: bool | None = typer.Option(None, "--graph/--no-graph", help="Also compute the concept graph: what each "
                                                                      "concept is made of (default: the preset's, on)."),
    max_neurons: int | None = typer.Option(None, help="Cluster the N neurons with the largest |r_p|; 0 = all (default: the preset's)."),
    coverage: float | None = typer.Option(None, help="Also stop at the strongest neurons that cover this fraction of sum |r_p|; 1 = no cut (default: the preset's)."),
    resize: int | None = typer.Option(None, help="Resize the shorter side (default: the model's)."),
    crop: int | None = typer.Option(None, help="Centre crop size; 0 = resize to a square instead."),
    mean: float | None = typer.Option(None, help="Normalisation mean (all channels)."),
    std: float | None = typer.Option(None, help="Normalisation std (all channels)."),
    interpolation: str | None = typer.Option(None, help="bilinear | bicubic resizing (default: the model's)."),
    out: str = typer.Option("conceptree-out", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    neuron_maps: bool = typer.Option(False, help="Also save every clustered neuron's map (float16) in maps.npz."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N"),
    index: str | None = typer.Option(None, help="A reference index of this model (`conceptree index`): "
                                                "each concept's strongest reference images and suggested names."),
    references: int | None = typer.Option(None, help="Reference images per concept (with --index; default 8)."),
    exact_references: bool = typer.Option(False, help="Crop references from their own recomputed LRP pass "
                                                      "(exact, ~30 s) instead of the index's stored peaks."),
    dictionary: str | None = typer.Option(None, help=DICTIONARY_HELP),
    hierarchy: str | None = typer.Option(None, help=HIERARCHY_HELP),
) -> None:
    """Explain one image: concepts, maps and the report in --out."""
    spec = _load_spec(model, model_config, weights, model_arg, labels, trust_checkpoint, resize, crop, mean, std,
                      interpolation)
    options = _options(preset, features, concept_map, linkage, k_range, lam, max_neurons, coverage, stability, k_rule,
                       precision, graph, hierarchy)
    _explain(image, spec, options, target=target, layers=layers, exclude_layers=exclude_layers, k=k, out=out,
             overwrite=overwrite, quiet=quiet, neuron_maps=neuron_maps, device=device, index=index,
             references=references, exact_references=exact_references, dictionary=dictionary)


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("conceptree-demo", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    preset: str = typer.Option("default", help="default | paper (input-level CRP maps of all 21,008 neurons)."),
    coverage: float | None = typer.Option(None, help="Cluster only the strongest neurons covering this fraction of sum |r_p|."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N"),
    index: str | None = typer.Option(None, help="A reference index of this model (`conceptree index`): "
                                                "each concept's strongest reference images and suggested names."),
    references: int | None = typer.Option(None, help="Reference images per concept (with --index; default 8)."),
    dictionary: str | None = typer.Option(None, help=DICTIONARY_HELP),
    hierarchy: str | None = typer.Option(None, help=HIERARCHY_HELP),
) -> None:
    """Explain the built-in photo (scikit-image's 'chelsea') with the built-in EfficientNet-Lite0."""
    spec = _load_spec("default", None, None, [], None)
    _explain(None, spec, _options(preset, coverage=coverage, hierarchy=hierarchy), target="auto", layers=[], exclude_layers=[], k=None, out=out,
             overwrite=overwrite, quiet=quiet, neuron_maps=False, device=device, index=index, references=references,
             dictionary=dictionary)


@app.command("explain-many")
def explain_many_cmd(
    images: str = typer.Argument(..., help="A folder of images, a glob ('photos/*.jpg') or a list file (.txt)."),
    model_config: str | None = typer.Option(None, help=CONFIG_HELP),
    model: str | None = typer.Option(None, help="timm:NAME | torchvision:NAME | default (or --model-config)."),
    weights: str | None = typer.Option(None, help="Local state dict (weights_only=True)."),
    model_arg: list[str] = typer.Option([], help="Architecture argument KEY=VALUE (repeatable)."),
    labels: str | None = typer.Option(None, help="Class names, one per line."),
    preset: str = typer.Option("default", help="default | paper."),
    max_neurons: int | None = typer.Option(None, help="Cluster the N strongest neurons; 0 = all (default: the preset's)."),
    stability: int | None = typer.Option(None, help="Draws of each concept's stability score; 0 = none (default: the preset's)."),
    precision: str | None = typer.Option(None, help="LRP pass in float64 (the same concepts on any thread count) | float32."),
    graph: bool | None = typer.Option(None, "--graph/--no-graph", help="Also compute the concept graph: what each "
                                                                      "concept is made of (default: the preset's, on)."),
    out: str = typer.Option("conceptree-many", help="Run folder: one explanation folder per image, index.json/html."),
    executor: str = typer.Option("auto", help="auto (Ray if installed) | ray | local (sequential, in-process)."),
    ray_address: str | None = typer.Option(None, help="An existing Ray cluster, e.g. ray://host:10001 or auto."),
    workers: int | None = typer.Option(None, help="Concurrent tasks on a local Ray (default: the CPU count)."),
    max_retries: int = typer.Option(2, help="Retries of a task that crashes (not of a bad image)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    index: str | None = typer.Option(None, help="A reference index of this model: references and names per concept."),
    dictionary: str | None = typer.Option(None, help=DICTIONARY_HELP),
    hierarchy: str | None = typer.Option(None, help=HIERARCHY_HELP),
) -> None:
    """Explain every image of a folder, glob or list file (resumable; Ray when installed)."""
    from .runs import explain_many

    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    source = _model_source(model_config, model, weights, model_arg, labels)
    spec = source.load()  # a bad model fails here, once, before any task
    if index is not None or dictionary is not None:  # and so does an index or dictionary of another model
        from .explainer import ConceptExplainer

        ConceptExplainer.from_spec(spec, index=index, dictionary=dictionary,
                                   options=_options(preset, hierarchy=hierarchy))
        index = str(Path(index).resolve()) if index is not None else None
        dictionary = str(Path(dictionary).resolve()) if dictionary is not None else None
    result = explain_many(images, source, out, options=_options(preset, max_neurons=max_neurons, stability=stability, precision=precision,
                                                                   graph=graph, hierarchy=hierarchy),
                          executor=executor,
                          ray_address=ray_address, workers=workers, max_retries=max_retries, progress=not quiet,
                          index=index, dictionary=dictionary)
    if not quiet:
        ok = sum(r.status == "ok" for r in result.records)
        skipped = sum(r.status == "skipped" for r in result.records)
        typer.echo(f"{len(result.records)} images: {ok} explained, {skipped} done earlier, {len(result.failed)} failed "
                   f"({result.executor}, {result.workers} worker(s), {result.wall_s:.0f} s) -> {result.out}/index.html")
        for record in result.failed:
            typer.echo(f"  failed: {record.image}: {record.error}")


@app.command("index")
def index_cmd(
    source: str = typer.Argument(..., help="Reference images: a cub_parts folder (annotations.json: labels and "
                                           "part keypoints), an image folder, a glob or a list file (.txt)."),
    model_config: str | None = typer.Option(None, help=CONFIG_HELP),
    model: str | None = typer.Option(None, help="timm:NAME | torchvision:NAME | default (or --model-config)."),
    weights: str | None = typer.Option(None, help="Local state dict (weights_only=True)."),
    model_arg: list[str] = typer.Option([], help="Architecture argument KEY=VALUE (repeatable)."),
    labels: str | None = typer.Option(None, help="Class names, one per line."),
    out: str = typer.Option("conceptree-index", help="Index folder (index.json, relevance.npy); a rerun resumes."),
    target: str = typer.Option("predicted", help="Class each image is indexed for: predicted | label."),
    batch_size: int | None = typer.Option(None, help="Images per LRP batch (default: the fastest measured, 4)."),
    shard_size: int | None = typer.Option(None, help="Images per task and shard file (default 64)."),
    executor: str = typer.Option("auto", help="auto (Ray if installed) | ray | local (sequential, in-process)."),
    ray_address: str | None = typer.Option(None, help="An existing Ray cluster, e.g. ray://host:10001 or auto."),
    workers: int | None = typer.Option(None, help="Concurrent tasks on a local Ray (default: the CPU count)."),
    overwrite: bool = typer.Option(False, help="Delete an existing index in --out first."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Index a reference set: every neuron's relevance on every image (for references and names)."""
    from .index import IndexBuilder

    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    model_source = _model_source(model_config, model, weights, model_arg, labels)
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


@app.command("dictionary")
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
    from .dictionary import DictionaryBuilder

    out_dir = Path(out)
    if (out_dir / "dictionary.json").exists() and not overwrite:
        raise InputError(f"{out_dir} already holds a dictionary; pass --overwrite or another --out")
    params = {name: v for name, v in (("k", k), ("location_weight", location_weight)) if v is not None}
    dictionary = DictionaryBuilder(method=linkage, progress=not quiet, **params).fit(index)
    dictionary.save(out_dir)
    if not quiet:
        top = ", ".join(f"D{c.id} {100 * c.mean_share:.0f}%" for c in dictionary.concepts[:5])
        typer.echo(f"{dictionary.k} concepts of {dictionary.n_neurons:,} neurons ({int((dictionary.labels < 0).sum())} "
                   f"inactive) from {dictionary.params['images']} images -> {out_dir}; largest mean shares: {top}")


@app.command("atlas")
def atlas_cmd(
    run: str = typer.Argument(..., help="A run folder written by `conceptree explain-many`."),
    model_config: str | None = typer.Option(None, help=CONFIG_HELP),
    model: str | None = typer.Option(None, help="The run's model (or --model-config). Default: the built-in model."),
    weights: str | None = typer.Option(None, help="Local state dict (weights_only=True)."),
    model_arg: list[str] = typer.Option([], help="Architecture argument KEY=VALUE (repeatable)."),
    target: str | None = typer.Option(None, help="Class (index or name) whose explanations form the atlas "
                                                 "(default: the most frequent explained class)."),
    link: float = typer.Option(0.25, help="Concepts match when their mean relevance-weighted overlap is at least this."),
    min_fraction: float = typer.Option(0.5, help="Recurring: in at least this fraction of the images."),
    out: str = typer.Option("conceptree-atlas", help="Output folder (atlas.json, atlas.html)."),
) -> None:
    """A concept atlas across the images of one class of a run: recurring concepts and their neuron cores."""
    import json
    from collections import Counter

    from .explainer import ConceptExplainer
    from .explanation import Explanation
    from .runs import build_atlas, write_atlas

    index_path = Path(run) / "index.json"
    try:
        records = json.loads(index_path.read_text())["images"]
    except (OSError, ValueError, KeyError):
        raise InputError(f"{index_path} not found or unreadable; pass the --out folder of explain-many") from None
    done = [r for r in records if r["status"] in ("ok", "skipped")]
    if not done:
        raise InputError(f"no explanations in {run}")
    explanations = [Explanation.load(Path(run) / r["folder"]) for r in done]
    spec = _load_spec(model, model_config, weights, model_arg, None)
    if target is None:
        wanted = Counter(e.target.index for e in explanations).most_common(1)[0][0]
    else:
        wanted = spec.resolve_target(target)
    chosen = [(e, r["folder"]) for e, r in zip(explanations, done) if e.target.index == wanted]
    if not chosen:
        raise InputError(f"no explanation of class {target!r} in {run}")
    explainer = ConceptExplainer.for_explanation(spec.model, chosen[0][0])
    atlas, _ = build_atlas([e for e, _ in chosen], [f for _, f in chosen], explainer, link=link,
                           min_fraction=min_fraction)
    write_atlas(atlas, [e for e, _ in chosen], [f for _, f in chosen], out)
    recurring = [c for c in atlas.concepts if c.recurring]
    typer.echo(f"{atlas.target}: {atlas.n_images} images, {len(recurring)} recurring concepts, "
               f"{len(atlas.concepts) - len(recurring)} rare -> {out}/atlas.html")


@app.command("evaluate")
def evaluate_cmd(
    data: str = typer.Option(..., help="cub-parts: the cub_parts folder; cub-expert: the saliency_maps folder; faces: a folder with faces.json."),
    dataset: str = typer.Option("cub-parts", help="cub-parts | cub-expert | faces"),
    images: str | None = typer.Option(None, help="cub-expert only: CUB's images folder."),
    annotator: str | None = typer.Option(None, help="cub-expert only: annotator folder (default: first)."),
    model_config: str | None = typer.Option(None, help=CONFIG_HELP),
    model: str | None = typer.Option(None, help="timm:NAME | torchvision:NAME | dcne:PATH (or --model-config)."),
    weights: str | None = typer.Option(None, help="Local state dict (weights_only=True)."),
    model_arg: list[str] = typer.Option([], help="Architecture argument KEY=VALUE (repeatable)."),
    resize: int | None = typer.Option(None, help="Resize the shorter side (default: the model's)."),
    crop: int | None = typer.Option(None, help="Centre crop size; 0 = squash to a square."),
    mean: float | None = typer.Option(None, help="Normalisation mean (all channels)."),
    std: float | None = typer.Option(None, help="Normalisation std (all channels)."),
    interpolation: str | None = typer.Option(None, help="bilinear | bicubic resizing (default: the model's)."),
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
    from .concepts.options import preset as get_preset
    from .evaluation.evaluate import check_trained, evaluate
    from .evaluation.runner import EvaluationConfig
    from .tasks import ModelSource

    _check_one_model_source(model_config, model, weights, model_arg)
    if model_config is not None:
        from .models.config import load_model_config

        cfg = load_model_config(model_config)
        spec_text, weights, kwargs, labels = cfg.spec, cfg.weights, cfg.kwargs, cfg.labels
    elif model is None:
        raise InputError("evaluate needs the model: --model-config FILE or --model SPEC --weights FILE")
    else:
        spec_text, kwargs, labels = model, _parse_kv(model_arg), None
    check_trained(spec_text, weights)
    spec = cfg.load() if model_config is not None else _load_spec(spec_text, None, weights, model_arg, None)
    prep = spec.preprocessing.override(resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation)
    options = _options(preset, None, None, linkage, k_range, lam, max_neurons)
    ours = {"ours": options}
    if paper:
        ours["ours-paper"] = get_preset("paper").replace(max_neurons=paper_neurons)
    for spec_variant in variant:
        name, options_variant = _parse_variant(spec_variant, options)
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
    result = evaluate(data, ModelSource(spec=spec_text, weights=weights, kwargs=kwargs, labels=labels, preprocessing=prep), out=out, dataset=dataset,
                      images=images, annotator=annotator, config=config, cache=cache, species=species,
                      per_species=per_species, limit=limit, workers=workers, executor=executor,
                      ray_address=ray_address, thresholds=thresholds,
                      map_grid=map_grid, progress=not quiet, command="conceptree " + " ".join(sys.argv[1:]))
    if not quiet:
        fk = config.faithfulness_k
        for name, by_k in result.summary["at_k"].items():
            m = by_k.get(fk)
            if m:
                typer.echo(f"{name:24s} @{fk}: mIoU {m['mean_iou']:.3f} (lift {m['lift_iou']:+.3f})  "
                           f"pointing {m['pointing']:.2f} (lift {m['lift_pointing']:+.2f})")
        typer.echo(f"-> {result.out}")


def _parse_variant(text: str, base):
    """``NAME:key=value,...`` -> (name, ConceptOptions) from ``base`` (one-line error on misuse)."""
    name, _, body = text.partition(":")
    if not name or not body:
        raise InputError(f"--variant {text!r}: expected NAME:key=value,... (e.g. 'ours-rep:concept_map=representative')")
    options, distance = {}, {}
    for item in body.split(","):
        key, _, value = item.partition("=")
        try:
            if key in ("features", "concept_map"):
                options[key] = value
            elif key in ("map_norm", "term_norm"):
                distance[key] = value
            elif key == "max_neurons":
                options[key] = None if value == "all" else int(value)
            elif key == "coverage":
                options[key] = None if value in ("none", "1") else float(value)
            elif key == "pool_below_map_size":
                if value not in ("true", "false"):
                    raise ValueError(value)
                options[key] = value == "true"
            elif key == "lam":
                distance[key] = float(value)
            elif key == "linkage":
                options["method"] = value
            elif key == "k_range":
                options[key] = _k_range(value)
            else:
                raise InputError(f"--variant {text!r}: unknown key {key!r}; use features, concept_map, max_neurons, "
                                 "coverage, pool_below_map_size, lam, linkage, k_range, map_norm or term_norm")
        except ValueError as exc:
            if isinstance(exc, ConceptreeError):
                raise
            raise InputError(f"--variant {text!r}: bad value {value!r} for {key}") from None
    result = base.replace(**options)
    if distance:
        result = result.replace(distance=replace(result.distance, **distance))
    return name, result


@app.command("compare")
def compare_cmd(
    explanation: str = typer.Argument(..., help="Folder written by `conceptree explain`."),
    images: list[str] = typer.Argument(..., help="Images to trace the concepts on."),
    model_config: str | None = typer.Option(None, help=CONFIG_HELP),
    model: str | None = typer.Option(None, help="The reference's model (or --model-config). Default: the built-in model."),
    weights: str | None = typer.Option(None, help="Local state dict (weights_only=True)."),
    model_arg: list[str] = typer.Option([], help="Architecture argument KEY=VALUE (repeatable)."),
    target: int | None = typer.Option(None, help="Class to follow (default: the reference's)."),
    missing_fraction: float | None = typer.Option(None, help="Flag a concept missing below this ratio to the reference "
                                                             "(default 0.5, conceptree.compare.MISSING_FRACTION)."),
    new_overlap: float | None = typer.Option(None, help="Flag an image's own concept new when its overlap with every group "
                                                        "is below this (default 0.5, conceptree.compare.NEW_OVERLAP)."),
    explain_new: bool = typer.Option(True, help="Explain each image to find new concepts (costs one explanation each)."),
    max_neurons: int | None = typer.Option(None, help="Neurons clustered when explaining the images (default: the reference's)."),
    out: str = typer.Option("conceptree-compare", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Trace a reference explanation's concepts (neuron groups) on other images."""
    from .compare import OUTPUT_FILES
    from .explainer import ConceptExplainer
    from .explanation import Explanation
    from .models.loading import load_image

    ref = Explanation.load(explanation)
    spec = _load_spec(model, model_config, weights, model_arg, None)
    for path in images:
        load_image(path)  # unreadable images fail here, before any work
    params = {"progress": not quiet}
    if max_neurons is not None:
        params["options"] = ref.options.replace(max_neurons=None if max_neurons == 0 else max_neurons)
    if ref.preprocessing is None:
        params["preprocessing"] = spec.preprocessing
    explainer = ConceptExplainer.for_explanation(spec.model, ref, class_names=spec.class_names or None, **params)
    out_dir = Path(out)
    with _output_folder(out_dir, overwrite, OUTPUT_FILES):
        thresholds = {k: v for k, v in (("missing_fraction", missing_fraction), ("new_overlap", new_overlap)) if v is not None}
        result = explainer.trace(ref, images, target=target, explain_new=explain_new, **thresholds)
        result.save(out_dir)
    if not quiet:
        for im in result.images:
            missing = [c.rank for c in im.concepts if c.missing]
            new = [c.rank for c in im.new_concepts if c.new]
            typer.echo(f"{im.name}: p={im.probability:.2f}; missing concepts {missing or '-'}; new {new or '-'}")
        typer.echo(f"-> {out_dir}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every failure into a clear message and exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    from .runtime import tune_allocator

    tune_allocator()  # explicit and process-wide: keep freed buffers (see conceptree.runtime)
    try:
        app(args=args, prog_name="conceptree", standalone_mode=False)
    except (typer.Abort, click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except (typer.exceptions.TyperException, click.ClickException) as exc:  # usage mistakes: usage + message, exit 2
        if not hasattr(exc, "show"):  # pragma: no cover - typer's own non-click exceptions
            raise
        exc.show()  # typer >= 0.20 vendors click; its ClickException derives from TyperException
        sys.exit(getattr(exc, "exit_code", 2))
    except ConceptreeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # a bug, not the user's mistake
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        typer.echo(f"internal error: {type(exc).__name__}: {first[:200]}; {BUG_REPORT}; rerun with --debug for the "
                   "traceback", err=True)
        sys.exit(1)
