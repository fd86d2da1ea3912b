"""Which CNN families the CRP engine explains: status, size, conservation error, speed.

Families (the zoo):

* every torchvision classification CNN family (:data:`TORCHVISION`; the builders of
  ``torchvision.models.list_models()`` not listed are attention-based: ViT, Swin, MaxViT —
  :func:`torchvision_coverage` checks that nothing else is missing);
* every timm architecture family (``timm.list_modules()``), one small variant each: the
  smallest by parameter count among the module's models (``test_*`` models excluded), or the
  variant in :data:`TIMM` where that module already has one. A family is skipped as
  **attention-based** when that variant has a multi-head attention module (a ``num_heads`` or
  ``qkv`` attribute), a token-attention module (class name ending in ``Attention``), or its
  traced graph multiplies activation matrices (``scaled_dot_product_attention``, ``matmul``,
  ``bmm``, ``einsum``: attention or state-space token mixing), and as **not convolutional** when
  it has fewer than 4 convolutions with a spatial kernel (MLP-Mixer, Sequencer's LSTMs). The
  filter is :func:`timm_family`; it is computed, not a hand-made list.

For each family (random weights, BatchNorm statistics and gammas randomised with a fixed seed):

* status: ``ok`` or the one-line error;
* conv layers and neurons (channels) the engine exposes;
* conservation error ``max |sum(y_p) - r_p| / max|r|`` over the most relevant and one random
  channel of every layer (``max|r|`` of that layer), at ``--conservation-size`` (96x96: one
  propagation per layer, so the largest families take minutes at 224), or at the model's own
  input size where 96x96 is refused by the model;
* class heatmap sum vs the target logit (same input);
* conditional maps per second at batch 32 and ``--size`` (224x224), estimated for all channels
  from the 32 most relevant channels of 8 evenly spaced layers (see :func:`measure_speed`), for
  the families of :data:`SPEED_FAMILIES` (``--part speed``; the conservation part carries the
  last measured rate of a family over).

    python benchmarks/architectures.py --part conservation --out benchmarks/results/architectures.json --table docs/architectures.md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision

from conceptree.attribution import CRPEngine
from conceptree.errors import InputError

TORCHVISION = [
    "alexnet", "vgg16_bn", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "squeezenet1_1", "densenet121",
    "inception_v3", "googlenet", "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0",
    "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny",
]
#: torchvision builders that are attention-based (skipped)
TORCHVISION_ATTENTION = ("vit_", "swin_", "maxvit_")
TIMM = ["efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "convnext_tiny", "regnety_002", "densenet121",
        "resnet18"]
#: the speed estimator's check: ResNet-34 has a measured all-channel rate in crp_throughput.json
SPEED_CHECK = [("torchvision", "resnet34")]
#: families whose maps/s are measured (``--part speed``): the ones listed before the zoo
SPEED_FAMILIES = {f"torchvision:{n}" for n in TORCHVISION} | {f"timm:{n}" for n in TIMM} | {"torchvision:resnet34"}
#: fewer convolutions with a spatial kernel than this: not a convolutional backbone
MIN_SPATIAL_CONVS = 4
#: the start of the attention families' section (benchmarks/attention_zoo.py writes it, this script keeps it)
ATTENTION_MARKER = "<!-- attention families: benchmarks/attention_zoo.py -->"
_MATRIX_PRODUCTS = {"matmul", "bmm", "einsum", "scaled_dot_product_attention", "baddbmm"}


def torchvision_coverage() -> list[str]:
    """torchvision builder modules with neither a row in :data:`TORCHVISION` nor an attention skip."""
    covered = {getattr(torchvision.models, n).__module__ for n in TORCHVISION}
    missing = set()
    for name in torchvision.models.list_models(module=torchvision.models):
        if name.startswith(TORCHVISION_ATTENTION):
            continue
        module = getattr(torchvision.models, name).__module__
        if module not in covered:
            missing.add(module)
    return sorted(missing)


def _graph_products(model: torch.nn.Module) -> list[str]:
    """Names of matrix products between traced values (attention, state-space mixing)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable symbolically: decided by the modules alone
        return []
    found = []
    for node in graph.nodes:
        name = getattr(node.target, "__name__", str(node.target))
        if node.op in ("call_function", "call_method") and name in _MATRIX_PRODUCTS:
            found.append(name)
    return found


