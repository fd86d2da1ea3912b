"""Clustering benchmark: time and peak memory per stage (not a test).

For n = 1,000 / 4,000 / 8,512 neurons with maps of 56x56 and 224x224 (default distance config:
maps average-pooled to 56x56 for the distance, l2-normalised), measures the distance (streamed into the condensed
vector the linkage needs), the linkage, the silhouette search over k = 2..60 (nested, one product), and for reference the
naive scikit-learn loop at n = 1,000. Each row runs in a fresh process so that its peak RSS
is its own. Writes ``benchmarks/results/clustering.json``.

Run:  python benchmarks/clustering.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "clustering.json"


def smooth_maps(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random blob maps (a few Gaussian bumps each) and relevances, float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    maps = np.empty((n, size, size), np.float32)
    centres = rng.random((n, 3, 2)).astype(np.float32)
    weights = rng.normal(size=(n, 3)).astype(np.float32)
    for i in range(n):
        m = np.zeros((size, size), np.float32)
        for (cy, cx), w in zip(centres[i], weights[i]):
            m += w * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)
        maps[i] = m
    relevance = rng.gamma(0.5, 0.01, n) * np.sign(rng.normal(size=n) + 1.5)
    return maps, relevance


def run_row(n: int, size: int, method: str, queue) -> None:
    from conceptree.concepts import DistanceConfig, NeuronDistance
    from conceptree.concepts.clustering import cut_labels, linkage_matrix, nested_silhouettes

    maps, relevance = smooth_maps(n, size)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    t0 = time.perf_counter()
    dist = NeuronDistance(maps, relevance, DistanceConfig())
    del maps  # the engine streams pooled maps; the clustering only keeps the 56x56 features
    t1 = time.perf_counter()
    Z = linkage_matrix(dist, method)  # streams the condensed distance, then links in place
    t2 = time.perf_counter()
    cuts = cut_labels(Z, list(range(2, 61)))
    scores = nested_silhouettes(dist, cuts)
    t3 = time.perf_counter()
    best = max(scores, key=lambda k: (scores[k], -k))
    row = {
        "n": n,
        "map_size": f"{size}x{size}",
        "distance_map_size": "56x56",
        "linkage": method,
        "distance_s": t1 - t0,
        "linkage_s": t2 - t1,
        "stage_note": "distance_s = normalisers; linkage_s = condensed distance (one Gram pass) + fastcluster",
        "k_search_s": t3 - t2,
        "total_s": t3 - t0,
        "k": best,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "peak_rss_above_inputs_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2 - base_rss,
        "distance_matrix_gb": n * n * 4 / 1024**3,
        "memory_note": "peak_rss_above_inputs_gb = peak RSS minus RSS after the input maps were made; "
        "the n x n matrix is never held (condensed float64 for the linkage, row blocks for the silhouettes)",
    }
    if n <= 1000:
        from sklearn.metrics import silhouette_score

        t4 = time.perf_counter()
        square = dist.square()
        naive = {k: silhouette_score(square, labels, metric="precomputed") for k, labels in cuts.items()}
        row["naive_sklearn_k_search_s"] = time.perf_counter() - t4
        row["max_abs_diff_vs_sklearn"] = max(abs(naive[k] - scores[k]) for k in scores)
    queue.put(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1,000 only")
    args = parser.parse_args()
    sizes = [1000] if args.quick else [1000, 4000, 8512]
    rows = []
    ctx = mp.get_context("spawn")
    for n in sizes:
        for size in (56, 224):
            for method in (["average", "ward"] if size == 56 else ["average"]):
                queue = ctx.Queue()
                proc = ctx.Process(target=run_row, args=(n, size, method, queue))
                proc.start()
                row = queue.get()
                proc.join()
                rows.append(row)
                print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
