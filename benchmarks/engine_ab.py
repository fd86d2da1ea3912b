"""A/B timing of the CRP engine: this checkout against another git revision, interleaved.

One run of ``benchmarks/crp_throughput.py`` moves by ±10 % on this 2-core machine from one
minute to the next, which hides a small regression. This script times the same work (the
conditional maps of 32 channels of a shallow, a middle and a deep ResNet-34 layer at 224x224,
batch 32, random weights with seed 0) with the two source trees alternately, in fresh
processes, ``--rounds`` times each, and reports the minima (the least disturbed run: the
noise here only ever adds time) and the medians, and their ratios.

    python benchmarks/engine_ab.py --base d526225 --rounds 5 --out benchmarks/results/engine_ab.json

``--work bird`` times the public engine calls of one explanation instead, on the bird model
(``docs/models/bird.json``'s MobileNetV2, float64 like the explainer's default) and the parrot:
``attribute``, ``neuron_maps`` of 8 neurons, ``group_maps`` of 4 concepts and the concept flows of 8
concepts of 6 neurons; ``--repeats`` samples of each per process, medians over all, and the outputs of the
two trees compared bit for bit. ``--ref`` names a source folder to compare against instead of a
revision (e.g. a read-only worktree made beforehand), and ``--md`` writes a Markdown table.

    git worktree add /tmp/engine_ref 5d549b4
    nice python benchmarks/engine_ab.py --work bird --ref /tmp/engine_ref/src --rounds 2 --repeats 4 \
        --out benchmarks/results/engine_ab_bird.json --md docs/results/engine_ab.md
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
from conceptree.attribution import CRPEngine
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


WORK_BIRD = r"""
import hashlib, json, sys, time
import numpy as np, timm, torch
from PIL import Image
from conceptree.attribution import CRPEngine
try:
    from conceptree.concepts.flows import concept_flows
except ImportError:  # before the layout release
    from conceptree.concepts.graph import concept_flows
shared, repeats = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=965, pad_type="same", bn_eps=1e-3)
model.load_state_dict(torch.load(f"{shared}/models/inat_bird_mobilenetv2/weights.pth", weights_only=True))
image = Image.open(f"{shared}/data/photos/parrot.jpg").convert("RGB").resize((224, 224), Image.BILINEAR)
x = ((torch.from_numpy(np.asarray(image)).permute(2, 0, 1).double() - 128) * 0.0078125)[None]
engine = CRPEngine(model.eval(), dtype=torch.float64)

class Group:  # what concept_flows reads of a concept
    def __init__(self, members): self.members = members
    def groups(self):
        out = {}
        for layer, channel in self.members:
            out.setdefault(layer, []).append(channel)
        return out

def plan(attribution):  # the 48 most relevant neurons of the deeper half, dealt into 8 concepts
    names = [layer.name for layer in engine.layers][len(engine.layers) // 2:]
    rel = [(float(r), name, c) for name in names for c, r in enumerate(attribution.channel_relevance(name))]
    top = sorted(rel, reverse=True)[:48]
    channels = {}
    for _, name, c in top:
        channels.setdefault(name, []).append(c)
    concepts = [Group([(name, c) for _, name, c in top[i::8]]) for i in range(8)]
    return channels, concepts

def digest(a): return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]

times, out = {}, {}
engine.attribute(x)  # warm-up
for r in range(repeats):
    t = time.perf_counter(); attribution = engine.attribute(x); times.setdefault("attribute", []).append(time.perf_counter() - t)
    channels, concepts = plan(attribution)
    first = {name: chans for name, chans in channels.items() if name == next(iter(channels))}
    first = {name: chans[:8] for name, chans in first.items()}
    t = time.perf_counter(); neurons = engine.neuron_maps(attribution, channels=first)
    times.setdefault("neuron_maps (<=8)", []).append(time.perf_counter() - t)
    t = time.perf_counter(); maps = engine.group_maps(attribution, [c.groups() for c in concepts[:4]])
    times.setdefault("group_maps (4)", []).append(time.perf_counter() - t)
    t = time.perf_counter(); flows = concept_flows(engine, attribution, concepts)
    times.setdefault("concept flows (8)", []).append(time.perf_counter() - t)
