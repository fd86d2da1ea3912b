"""What the concept graph adds to an explanation's wall time (issue 21's target: at most 20 %).

On the parrot with the bird model and default options: the explanation without the graph, the
flows alone at several batch sizes (float32 batches of the float64 pass, the default, and the
float64 pass itself), and the explanation with the graph; 3 repetitions each, interleaved,
medians reported. ``FLOW_BATCH`` is the batch size with the lowest median here. Run it alone.

    python benchmarks/graph_time.py --out benchmarks/results/graph_time.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from conceptree import ConceptExplainer
from conceptree.concepts.flows import concept_flows
from conceptree.concepts.options import ConceptOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="../shared/data/photos/parrot.jpg")
    ap.add_argument("--model-config", default="docs/models/bird.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    plain = ConceptExplainer.from_config(args.model_config, options=ConceptOptions(graph=False), progress=False)
    with_graph = ConceptExplainer.from_config(args.model_config, options=ConceptOptions(graph=True), progress=False)
    x, _, _ = plain.prepare(args.image)
    plain.explain(x), with_graph.explain(x)  # warm-up
    times: dict[str, list[float]] = {}
    runs = {"explain (no graph)": None, "explain (graph)": None,
            **{f"flows float32 batch {b}": (b, torch.float32) for b in (1, 2, 4, 8)}, "flows float64 batch 2": (2, None)}
    k = None
    for _ in range(args.repeats):
        for name, setting in runs.items():
            if setting is None:
                explainer = with_graph if "(graph)" in name else plain
                result = explainer.explain(x)
                times.setdefault(name, []).append(result.timings["total_s"])
                if explainer is with_graph:
                    times.setdefault("graph_s inside explain", []).append(result.timings["graph_s"])
                k = result.concepts.k
                concepts = result.concepts.concepts
                continue
            attribution = plain.engine.attribute(x)  # a fresh pass: the cast to float32 is part of the cost
            t = time.perf_counter()
            concept_flows(plain.engine, attribution, concepts, batch_size=setting[0], dtype=setting[1])
            times.setdefault(name, []).append(time.perf_counter() - t)
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["explain (no graph)"]
    result = {
        "image": args.image, "k": k, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "median_s": medians, "all_s": times,
        "added_s": medians["explain (graph)"] - base,
        "added_fraction": (medians["explain (graph)"] - base) / base,
        "best_float32_batch": min((b for b in (1, 2, 4, 8)), key=lambda b: medians[f"flows float32 batch {b}"]),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({key: v for key, v in result.items() if key != "all_s"}, indent=1))


if __name__ == "__main__":
    main()