def timm_family(module: str) -> dict:
    """The small variant of a timm module and whether it is skipped (module docstring)."""
    listed = [n for n in TIMM if n in timm.list_models(module=module)]
    candidates = listed or [n for n in timm.list_models(module=module) if not n.startswith("test_")]
    best: tuple[str, int, torch.nn.Module] | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in candidates:
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False)
            except Exception:  # noqa: BLE001 - variants that cannot be built here are passed over
                continue
            size = sum(p.numel() for p in model.parameters())
            if best is None or size < best[1]:
                best = (name, size, model)
    if best is None:
        return {"module": module, "model": None, "skip": "no variant can be built"}
    name, size, model = best
    row: dict = {"module": module, "model": name, "params": size, "skip": None}
    heads = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "num_heads") or hasattr(m, "qkv")})
    token = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Attention")})
    spatial = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and max(m.kernel_size) > 1)
    if heads or token:
        row["skip"] = f"attention-based ({', '.join(sorted(set(heads + token))[:2])})"
    elif spatial < MIN_SPATIAL_CONVS:
        row["skip"] = f"not convolutional ({spatial} spatial convolutions)"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            products = _graph_products(timm.create_model(name, pretrained=False).eval())
        if products:
            row["skip"] = f"attention-based (token mixing by {products[0]})"
    return row


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                if module.weight is not None:
                    module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                    module.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


def build(source: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = (getattr(torchvision.models, name)(**kwargs) if source == "torchvision"
                 else timm.create_model(name, pretrained=False))
    return randomise_batchnorm(model)


def _own_size(model: torch.nn.Module) -> int:
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    return int(size[-1])


SPEED_LAYERS = 8


def measure_speed(source: str, name: str, size: int) -> dict:
    """Estimated all-channel rate of conditional maps at batch 32.

    The 32 most relevant channels of ``SPEED_LAYERS`` evenly spaced layers (first and deepest
    included) are timed; each layer's time per map ``t_l`` is weighted by its channel count
    ``C_l``: ``rate = sum C_l / sum C_l t_l``, the rate at which all channels of the sampled
    layers would stream. (A plain mean of per-layer rates overstates it: shallow layers are
    cheap and few.) Checked against a measured all-channel run of ResNet-34
    (``benchmarks/results/crp_throughput.json``).
    """
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    engine = CRPEngine(build(source, name), example_input=x)
    attribution = engine.attribute(x)
    picks = sorted({round(i) for i in np.linspace(0, len(engine.layers) - 1, min(SPEED_LAYERS, len(engine.layers)))})
    channels = seconds = 0.0
    maps = 0
    for index in picks:
        layer = engine.layers[index]
        r = attribution.channel_relevance(layer.name).abs()
        top = torch.topk(r, min(32, r.numel())).indices.tolist()
        t0 = time.perf_counter()
        engine.neuron_maps(attribution, batch_size=32, channels={layer.name: top})
        per_map = (time.perf_counter() - t0) / len(top)
        channels += layer.channels
        seconds += layer.channels * per_map
        maps += len(top)
    return {"maps_per_s": channels / seconds, "speed_layers": len(picks), "speed_maps": maps}


def measure(source: str, name: str, conservation_size: int, dtype: torch.dtype = torch.float32) -> dict:
    row: dict = {"family": f"{source}:{name}"}
    try:
        model = build(source, name)
        size = conservation_size
        try:
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)
            engine = CRPEngine(model, example_input=x, dtype=dtype)
            attribution = engine.attribute(x)
        except InputError:  # the model refuses this size (its own asserts): use its own
            size = _own_size(model)
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)
            engine = CRPEngine(model, example_input=x, dtype=dtype)
            attribution = engine.attribute(x)
    except Exception as exc:  # noqa: BLE001 - the benchmark reports every failure as a row
        row.update(status=f"error: {str(exc).splitlines()[0][:200]}")
        return row
    row["size"] = size
    rng = np.random.default_rng(0)
    channels, scale = {}, {}
    for layer in engine.layers:
        r = attribution.channel_relevance(layer.name)
        scale[layer.name] = float(attribution.layer_relevance[layer.name].abs().max()) or 1.0
        channels[layer.name] = sorted({int(r.abs().argmax()), int(rng.integers(layer.channels))})
    neurons = engine.neuron_maps(attribution, batch_size=8, channels=channels)
    errors = [abs(s - r) / scale[n.rsplit(":", 1)[0]] for s, r, n in zip(neurons.map_sums, neurons.relevance, neurons.names())]
    logit = float(attribution.logits[attribution.target])
    heatmap_sum = float(attribution.heatmap.sum())
    row.update(
        status="ok", layers=len(engine.layers), neurons=int(sum(layer.channels for layer in engine.layers)),
        conservation_error=float(max(errors)), heatmap_sum=heatmap_sum, logit=logit,
        heatmap_error=abs(heatmap_sum - logit) / max(abs(logit), 1e-12),
    )
    return row


