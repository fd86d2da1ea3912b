"""Wall time of a default explanation before and after stability scores (issue 22), side by side.

"Before" is the code of ``--baseline-rev`` (the commit before stability existed), checked out in
a temporary git worktree; "after" is this checkout, with the default options and with each
variant below. Every configuration runs in a fresh process: one warm-up explanation, then the
median of ``--repeats`` library calls ``explainer.explain(photo)`` (reading and preprocessing
the photo included, no references, no saving), the same torch threads for all.

    python benchmarks/stability_time.py --out benchmarks/results/stability_time.json

Run it alone on the machine (it measures time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
from conceptree import ConceptExplainer
spec = json.loads(sys.argv[1])
options = None
if spec["options"] is not None:
    from dataclasses import replace
    from conceptree.concepts.options import ConceptOptions
    from conceptree.concepts.stability import StabilityConfig
    o = spec["options"]
    options = ConceptOptions(precision=o["precision"], stability=StabilityConfig(resamples=o["resamples"], fraction=o["fraction"]))
explainer = ConceptExplainer.from_config(spec["config"], **({"options": options} if options else {}))
explainer.explain(spec["photo"])
times, parts = [], []
for _ in range(spec["repeats"]):
    t = time.perf_counter()
    e = explainer.explain(spec["photo"])
    times.append(time.perf_counter() - t)
    parts.append(e.timings)
times_sorted = sorted(times)
median = times_sorted[len(times) // 2]
print(json.dumps({"median_s": median, "times_s": times, "timings": parts[times.index(median)], "k": e.concepts.k,
                  "threads": torch.get_num_threads()}))
"""

VARIANTS = {
    "after: float64, no stability": {"precision": "float64", "resamples": 0, "fraction": 0.8},
    "after: float32, no stability": {"precision": "float32", "resamples": 0, "fraction": 0.8},
    "after: f50 x 8": {"precision": "float64", "resamples": 8, "fraction": 0.5},
    "after: f80 x 8": {"precision": "float64", "resamples": 8, "fraction": 0.8},
    "after: f80 x 6": {"precision": "float64", "resamples": 6, "fraction": 0.8},
    "after: f80 x 4": {"precision": "float64", "resamples": 4, "fraction": 0.8},
}


def run(src: Path, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-rev", default="5067386")
    ap.add_argument("--config", default="docs/models/bird.json")
    ap.add_argument("--photo", default="../shared/data/photos/parrot.jpg")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/stability_time.json")
    args = ap.parse_args()
    base = {"config": str((ROOT / args.config).resolve()), "photo": str((ROOT / args.photo).resolve()),
            "repeats": args.repeats}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.baseline_rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            results["before (baseline rev)"] = run(tree / "src", {**base, "options": None})
            print("before", results["before (baseline rev)"]["median_s"], flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    results["after: default"] = run(ROOT / "src", {**base, "options": None})
    print("after: default", results["after: default"]["median_s"], flush=True)
    for name, options in VARIANTS.items():
        results[name] = run(ROOT / "src", {**base, "options": options})
        print(name, results[name]["median_s"], flush=True)
    before = results["before (baseline rev)"]["median_s"]
    out = {"baseline_rev": args.baseline_rev, "photo": args.photo, "repeats": args.repeats,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {results['after: default']['threads']}",
           "ratio_default_to_before": results["after: default"]["median_s"] / before,
           "ratios": {name: r["median_s"] / before for name, r in results.items()}, "runs": results}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out["ratios"], indent=1))


if __name__ == "__main__":
    main()
