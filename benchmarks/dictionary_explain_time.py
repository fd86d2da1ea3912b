"""Compute of one explanation with a concept dictionary vs per-image clustering (issue 25).

Times ``ConceptExplainer.explain`` (its own stage timings: LRP pass, concepts, concept maps;
image decoding and saving excluded) on the same photos, after one warm-up, for the default
per-image route and the dictionary route. Run it alone on the machine.

    python benchmarks/dictionary_explain_time.py --dictionary docs/models/bird_dictionary \
        --out benchmarks/results/dictionary_explain.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from conceptree import ConceptExplainer
from conceptree.models.loading import load_image

PHOTOS = ["../shared/data/photos/parrot.jpg", "../shared/data/photos/owl.jpg", "../shared/data/photos/swan.jpg",
          "../shared/data/photos/bird.bmp"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-config", default="docs/models/bird.json")
    ap.add_argument("--dictionary", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    pictures = [load_image(p)[0].convert("RGB") for p in PHOTOS]
    routes = {"per_image": ConceptExplainer.from_config(args.model_config),
              "dictionary": ConceptExplainer.from_config(args.model_config, dictionary=args.dictionary,
                                                         options="default")}
    result: dict = {"photos": PHOTOS, "repeats": args.repeats, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "routes": {}}
    for name, explainer in routes.items():
        explainer.explain(pictures[0])  # warm-up (first-call allocations)
        stages: dict[str, list[float]] = {}
        wall = []
        for _ in range(args.repeats):
            for picture in pictures:
                t0 = time.perf_counter()
                e = explainer.explain(picture)
                wall.append(time.perf_counter() - t0)
                for key, value in e.timings.items():
                    stages.setdefault(key, []).append(value)
        result["routes"][name] = {"median_s": {k: float(np.median(v)) for k, v in stages.items()},
                                  "explain_wall_median_s": float(np.median(wall)),
                                  "concepts_listed": e.concepts.k}
        print(name, {k: round(v, 3) for k, v in result["routes"][name]["median_s"].items()}, flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
