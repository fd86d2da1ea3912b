"""Where the conditional maps' time goes: per layer and per feature-map resolution (not a test).

For every selected layer of a model, one batch of its (up to) 32 most relevant channels is
propagated to the input twice (the minimum is kept), exactly and with ``pool_below=(56, 56)``
(:meth:`CRPEngine.iter_conditional_maps`: relevance that reaches a feature map finer than
56x56 is pooled there). The time of every node's rule is recorded on a third, instrumented
exact pass and summed by the resolution of the relevance the rule receives. Per-layer time per
map times the layer's channel count estimates the all-channel time; ``check_full_s`` is the
measured all-channel exact time where an earlier run has it.

    python benchmarks/layer_times.py                    # demo model + ResNet-34
    python benchmarks/layer_times.py --models demo --device cuda

Writes ``benchmarks/results/layer_times.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch
import torchvision

from conceptree.attribution import CRPEngine
from conceptree.models.loading import load_model
from conceptree.runtime import tune_allocator

RESULTS = Path(__file__).parent / "results" / "layer_times.json"
POOL = (56, 56)
BATCH = 32


def demo_model() -> tuple[torch.nn.Module, torch.Tensor]:
    from conceptree.models.loading import load_image, preprocess

    spec = load_model("default")
    picture, _ = load_image(None)
    x, _ = preprocess(picture, spec.preprocessing)
    return spec.model, x


def resnet34() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet34().eval(), torch.randn(1, 3, 224, 224)


MODELS = {"demo": demo_model, "resnet34": resnet34}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_batch(engine: CRPEngine, attribution, layer: str, channels: list[int], pool) -> float:
    best = float("inf")
    for _ in range(2):
        sync(engine.device)
        start = time.perf_counter()
        for _batch in engine.iter_conditional_maps(attribution, BATCH, {layer: channels}, pool_below=pool):
            pass
        sync(engine.device)
        best = min(best, time.perf_counter() - start)
    return best


def node_times(engine: CRPEngine, attribution, layer: str, channels: list[int]) -> dict[str, float]:
    """Seconds per resolution ``"h x w"`` of the relevance each rule receives (one exact batch)."""
    by_resolution: dict[str, float] = defaultdict(float)
    rules = attribution.forward.rules
    originals = {}
    for node, rule in rules.items():
        shape = attribution.forward.shapes[node]
        key = f"{shape[-2]}x{shape[-1]}" if len(shape) == 4 and not getattr(rule, "channels_last", False) else "other"

        def timed(relevance, _orig=rule.backward, _key=key):
            sync(engine.device)
            start = time.perf_counter()
            out = _orig(relevance)
            sync(engine.device)
            by_resolution[_key] += time.perf_counter() - start
            return out

        originals[node] = rule.backward
        rule.backward = timed
    try:
        for _batch in engine.iter_conditional_maps(attribution, BATCH, {layer: channels}):
            pass
    finally:
        for node, backward in originals.items():
            rules[node].backward = backward
    return dict(by_resolution)


def profile(name: str, device: torch.device) -> dict:
    model, x = MODELS[name]()
    engine = CRPEngine(model.to(device))
    attribution = engine.attribute(x.to(device))
    rows, resolution_total = [], defaultdict(float)
    est_exact = est_pooled = 0.0
    for info in engine.layers:
        relevance = attribution.channel_relevance(info.name).abs()
        channels = torch.argsort(relevance, descending=True)[:BATCH].tolist()
        exact = time_batch(engine, attribution, info.name, channels, None)
        pooled = time_batch(engine, attribution, info.name, channels, POOL)
        per_res = node_times(engine, attribution, info.name, channels)
        share = info.channels / len(channels)
        for key, seconds in per_res.items():
            resolution_total[key] += seconds * share
        size = tuple(attribution.layer_relevance[info.name].shape[-2:])
        rows.append({"layer": info.name, "kind": info.kind, "channels": info.channels, "size": list(size),
                     "exact_ms_per_map": 1e3 * exact / len(channels), "pooled_ms_per_map": 1e3 * pooled / len(channels),
                     "exact_all_s": exact * share, "pooled_all_s": pooled * share})
        est_exact += exact * share
        est_pooled += pooled * share
        print(f"{name} {info.name:28s} {size!s:10s} {info.channels:5d} ch  exact {1e3 * exact / len(channels):6.2f} ms/map"
              f"  pooled {1e3 * pooled / len(channels):6.2f} ms/map", flush=True)
    total = sum(resolution_total.values())
    return {"layers": rows, "estimated_all_channels_exact_s": est_exact, "estimated_all_channels_pooled_s": est_pooled,
            "n_neurons": sum(info.channels for info in engine.layers),
            "rule_time_by_resolution": {k: {"s": v, "share": v / total} for k, v in
                                        sorted(resolution_total.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    tune_allocator()
    device = torch.device(args.device)
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "device": str(device), "batch": BATCH, "pool_below": list(POOL),
              "models": {name: profile(name, device) for name in args.models}}
    Path(args.out).write_text(json.dumps(result, indent=1))
    for name, res in result["models"].items():
        print(f"{name}: estimated all-channel exact {res['estimated_all_channels_exact_s']:.0f} s, "
              f"pooled below {POOL[0]}x{POOL[1]} {res['estimated_all_channels_pooled_s']:.0f} s")
        for key, value in res["rule_time_by_resolution"].items():
            print(f"   {key:10s} {100 * value['share']:5.1f} %")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
