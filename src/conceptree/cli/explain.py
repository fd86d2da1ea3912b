"""One image: ``explain``, ``demo`` and ``compare`` (a reference's concepts on other images)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from .options import (
    Crop,
    Device,
    Dictionary,
    Graph,
    Hierarchy,
    Index,
    Interpolation,
    Labels,
    Mean,
    Model,
    ModelArgs,
    ModelConfig,
    Precision,
    References,
    Resize,
    Stability,
    Std,
    TrustCheckpoint,
    Weights,
    concept_options,
    model_choice,
)
from .output import output_folder


def _explain(image: str | None, spec, options, *, target, layers, exclude_layers, k, out, overwrite, quiet,
             neuron_maps, device="cpu", index=None, references=None, exact_references=False, dictionary=None) -> None:
    from ..explainer import ConceptExplainer
    from ..explanation import OUTPUT_FILES
    from ..models.loading import load_image
    from ..runtime import resolve_device

    spec.model.to(resolve_device(device))

    out_dir = Path(out)
    with output_folder(out_dir, overwrite, OUTPUT_FILES):
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


def explain_cmd(
    image: str = typer.Argument(..., help="Image file (JPEG/PNG/BMP...)."),
    model_config: ModelConfig = None,
    model: Model = None,
    trust_checkpoint: TrustCheckpoint = False,
    weights: Weights = None,
    model_arg: ModelArgs = [],  # noqa: B006 - typer's way to declare a repeatable option's default
    labels: Labels = None,
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
    stability: Stability = None,
    precision: Precision = None,
    graph: Graph = None,
    max_neurons: int | None = typer.Option(None, help="Cluster the N neurons with the largest |r_p|; 0 = all (default: the preset's)."),
    coverage: float | None = typer.Option(None, help="Also stop at the strongest neurons that cover this fraction of sum |r_p|; 1 = no cut (default: the preset's)."),
    resize: Resize = None,
    crop: Crop = None,
    mean: Mean = None,
    std: Std = None,
    interpolation: Interpolation = None,
    out: str = typer.Option("conceptree-out", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    neuron_maps: bool = typer.Option(False, help="Also save every clustered neuron's map (float16) in maps.npz."),
    device: Device = "cpu",
    index: Index = None,
    references: References = None,
    exact_references: bool = typer.Option(False, help="Crop references from their own recomputed LRP pass "
                                                      "(exact, ~30 s) instead of the index's stored peaks."),
    dictionary: Dictionary = None,
    hierarchy: Hierarchy = None,
) -> None:
    """Explain one image: concepts, maps and the report in --out."""
    spec = model_choice(model_config, model, weights, model_arg, labels, trust_checkpoint).load(
        resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation)
    options = concept_options(preset, features, concept_map, linkage, k_range, lam, max_neurons, coverage, stability,
                              k_rule, precision, graph, hierarchy)
    _explain(image, spec, options, target=target, layers=layers, exclude_layers=exclude_layers, k=k, out=out,
             overwrite=overwrite, quiet=quiet, neuron_maps=neuron_maps, device=device, index=index,
             references=references, exact_references=exact_references, dictionary=dictionary)


def demo_cmd(
    out: str = typer.Option("conceptree-demo", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    preset: str = typer.Option("default", help="default | paper (input-level CRP maps of all 21,008 neurons)."),
    coverage: float | None = typer.Option(None, help="Cluster only the strongest neurons covering this fraction of sum |r_p|."),
    device: Device = "cpu",
    index: Index = None,
    references: References = None,
    dictionary: Dictionary = None,
    hierarchy: Hierarchy = None,
) -> None:
    """Explain the built-in photo (scikit-image's 'chelsea') with the built-in EfficientNet-Lite0."""
    spec = model_choice(model="default").load()
    _explain(None, spec, concept_options(preset, coverage=coverage, hierarchy=hierarchy), target="auto", layers=[],
             exclude_layers=[], k=None, out=out, overwrite=overwrite, quiet=quiet, neuron_maps=False, device=device,
             index=index, references=references, dictionary=dictionary)


def compare_cmd(
    explanation: str = typer.Argument(..., help="Folder written by `conceptree explain`."),
    images: list[str] = typer.Argument(..., help="Images to trace the concepts on."),
    model_config: ModelConfig = None,
    model: Model = None,
    weights: Weights = None,
    model_arg: ModelArgs = [],  # noqa: B006
    labels: Labels = None,
    target: int | None = typer.Option(None, help="Class to follow (default: the reference's)."),
    missing_fraction: float | None = typer.Option(None, help="Flag a concept missing below this ratio to the reference "
                                                             "(default 0.5, conceptree.comparison.MISSING_FRACTION)."),
    new_overlap: float | None = typer.Option(None, help="Flag an image's own concept new when its overlap with every group "
                                                        "is below this (default 0.5, conceptree.comparison.NEW_OVERLAP)."),
    explain_new: bool = typer.Option(True, help="Explain each image to find new concepts (costs one explanation each)."),
    max_neurons: int | None = typer.Option(None, help="Neurons clustered when explaining the images (default: the reference's)."),
    out: str = typer.Option("conceptree-compare", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Trace a reference explanation's concepts (neuron groups) on other images."""
    from ..comparison import OUTPUT_FILES
    from ..explainer import ConceptExplainer
    from ..explanation import Explanation
    from ..models.loading import load_image

    ref = Explanation.load(explanation)
    spec = model_choice(model_config, model, weights, model_arg, labels).load()
    for path in images:
        load_image(path)  # unreadable images fail here, before any work
    params = {"progress": not quiet}
    if max_neurons is not None:
        params["options"] = ref.options.replace(max_neurons=None if max_neurons == 0 else max_neurons)
    if ref.preprocessing is None:
        params["preprocessing"] = spec.preprocessing
    explainer = ConceptExplainer.for_explanation(spec.model, ref, class_names=spec.class_names or None, **params)
    out_dir = Path(out)
    with output_folder(out_dir, overwrite, OUTPUT_FILES):
        thresholds = {k: v for k, v in (("missing_fraction", missing_fraction), ("new_overlap", new_overlap)) if v is not None}
        result = explainer.trace(ref, images, target=target, explain_new=explain_new, **thresholds)
        result.save(out_dir)
    if not quiet:
        for im in result.images:
            missing = [c.rank for c in im.concepts if c.missing]
            new = [c.rank for c in im.new_concepts if c.new]
            typer.echo(f"{im.name}: p={im.probability:.2f}; missing concepts {missing or '-'}; new {new or '-'}")
        typer.echo(f"-> {out_dir}")
