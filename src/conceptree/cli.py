"""Command line: ``conceptree explain`` and ``conceptree demo`` (thin: parse, call the API, save)."""

from __future__ import annotations

import shutil
import sys
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


def _run(model_spec, weights, model_args, image_path, target, layers, exclude, lam, linkage, k_range, k, out, overwrite, quiet, resize, crop, mean, std, labels, trust_checkpoint=False, neuron_maps=False):
    from .explain import OUTPUT_FILES, explain
    from .models.loading import load_image, load_model, preprocess

    out = Path(out)
    existed = out.exists()
    _prepare_out(out, overwrite)
    try:
        spec = load_model(model_spec, weights, _parse_kv(model_args), labels, trust_checkpoint)
        picture, note = load_image(image_path)
        if note and not quiet:
            typer.echo(note, err=True)
        prep = spec.preprocessing.override(resize=resize, crop=crop, mean=mean, std=std)
        x, shown = preprocess(picture, prep)
        target_index = spec.resolve_target(target)
        from .concepts import DistanceConfig

        result = explain(
            spec.model, x, target_index, spec.class_names, shown, layers or None, exclude or None,
            distance=DistanceConfig(lam=lam), method=linkage, k_range=_k_range(k_range), k=k,
            progress=not quiet, model_spec=spec.spec, keep_neuron_maps=neuron_maps,
        )
        result.meta["preprocessing"] = prep.to_dict()
        result.meta["image"]["file"] = Path(image_path).name if image_path else "chelsea (scikit-image)"
        result.save(out)
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for name in OUTPUT_FILES:
                (out / name).unlink(missing_ok=True)
        raise
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
    lam: float = typer.Option(0.5, help="Weight of the map distance (1-lam: relevance)."),
    linkage: str = typer.Option("ward", help="ward (exact, default) | average | complete | single"),
    k_range: str = typer.Option("10:40", help="MIN:MAX searched by silhouette."),
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
) -> None:
    """Explain one image: concepts, maps and figures in --out."""
    _run(model, weights, model_arg, image, target, layers, exclude_layers, lam, linkage, k_range, k, out, overwrite, quiet, resize, crop, mean, std, labels, trust_checkpoint, neuron_maps)


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("conceptree-demo", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Explain the built-in photo (scikit-image's 'chelsea') with the built-in EfficientNet-Lite0."""
    _run("default", None, [], None, "auto", [], [], 0.5, "ward", "10:40", None, out, overwrite, quiet, None, None, None, None, None)


def main() -> None:
    try:
        app(standalone_mode=False)
    except ConceptreeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