def _speed_check(rows: list[dict]) -> list[str]:
    """The estimator against ResNet-34's measured all-channel run, as a line of the table's text."""
    measured = Path(__file__).parent / "results" / "crp_throughput.json"
    row = next((r for r in rows if r["family"] == "torchvision:resnet34" and r.get("maps_per_s")), None)
    if row is None or not measured.exists():
        return []
    data = json.loads(measured.read_text())
    if "all_channels_s" not in data:
        return []
    rate = data["total_channels"] / data["all_channels_s"]
    return [f"Speed check: ResNet-34 estimated {row['maps_per_s']:.1f} maps/s here; measured {rate:.1f} maps/s "
            f"({data['total_channels']:,} channels in {data['all_channels_s']:.0f} s, `crp_throughput.json`)."]


def conserving(row: dict) -> bool:
    """The table's bar: conservation error <= 1e-3 and heatmap error <= 1e-2."""
    return row["status"] == "ok" and row["conservation_error"] <= 1e-3 and row["heatmap_error"] <= 1e-2


def summary(rows: list[dict], skipped: list[dict]) -> dict:
    """Counts of the zoo: families explained and conserving, refused, skipped."""
    timm_rows = [r for r in rows if r["family"].startswith("timm:") and r.get("zoo")]
    explained = [r for r in timm_rows if r["status"] == "ok"]
    conserving_rows = [r for r in explained if conserving(r)]
    return {
        "timm_convolutional_families": len(timm_rows), "timm_explained": len(explained),
        "timm_explained_and_conserving": len(conserving_rows), "timm_skipped": len(skipped),
        "torchvision_families": sum(r["family"].startswith("torchvision:") for r in rows) - len(SPEED_CHECK),
        "torchvision_explained": sum(r["family"].startswith("torchvision:") and r["status"] == "ok" for r in rows)
        - len(SPEED_CHECK),
    }


def _row(row: dict) -> str:
    module = row.get("module", "")
    if row["status"] != "ok":
        return f"| {row['family']} | {module} | {row['status']} | | | | | | |"
    speed = f"{row['maps_per_s']:.1f}" if row.get("maps_per_s") is not None else "–"
    return (f"| {row['family']} | {module} | ok | {row['layers']} | {row['neurons']:,} | {row.get('size', '')} | "
            f"{row['conservation_error']:.1e} | {row['heatmap_error']:.1e} | {speed} |")


