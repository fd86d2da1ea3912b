"""Sweep our clustering parameters on the dev species (issue 5), from the evaluation cache.

    python benchmarks/cub_sweep.py --cache /work/evalcache --data ../shared/data/cub_parts \
        --per-species 1 --out benchmarks/results/cub_sweep.json --table docs/results/cub_sweep.md

Every configuration clusters the cached neuron pool of each photo and is scored by the IoU
protocol on the representatives' pooled (56×56) maps: no model run, so the sweep is cheap;
the final table (`conceptree evaluate`) scores full-resolution maps. Each configuration's
threshold is the best on these (dev) photos, as the evaluation does.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from conceptree.evaluation.cub_parts import load_cub_parts, select
from conceptree.evaluation.image_maps import ImageMaps
from conceptree.evaluation.runner import (
    OursConfig,
    cache_path,
    dataset_parts,
    ours_concepts,
    score_image,
    summarise,
)

#: The pre-sweep defaults (k 10..40); each row changes one thing from them.
BASE = OursConfig(k_range=(10, 40))


def configs() -> dict[str, OursConfig]:
    out = {}
    for lam in (0.0, 0.25, 0.5, 0.75, 1.0):
        out[f"ward lam={lam}"] = replace(BASE, distance=replace(BASE.distance, lam=lam))
    for method in ("average", "complete", "single"):
        out[f"{method} lam=0.5"] = replace(BASE, method=method)
    for norm in ("none", "maxabs"):
        out[f"ward lam=0.5 map_norm={norm}"] = replace(BASE, distance=replace(BASE.distance, map_norm=norm))
    out["ward lam=0.5 term_norm=max"] = replace(BASE, distance=replace(BASE.distance, term_norm="max"))
    for k_range in ((5, 25), (10, 30), (15, 30), (20, 40), (20, 60)):
        out[f"ward lam=0.5 k={k_range[0]}..{k_range[1]}"] = replace(BASE, k_range=k_range)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--per-species", type=int, default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()
    images, _ = load_cub_parts(args.data)
    images = [im for im in select(images, None, args.per_species) if cache_path(Path(args.cache), im).exists()]
    parts = dataset_parts(images)
    grid = configs()
    scores: dict[str, list] = {name: [] for name in grid}
    seconds = dict.fromkeys(grid, 0.0)
    for image in tqdm(images, desc="sweep", unit="photo"):
        maps = ImageMaps.load(cache_path(Path(args.cache), image))
        neurons = maps.pool_neurons()
        for name, config in grid.items():
            t0 = time.perf_counter()
            concepts = ours_concepts(maps, config)
            reps = neurons.maps[[c.representative_index for c in concepts.concepts]]
            scores[name].append(score_image(image, maps, reps, concepts.k, parts, ("ours",)))
            seconds[name] += time.perf_counter() - t0
    rows = {}
    for name, config in grid.items():
        m = summarise(scores[name], parts)["methods"]["ours"]
        rows[name] = {"config": config.to_dict(), "mean_iou": m["mean_iou"], "pointing": m["pointing"],
                      "mean_k": m["complexity"], "threshold": m["threshold"], "parts": m["parts"],
                      "k_at_range_bottom": sum(s.k == config.k_range[0] for s in scores[name]) / len(images),
                      "k_at_range_top": sum(s.k == config.k_range[1] for s in scores[name]) / len(images),
                      "seconds": seconds[name]}
        print(f"{name:32s} IoU {m['mean_iou']:.4f} pointing {m['pointing']:.3f} k {m['complexity']:.1f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"n_images": len(images), "n_species": len({im.species for im in images}),
                                          "configs": rows}, indent=1))
    lines = ["| configuration | mean IoU (pooled maps) | pointing | mean k | k at range bottom / top | threshold |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['mean_iou']:.4f} | {r['pointing']:.3f} | {r['mean_k']:.1f} | "
                     f"{100 * r['k_at_range_bottom']:.0f}% / {100 * r['k_at_range_top']:.0f}% | {r['threshold']} |")
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(f"{len(images)} photos, {len({im.species for im in images})} species\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
