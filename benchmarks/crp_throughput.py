"""CRP throughput: conceptree's batched engine vs zennit-crp vs the autograd floor (not a test).

Same process, same model (torchvision ResNet-34, random weights, seed 0, BatchNorm statistics
randomised), same 224x224 input, same composite (epsilon-plus-flat, biases ignored, zennit
semantics so that the maps are comparable), same sampled channels from a shallow, a middle and
a deep layer. Writes ``benchmarks/results/crp_throughput.json``.

Run:  python benchmarks/crp_throughput.py [--batch-size 32] [--full]
(needs ``pip install --no-deps zennit-crp==0.6.0``; ``--full`` also streams all 8,512 maps).
On a GPU: ``--device cuda --out benchmarks/results/crp_throughput_cuda.json`` (clocks are read
after ``torch.cuda.synchronize()``; GPU memory is reported as ``peak_gpu_memory_gb``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from conceptree import Composite
from conceptree.attribution import CRPEngine

LAYERS = {"shallow": "layer1.0.conv1", "middle": "layer3.0.conv2", "deep": "layer4.1.conv2"}
RESULTS = Path(__file__).parent / "results" / "crp_throughput.json"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet34()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_ours(engine, attribution, layer, channels, batch_size):
    engine.neuron_maps(attribution, batch_size, {layer: channels[:batch_size]})  # warm-up
    sync()
    start = time.perf_counter()
    maps = engine.neuron_maps(attribution, batch_size, {layer: channels})
    sync()
    return time.perf_counter() - start, maps.maps


def time_floor(model, x, layer, channels, batch_size):
    """Plain autograd input-gradients of the same channels (no LRP rules), batched the same way."""
    module = model.get_submodule(layer)
    forward_s = backward_s = 0.0
    for chunk in np.array_split(np.asarray(channels), math.ceil(len(channels) / batch_size)):
        xb = x.repeat(len(chunk), 1, 1, 1).requires_grad_()
        store = {}
        handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("out", o))  # noqa: B023 (hook removed in this iteration)
        sync()
        t0 = time.perf_counter()
        model(xb)
        sync()
        t1 = time.perf_counter()
        handle.remove()
        out = store["out"]
        grad = torch.zeros_like(out)
        grad[torch.arange(len(chunk)), torch.as_tensor(chunk)] = 1.0
        torch.autograd.grad(out, xb, grad)
        sync()
        t2 = time.perf_counter()
        forward_s += t1 - t0
        backward_s += t2 - t1
    return forward_s, backward_s


def time_zennit_crp(model, x, target, layer, channels, batch_size, start_layer_rel=None):
    from crp.attribution import CondAttribution
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    attribution = CondAttribution(copy.deepcopy(model))  # it freezes and canonizes its model
    composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()], zero_params=["bias"])
    maps = []
    if start_layer_rel is None:
        conditions = [{layer: [int(c)], "y": [target]} for c in channels]
        kwargs = {}
    else:
        conditions = [{layer: [int(c)]} for c in channels]
        kwargs = {"start_layer": layer, "init_rel": lambda act: start_layer_rel.expand_as(act).clone()}
    sync()
    start = time.perf_counter()
    for result in attribution.generate(
        x.clone().requires_grad_(), conditions, composite, record_layer=[], batch_size=batch_size,
        exclude_parallel=True, verbose=False, **kwargs,
    ):
        maps.append(result.heatmap.detach().cpu().numpy())
    sync()
    return time.perf_counter() - start, np.concatenate(maps)


def max_rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    scale = np.abs(ref).reshape(len(ref), -1).max(1)
    diff = np.abs(ours - ref).reshape(len(ref), -1).max(1)
    return float(np.max(diff / np.maximum(scale, 1e-30)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32, help="sampled channels per layer")
    parser.add_argument("--full", action="store_true", help="also stream all 8,512 maps (56x56, float16)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    device = torch.device(args.device)
    model = build_model().to(device)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)

    engine = CRPEngine(model, Composite(dead_units="drop"), zennit_compat="zennit")  # zennit's exact semantics
    engine_default = CRPEngine(model)  # conceptree's default composite
    sync()
    t0 = time.perf_counter()
    attribution = engine.attribute(x)
    sync()
    attribute_s = time.perf_counter() - t0
    attribution_default = engine_default.attribute(x)
    target = attribution.target
    rows = {}
    gen = np.random.default_rng(0)
    for depth, layer in LAYERS.items():
        n_channels = attribution.layer_relevance[layer].shape[0]
        channels = sorted(gen.choice(n_channels, size=min(args.channels, n_channels), replace=False).tolist())
        ours_s, ours_maps = time_ours(engine, attribution, layer, channels, args.batch_size)
        default_s, _ = time_ours(engine_default, attribution_default, layer, channels, args.batch_size)
        rows[depth] = {"layer": layer, "channels": len(channels), "ours_s": ours_s, "ours_default_composite_s": default_s}
        print(f"{depth}: ours {ours_s:.2f}s (default composite {default_s:.2f}s)", flush=True)
    ours_peak = peak_rss_gb()

    # ours on every layer (one batch each) -> extrapolation to all channels
    per_layer = []
    for info in engine_default.layers:
        chans = list(range(min(args.batch_size, info.channels)))
        seconds, _ = time_ours(engine_default, attribution_default, info.name, chans, args.batch_size)
        batches = math.ceil(info.channels / args.batch_size)
        per_layer.append({"layer": info.name, "channels": info.channels, "batch_s": seconds, "extrapolated_s": seconds * batches * args.batch_size / len(chans)})
    all_channels_s = sum(row["extrapolated_s"] for row in per_layer) + attribute_s
    total_channels = sum(row["channels"] for row in per_layer)
    print(f"extrapolated all {total_channels} channels: {all_channels_s:.0f}s", flush=True)

    full = None
    if args.full:
        start = time.perf_counter()
        maps = engine_default.neuron_maps(attribution_default, args.batch_size, map_size=(56, 56), dtype=np.float16, progress=True)
        full = {"seconds": time.perf_counter() - start, "maps": len(maps), "peak_rss_gb": peak_rss_gb()}
        print(f"measured all {len(maps)} channels: {full['seconds']:.0f}s", flush=True)
        ours_peak = max(ours_peak, full["peak_rss_gb"])

    # (channels of each layer were drawn from one generator in order; redraw identically)
    gen = np.random.default_rng(0)
    for depth, layer in LAYERS.items():
        row = rows[depth]
        n_channels = attribution.layer_relevance[layer].shape[0]
        channels = sorted(gen.choice(n_channels, size=row["channels"], replace=False).tolist())
        _, ours_maps = time_ours(engine, attribution, layer, channels, args.batch_size)
        floor_fwd, floor_bwd = time_floor(model, x, layer, channels, args.batch_size)
        crp_s, crp_maps = time_zennit_crp(model, x, target, layer, channels, args.batch_size)
        rel = attribution.layer_relevance[layer].unsqueeze(0)
        crp_start_s, crp_start_maps = time_zennit_crp(model, x, target, layer, channels, args.batch_size, rel)
        row.update(
            floor_backward_s=floor_bwd,
            floor_forward_s=floor_fwd,
            zennit_crp_s=crp_s,
            zennit_crp_start_layer_s=crp_start_s,
            ours_maps_per_s=row["channels"] / row["ours_s"],
            zennit_crp_maps_per_s=row["channels"] / crp_s,
            speedup_vs_zennit_crp=crp_s / row["ours_s"],
            speedup_vs_zennit_crp_start_layer=crp_start_s / row["ours_s"],
            ratio_to_floor=row["ours_s"] / floor_bwd,
            max_rel_diff=max_rel_diff(ours_maps, crp_maps.reshape(ours_maps.shape)),
            max_rel_diff_start_layer=max_rel_diff(ours_maps, crp_start_maps.reshape(ours_maps.shape)),
        )
        print(depth, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    # all-channel speed-up: zennit-crp per-layer rate interpolated by depth (shallow/middle/deep
    # measured) applied to every layer's channel count, against our per-layer extrapolation
    def crp_rate(name: str, key: str) -> float:
        stage = 1 if name.startswith(("conv1", "layer1", "layer2")) else (2 if name.startswith("layer3") else 3)
        depth = {1: "shallow", 2: "middle", 3: "deep"}[stage]
        return rows[depth][key] / rows[depth]["channels"]

    crp_all = sum(crp_rate(r["layer"], "zennit_crp_s") * r["channels"] for r in per_layer)
    crp_start_all = sum(crp_rate(r["layer"], "zennit_crp_start_layer_s") * r["channels"] for r in per_layer)
    floor_all = sum(crp_rate(r["layer"], "floor_backward_s") * r["channels"] for r in per_layer)
    result = {
        "model": "torchvision resnet34 (random weights, seed 0), 224x224, batch 1 image",
        "composite": "epsilon-plus-flat, zero_bias=True (zennit zero_params=['bias']), exclude_parallel semantics",
        "batch_size": args.batch_size,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "device": str(device),
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else None,
        "speedup_vs_zennit_crp": crp_all / all_channels_s,
        "speedup_vs_zennit_crp_start_layer": crp_start_all / all_channels_s,
        "ratio_to_floor": max(rows[d]["ratio_to_floor"] for d in rows),
        "max_rel_diff": max(max(rows[d]["max_rel_diff"], rows[d]["max_rel_diff_start_layer"]) for d in rows),
        "peak_rss_gb": ours_peak,
        "all_channels_s": full["seconds"] if full else all_channels_s,
        "all_channels_extrapolated_s": all_channels_s,
        "all_channels_measured": full,
        "zennit_crp_all_channels_extrapolated_s": crp_all,
        "zennit_crp_start_layer_all_channels_extrapolated_s": crp_start_all,
        "floor_all_channels_extrapolated_s": floor_all,
        "total_channels": total_channels,
        "sampled_layers": rows,
        "per_layer": per_layer,
        "notes": (
            "ratio_to_floor = ours / autograd backward only (the floor's batch forward is extra: "
            "floor_forward_s). all-channel zennit-crp and floor times extrapolate the shallow rate to "
            "conv1/layer1/layer2, the middle rate to layer3 and the deep rate to layer4."
        ),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