def table(rows: list[dict], skipped: list[dict], size: int, conservation_size: int, speed_date: str | None) -> str:
    counts = summary(rows, skipped)
    refused = [r for r in rows if r["status"] != "ok"]
    lines = [
        "# CNN families the CRP engine explains",
        "",
        "Generated by `python benchmarks/architectures.py --part conservation` (random weights with randomised BatchNorm",
        f"statistics and gammas, torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
        f"{platform.machine()} CPU, 2 cores). The zoo and its filter are in the script's docstring: every torchvision",
        "classification CNN family and one small variant of every timm architecture family (`timm.list_modules()`)",
        "whose backbone is convolutional, decided by the script, not by hand.",
        "",
        f"**timm: {counts['timm_explained']} of {counts['timm_convolutional_families']} convolutional families explained, "
        f"{counts['timm_explained_and_conserving']} of them conserving** (conservation error ≤ 1e-3 and heatmap error ≤ 1e-2); "
        f"{counts['timm_skipped']} families skipped as attention-based or not convolutional (listed below). "
        f"torchvision: {counts['torchvision_explained']} of {counts['torchvision_families']} CNN families explained.",
        "",
        "Conservation error: `max |sum(y_p) - r_p| / max|R_layer|` over the most relevant and one random channel of every",
        f"layer, and heatmap error `|sum(heatmap) - logit| / |logit|`, both at {conservation_size}x{conservation_size} "
        "(column *size*: the model's own input size where it refuses that).",
        f"Maps/s: all-channel rate of conditional maps at batch 32 and {size}x{size}, estimated from the 32 most",
        f"relevant channels of {SPEED_LAYERS} evenly spaced layers, each layer's time per map weighted by its channel count",
        "(`measure_speed`), for the families listed before the zoo (`--part speed`, measured alone on the machine"
        + (f"; the rates shown were measured on {speed_date}" if speed_date else "") + "); – = not measured.",
        "Its check: ResNet-34 (see the last row) against its measured all-channel run in `benchmarks/results/crp_throughput.json`.",
        "Neurons are the conv channels; ConvNeXt's pointwise `nn.Linear` layers on channels-last maps are 1x1",
        "convolutions and count as conv layers (kind `pointwise`, explained with the convolution's z+ rule).",
        "Re-parameterisable blocks (RepVGG, MobileOne, FastViT, RepViT, RepGhost) are fused before explaining, as",
        "BatchNorm is merged (`CRPEngine(reparameterize=True)`, the default).",
        "AlexNet's 5 % heatmap error appears only at 96x96, where its adaptive pooling upsamples a 2x2 map to 6x6",
        "(not traced further); at 224x224 it is 4e-4.",
        *_speed_check(rows),
        "",
        "| family | timm module | status | conv layers | neurons | size | conservation error | heatmap error | maps/s |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_row(row) for row in rows),
        "",
    ]
    loose = [r for r in rows if r["status"] == "ok" and not conserving(r) and r["family"] != "torchvision:alexnet"]
    if loose:
        lines += [
            "## Explained, not conserving to 1e-3",
            "",
            "Every rule here conserves; what is lost is the `Norm` rule's stabiliser at sums whose branches nearly",
            "cancel: `R_i = x_i R / (z + 1e-6 sign z)` with `z = sum_i x_i` close to 0 (branches of either sign: NASNet's",
            "cell sums of BatchNorm outputs, ConvMixer's BatchNorm after GELU, Xception's and Inception's branch sums).",
            "There the shares `x_i / z` are large and of opposite signs, and the small loss of each such sum is",
            "amplified in the conditional maps that pass through it. The float64 column (`--part float64`) shows the",
            "error is the rule's, not round-off: it is the same in double precision; and it falls to ~1e-5 when the",
            "stabiliser is 1e-12 instead of 1e-6 (`benchmarks/stabiliser_check.py`, `benchmarks/results/stabiliser_check.json`).",
            "We keep zennit's stabiliser: it bounds the shares at those sums. – = not rerun in float64 (`--part float64",
            "--only NAME` does; NASNet-A Large and PNASNet-5 Large ran over 15 minutes each in double precision here).",
            "",
            "| family | conservation error | in float64 | heatmap error | in float64 |",
            "|---|---|---|---|---|",
        ]
        for r in loose:
            f64 = r.get("conservation_error_float64")
            h64 = r.get("heatmap_error_float64")
            lines.append(f"| {r['family']} | {r['conservation_error']:.1e} | {'–' if f64 is None else f'{f64:.1e}'} | "
                         f"{r['heatmap_error']:.1e} | {'–' if h64 is None else f'{h64:.1e}'} |")
        lines.append("")
    if refused:
        lines += ["## Refused", "", *(f"- `{r['family']}`: {r['status']}" for r in refused), ""]
    lines += ["## Skipped timm families", "", "| timm module | small variant | reason |", "|---|---|---|",
              *(f"| {r['module']} | {r['model'] or ''} | {r['skip']} |" for r in skipped), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/architectures.json")
    parser.add_argument("--table", default="docs/architectures.md")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--conservation-size", type=int, default=96)
    parser.add_argument("--only", nargs="*", default=None, help="family names to run (default: all)")
    parser.add_argument("--part", choices=("all", "conservation", "speed", "float64", "table"), default="all",
                        help="conservation: every family, carrying maps/s over from --out; speed: add maps/s to the "
                             "rows of an existing --out (run it alone on the machine); float64: rerun the families "
                             "that miss the 1e-3 bar (or --only) in double precision; table: rewrite --table from --out")
    args = parser.parse_args()
    missing = torchvision_coverage()
    if missing:
        raise SystemExit(f"torchvision CNN builders without a row: {missing}; add one to TORCHVISION")
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    if args.part in ("speed", "table", "float64"):
        rows, skipped = previous["rows"], previous.get("skipped", [])
        if args.part == "float64":
            for row in rows:
                source, name = row["family"].split(":", 1)
                if row["status"] != "ok" or (name not in args.only if args.only else conserving(row)):
                    continue
                double = measure(source, name, row.get("size", args.conservation_size), torch.float64)
                row.update(conservation_error_float64=double.get("conservation_error"),
                           heatmap_error_float64=double.get("heatmap_error"))
                print(row["family"], row["conservation_error"], double.get("conservation_error"), flush=True)
    else:
        carried = {r["family"]: r for r in previous.get("rows", []) if r.get("maps_per_s") is not None}
        families = [("torchvision", n, None) for n in TORCHVISION]
        skipped = []
        for module in timm.list_modules():
            info = timm_family(module)
            print(json.dumps(info), flush=True)
            if info["skip"]:
                skipped.append(info)
            else:
                families.append(("timm", info["model"], module))
        picked = {name for _, name, _ in families}
        families += [("timm", n, None) for n in TIMM if n not in picked]  # listed before the zoo, kept
        families += [(s, n, None) for s, n in SPEED_CHECK]
        rows = []
        for source, name, module in families:
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            row = measure(source, name, args.conservation_size)
            row["wall_s"] = time.perf_counter() - t0
            if module is not None:
                row.update(module=module, zoo=True)
            if args.part == "conservation" and row["family"] in carried and row["status"] == "ok":
                row.update({k: carried[row["family"]][k] for k in ("maps_per_s", "speed_layers", "speed_maps")})
                row["speed_measured"] = carried[row["family"]].get("speed_measured", previous.get("speed_date"))
            print(json.dumps(row), flush=True)
            rows.append(row)
    speed_date = previous.get("speed_date", "2026-12-02")
    if args.part in ("all", "speed"):
        speed_date = time.strftime("%Y-%m-%d")
        for row in rows:
            if row["status"] == "ok" and row["family"] in SPEED_FAMILIES:
                source, name = row["family"].split(":", 1)
                row.update(measure_speed(source, name, args.size))
                print(row["family"], f"{row['maps_per_s']:.1f} maps/s", flush=True)
    result = {"size": args.size, "conservation_size": args.conservation_size, "torch": torch.__version__,
              "timm": timm.__version__, "speed_date": speed_date, "summary": summary(rows, skipped),
              "rows": rows, "skipped": skipped}
    Path(args.out).write_text(json.dumps(result, indent=1))
    kept = Path(args.table).read_text().split(ATTENTION_MARKER, 1) if Path(args.table).exists() else [""]
    attention = ATTENTION_MARKER + kept[1] if len(kept) == 2 else ""  # benchmarks/attention_zoo.py's section
    Path(args.table).write_text(table(rows, skipped, args.size, args.conservation_size, speed_date)
                                + ("\n" + attention if attention else ""))


if __name__ == "__main__":
    main()
