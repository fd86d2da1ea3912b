"""A/B timing of the CRP engine: this checkout against another git revision, interleaved.

One run of ``benchmarks/crp_throughput.py`` moves by ±10 % on this 2-core machine from one
minute to the next, which hides a small regression. This script times the same work (the
conditional maps of 32 channels of a shallow, a middle and a deep ResNet-34 layer at 224x224,
batch 32, random weights with seed 0) with the two source trees alternately, in fresh
processes, ``--rounds`` times each, and reports the minima (the least disturbed run: the
noise here only ever adds time) and the medians, and their ratios.

    python benchmarks/engine_ab.py --base d526225 --rounds 5 --out benchmarks/results/engine_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORK = r"""
import json, time, torch, torchvision
from conceptree import CRPEngine
torch.manual_seed(0)
model = torchvision.models.resnet34().eval()
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
engine = CRPEngine(model)
x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
attribution = engine.attribute(x)
times = {}
for layer in ("layer1.0.conv1", "layer3.0.conv2", "layer4.1.conv2"):
    engine.neuron_maps(attribution, batch_size=32, channels={layer: range(4)})  # warm-up
    t0 = time.perf_counter()
    engine.neuron_maps(attribution, batch_size=32, channels={layer: range(32)})
    times[layer] = time.perf_counter() - t0
print(json.dumps(times))
"""


def run(src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", WORK], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_ab.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True,
                       capture_output=True)
        try:
            head = Path(tmp) / "head"
            shutil.copytree(ROOT / "src", head, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
            trees = {"base": base / "src", "head": head}  # a snapshot: edits during the run do not leak in
            samples: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
            for i in range(args.rounds):
                for name in (("base", "head") if i % 2 == 0 else ("head", "base")):
                    samples[name].append(run(trees[name]))
                    print(name, samples[name][-1], flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True)
    layers = list(samples["base"][0])
    result = {"base": args.base, "head": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                         capture_output=True, text=True).stdout.strip() + " + working tree",
              "rounds": args.rounds, "work": "32 conditional maps per layer, ResNet-34 @224, batch 32",
              "median_s": {}, "ratio_head_to_base": {}, "min_s": {}, "min_ratio_head_to_base": {}, "samples": samples}
    for layer in layers:
        med = {name: statistics.median(s[layer] for s in samples[name]) for name in samples}
        result["median_s"][layer] = med
        result["ratio_head_to_base"][layer] = med["head"] / med["base"]
        low = {name: min(s[layer] for s in samples[name]) for name in samples}
        result["min_s"][layer] = low
        result["min_ratio_head_to_base"][layer] = low["head"] / low["base"]
    total = {name: statistics.median(sum(s.values()) for s in samples[name]) for name in samples}
    result["median_total_s"] = total
    result["ratio_total"] = total["head"] / total["base"]
    low_total = {name: min(sum(s.values()) for s in samples[name]) for name in samples}
    result["min_total_s"] = low_total
    result["min_ratio_total"] = low_total["head"] / low_total["base"]
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("median_total_s", "ratio_total", "min_total_s", "min_ratio_total",
                                             "min_ratio_head_to_base")}, indent=1))


if __name__ == "__main__":
    main()