out = {"heatmap": digest(attribution.heatmap.numpy()), "neuron_maps": digest(neurons.maps),
       "group_maps": digest(maps.numpy()), "flows": digest(flows.flows), "to_input": digest(flows.to_input)}
print(json.dumps({"times": times, "digests": out}))
"""


def run(src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", WORK], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bird(src: Path, shared: Path, repeats: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", WORK_BIRD, str(shared), str(repeats), str(threads)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"the bird work failed on {src}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bird(args: argparse.Namespace) -> None:
    """Interleaved rounds of the bird work on the reference tree and on a snapshot of this one."""
    with tempfile.TemporaryDirectory() as tmp:
        head = Path(tmp) / "head"
        shutil.copytree(Path(args.new) if args.new else ROOT / "src", head,
                        ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        trees = {"ref": Path(args.ref), "new": head}
        samples: dict[str, dict[str, list[float]]] = {"ref": {}, "new": {}}
        digests: dict[str, dict[str, str]] = {}
        for i in range(args.rounds):
            for name in (("ref", "new") if i % 2 == 0 else ("new", "ref")):
                got = run_bird(trees[name], Path(args.shared), args.repeats, args.threads)
                for key, values in got["times"].items():
                    samples[name].setdefault(key, []).extend(values)
                digests[name] = got["digests"]
                print(name, {k: round(statistics.median(v), 4) for k, v in got["times"].items()}, flush=True)
    medians = {name: {k: statistics.median(v) for k, v in samples[name].items()} for name in samples}
    speed = {k: medians["ref"][k] / medians["new"][k] for k in medians["ref"]}  # new speed / old speed
    same = {k: digests["ref"][k] == digests["new"][k] for k in digests["ref"]}
    result = {"ref": args.ref, "work": "bird MobileNetV2 float64, parrot 224x224; maps of <=8 neurons of one layer, 4 groups; flows of 8 concepts of 6",
              "threads": args.threads, "samples_per_tree": len(next(iter(samples["ref"].values()))),
              "median_s": medians, "speed_new_over_ref": speed, "identical_outputs": same, "samples": samples}
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.md:
        rows = [f"| {k} | {medians['ref'][k]:.4f} | {medians['new'][k]:.4f} | {speed[k]:.3f} |" for k in medians["ref"]]
        total_ref, total_new = sum(medians["ref"].values()), sum(medians["new"].values())
        Path(args.md).write_text("\n".join([
            "# Engine facade A/B: public engine calls, this tree against the previous engine",
            "",
            f"`benchmarks/engine_ab.py --work bird --ref {args.ref} --rounds {args.rounds} --repeats {args.repeats} "
            f"--threads {args.threads}` (niced, on the shared 2-core machine; fresh processes, trees alternated).",
            f"Bird model (MobileNetV2, float64 as the explainer's default), the parrot at 224x224; "
            f"{result['samples_per_tree']} samples per call and tree; medians in seconds.",
            "",
            "| call | ref (s) | new (s) | speed new/ref |",
            "|---|---|---|---|",
            *rows,
            f"| sum of the medians | {total_ref:.4f} | {total_new:.4f} | {total_ref / total_new:.3f} |",
            "",
            "Outputs bit-identical between the trees (SHA-1 of the arrays): "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()) + ".",
            "",
        ]))
    print(json.dumps({k: result[k] for k in ("median_s", "speed_new_over_ref", "identical_outputs")}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="git revision to compare against (a worktree is made and removed)")
    parser.add_argument("--ref", help="--work bird: a source folder to compare against (e.g. /tmp/engine_ref/src)")
    parser.add_argument("--new", help="--work bird: the source folder to time (default: this checkout's src/)")
    parser.add_argument("--work", choices=("maps", "bird"), default="maps")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4, help="--work bird: samples per process")
    parser.add_argument("--threads", type=int, default=1, help="--work bird: torch threads")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--md", help="--work bird: also write this Markdown summary")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_ab.json"))
    args = parser.parse_args()
    if args.work == "bird":
        if not args.ref:
            parser.error("--work bird needs --ref SRC (git worktree add /tmp/engine_ref REV; --ref /tmp/engine_ref/src)")
        return bird(args)
    if not args.base:
        parser.error("--base REV is required")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True,
                       capture_output=True)
        try:
            head = Path(tmp) / "head"
            shutil.copytree(Path(args.new) if args.new else ROOT / "src", head,
                            ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
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
