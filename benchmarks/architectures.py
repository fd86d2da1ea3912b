"""Which CNN families the CRP engine explains: status, size, conservation error, speed.

For every torchvision classification CNN family and timm's efficientnet, mobilenetv3,
convnext, regnety, densenet and resnet families (random weights, BatchNorm statistics and
gammas randomised with a fixed seed):

* status: ``ok`` or the one-line error;
* conv layers and neurons (channels) the engine exposes;
* conservation error ``max |sum(y_p) - r_p| / max|r|`` over the most relevant and one random
  channel of every layer (``max|r|`` of that layer), at ``--conservation-size`` (96x96: one
  propagation per layer, so the largest families take minutes at 224);
* class heatmap sum vs the target logit (same input);
* conditional maps per second at batch 32 and ``--size`` (224x224), estimated for all channels
  from the 32 most relevant channels of 8 evenly spaced layers (see :func:`measure_speed`).

    python benchmarks/architectures.py --out benchmarks/results/architectures.json --table docs/architectures.md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision

from conceptree import CRPEngine

TORCHVISION = [
    "alexnet", "vgg16_bn", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "squeezenet1_1", "densenet121",
    "inception_v3", "googlenet", "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0",
    "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny",
]
TIMM = ["efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "convnext_tiny", "regnety_002", "densenet121",
        "resnet18"]
#: the speed estimator's check: ResNet-34 has a measured all-channel rate in crp_throughput.json
SPEED_CHECK = [("torchvision", "resnet34")]


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
    model = getattr(torchvision.models, name)(**kwargs) if source == "torchvision" else timm.create_model(name, pretrained=False)
    return randomise_batchnorm(model)


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
    engine = CRPEngine(build(source, name))
    attribution = engine.attribute(torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2)))
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


def measure(source: str, name: str, conservation_size: int) -> dict:
    row: dict = {"family": f"{source}:{name}"}
    try:
        model = build(source, name)
        x = torch.randn(1, 3, conservation_size, conservation_size, generator=torch.Generator().manual_seed(1))
        engine = CRPEngine(model)
        attribution = engine.attribute(x)
    except Exception as exc:  # noqa: BLE001 - the benchmark reports every failure as a row
        row.update(status=f"error: {str(exc).splitlines()[0][:160]}")
        return row
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


def table(rows: list[dict], size: int, conservation_size: int) -> str:
    lines = [
        "# CNN families the CRP engine explains",
        "",
        "Generated by `python benchmarks/architectures.py` (random weights with randomised BatchNorm statistics and",
        f"gammas, torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
        f"{platform.machine()} CPU, 2 cores).",
        "Conservation error: `max |sum(y_p) - r_p| / max|R_layer|` over the most relevant and one random channel of every",
        f"layer, and heatmap error `|sum(heatmap) - logit| / |logit|`, both at {conservation_size}x{conservation_size}.",
        f"Maps/s: all-channel rate of conditional maps at batch 32 and {size}x{size}, estimated from the 32 most",
        f"relevant channels of {SPEED_LAYERS} evenly spaced layers, each layer's time per map weighted by its channel count",
        "(`measure_speed`); measured alone on the machine, after the conservation part. Its check: ResNet-34",
        "(see the last row) against its measured all-channel run in `benchmarks/results/crp_throughput.json`.",
        "Neurons are the conv channels; ConvNeXt's pointwise `nn.Linear` layers on channels-last maps are 1x1",
        "convolutions and count as conv layers (kind `pointwise`, explained with the convolution's z+ rule).",
        "AlexNet's 5 % heatmap error appears only at 96x96, where its adaptive pooling upsamples a 2x2 map to 6x6",
        "(not traced further); at 224x224 it is 4e-4.",
        *_speed_check(rows),
        "",
        "| family | status | conv layers | neurons | conservation error | heatmap error | maps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['family']} | {row['status']} | | | | | |")
            continue
        speed = f"{row['maps_per_s']:.1f}" if row.get("maps_per_s") is not None else "–"
        lines.append(f"| {row['family']} | ok | {row['layers']} | {row['neurons']:,} | {row['conservation_error']:.1e} | "
                     f"{row['heatmap_error']:.1e} | {speed} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/architectures.json")
    parser.add_argument("--table", default="docs/architectures.md")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--conservation-size", type=int, default=96)
    parser.add_argument("--only", nargs="*", default=None, help="family names to run (default: all)")
    parser.add_argument("--part", choices=("all", "conservation", "speed", "table"), default="all",
                        help="speed: add maps/s to the rows of an existing --out (run it alone on the machine); "
                             "table: rewrite --table from --out")
    args = parser.parse_args()
    if args.part in ("speed", "table"):
        rows = json.loads(Path(args.out).read_text())["rows"]
    else:
        rows = []
        for source, names in (("torchvision", TORCHVISION), ("timm", TIMM), *((s, [n]) for s, n in SPEED_CHECK)):
            for name in names:
                if args.only and name not in args.only:
                    continue
                t0 = time.perf_counter()
                row = measure(source, name, args.conservation_size)
                row["wall_s"] = time.perf_counter() - t0
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.part in ("all", "speed"):
        for row in rows:
            if row["status"] == "ok":
                source, name = row["family"].split(":", 1)
                row.update(measure_speed(source, name, args.size))
                print(row["family"], f"{row['maps_per_s']:.1f} maps/s", flush=True)
    Path(args.out).write_text(json.dumps({"size": args.size, "conservation_size": args.conservation_size,
                                          "torch": torch.__version__, "rows": rows}, indent=1))
    Path(args.table).write_text(table(rows, args.size, args.conservation_size))


if __name__ == "__main__":
    main()
