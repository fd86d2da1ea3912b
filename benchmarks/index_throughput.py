"""Index throughput (images/s, peak memory) at several LRP batch sizes, and the added wall time of
an explanation with references.

    python benchmarks/index_throughput.py --data ../shared/data/cub_parts --index INDEX \
        [--images 64] [--out benchmarks/results/index_throughput.json]

Each batch size builds an index of the same ``--images`` CUB photos from scratch in a fresh
process (model loading excluded from the rate, which is the build's own ``images_per_s``:
reading, preprocessing, LRP, peaks, shard writes); peak RSS is that process's. The explanation
timings use the bird model on ``parrot.jpg``: the median of 3 runs of ``explain`` without an
index, with the index (references from the stored peaks), and once with exact crops.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "docs" / "models" / "bird.json"
PARROT = ROOT.parent / "shared" / "data" / "photos" / "parrot.jpg"

CHILD = r"""
import json, resource, sys, torch
from conceptree.index import build_index
from conceptree.runs import ModelSource
torch.set_num_threads(int(sys.argv[4]))
index = build_index(sys.argv[1], ModelSource(config=sys.argv[2]), sys.argv[3], executor="local",
                    batch_size=int(sys.argv[5]), shard_size=64, progress=False)
print(json.dumps({**index.meta["build"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def throughput(data: Path, n_images: int, batch: int, threads: int) -> dict:
    from conceptree.datasets.cub_parts import load_cub_parts

    images, _ = load_cub_parts(data, require_target=False)
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "images.txt"
        listing.write_text("\n".join(str(im.path) for im in images[:n_images]))
        out = subprocess.run([sys.executable, "-c", CHILD, str(listing), str(CONFIG), str(Path(tmp) / "idx"),
                              str(threads), str(batch)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def explain_times(index: Path, repeats: int = 3) -> dict:
    import torch

    from conceptree import ConceptExplainer

    torch.set_num_threads(2)
    plain = ConceptExplainer.from_config(CONFIG)
    with_refs = ConceptExplainer.from_config(CONFIG, index=index)
    exact = ConceptExplainer.from_config(CONFIG, index=index, exact_references=True)
    plain.explain(PARROT)  # warm-up
    result = {}
    for name, explainer, n in (("without_index", plain, repeats), ("with_references", with_refs, repeats),
                               ("with_exact_references", exact, 1)):
        walls, parts = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            explanation = explainer.explain(PARROT)
            walls.append(time.perf_counter() - t0)
            parts.append(explanation.timings)
        result[name] = {"wall_s": statistics.median(walls), "runs": walls,
                        "references_s": statistics.median(p.get("references_s", 0.0) for p in parts),
                        "k": explanation.concepts.k}
    result["ratio_with_references"] = result["with_references"]["wall_s"] / result["without_index"]["wall_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cub_parts")
    parser.add_argument("--index", type=Path, required=True, help="an index of the CUB photos for the bird model")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "index_throughput.json")
    args = parser.parse_args()
    rates = {}
    for batch in args.batches:
        rates[batch] = throughput(args.data, args.images, batch, args.threads)
        print(f"batch {batch}: {rates[batch]['images_per_s']:.2f} images/s, peak {rates[batch]['peak_rss_mb']:.0f} MB",
              flush=True)
    best = max(rates, key=lambda b: rates[b]["images_per_s"])
    explain = explain_times(args.index)
    print(json.dumps(explain, indent=1))
    result = {
        "command": "python benchmarks/index_throughput.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus_used": args.threads, "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "model": "iNat bird MobileNetV2 (17,056 conv channels), 224x224",
        "images": args.images,
        "by_batch": {str(b): {"images_per_s": r["images_per_s"], "peak_rss_mb": r["peak_rss_mb"], "wall_s": r["wall_s"]}
                     for b, r in rates.items()},
        "best_batch": best,
        "images_per_s": rates[best]["images_per_s"],
        "images_per_s_batch1": rates[args.batches[0]]["images_per_s"] if args.batches[0] == 1 else None,
        "explanation": explain,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
