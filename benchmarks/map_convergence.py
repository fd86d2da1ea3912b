"""Do the neurons' maps say different things? Input-level CRP maps vs own-layer relevance maps.

For every photo whose evaluation cache holds the input-level maps of its 2,000 strongest
neurons (written by `conceptree evaluate --paper`), compare, for the same neurons grouped by
depth (thirds of the conv layers): the median pairwise Pearson correlation of their
input-level conditional maps `y_p` and of their own-layer relevance maps `R_p(h, w)` (both on
the 56x56 grid the clustering uses), and the median correlation of each map with the sum of
the group's maps. Under z+ the input-level maps of deep neurons tend to one map (Sixt et al.
2020); the own-layer maps are the clustering features of the default route.

    python benchmarks/map_convergence.py --cache /work/evalcache2 --data ../shared/data/cub_parts \
        --out benchmarks/results/map_convergence.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from conceptree.attribution import CRPEngine
from conceptree.concepts.layer_maps import layer_neuron_maps
from conceptree.datasets.cub_parts import load_cub_parts
from conceptree.evaluation.runner import _input, cache_model


def correlations(maps: np.ndarray, rng: np.random.Generator, n_pairs: int = 20000) -> tuple[float, float]:
    """(median pairwise correlation on sampled pairs, median correlation with the group's sum)."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    flat = flat[flat.std(1) > 0]
    if len(flat) < 3:
        return float("nan"), float("nan")
    z = (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True)
    i = rng.integers(0, len(z), n_pairs)
    j = rng.integers(0, len(z), n_pairs)
    keep = i != j
    pair = np.mean(z[i[keep]] * z[j[keep]], axis=1)
    total = flat.sum(0)
    total = (total - total.mean()) / total.std()
    return float(np.median(pair)), float(np.median(z @ total / z.shape[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pool", default="2000")
    args = parser.parse_args()
    t0 = time.perf_counter()
    cache = Path(args.cache)
    model_args = cache_model(cache)
    spec = model_args.load()
    engine = CRPEngine(spec.model)
    names = [layer.name for layer in engine.layers]
    thirds = np.array_split(np.arange(len(names)), 3)
    images = [im for im in load_cub_parts(args.data)[0] if (cache / f"{im.image_id}.input{args.pool}.npz").exists()]
    rng = np.random.default_rng(0)
    rows = []
    for image in tqdm(images, desc="photos", unit="photo"):
        with np.load(cache / f"{image.image_id}.input{args.pool}.npz") as npz:
            layer_index, channel, input_maps = npz["layer_index"], npz["channel"], npz["maps"].astype(np.float32)
        attribution = engine.attribute(_input(image, spec), image.target)
        wanted: dict[str, list[int]] = {}
        for li, c in zip(layer_index, channel):
            wanted.setdefault(names[li], []).append(int(c))
        own = layer_neuron_maps(attribution, names, wanted, tuple(input_maps.shape[-2:]))
        lookup = {(int(li), int(c)): i for i, (li, c) in enumerate(zip(own.layer_index, own.channel))}
        own_maps = own.maps[[lookup[(int(li), int(c))] for li, c in zip(layer_index, channel)]]
        row = {"image_id": image.image_id}
        for depth, layers in zip(("shallow", "middle", "deep"), thirds):
            sel = np.isin(layer_index, layers)
            row[depth] = {
                "n": int(sel.sum()),
                "input": correlations(input_maps[sel], rng),
                "own_layer": correlations(own_maps[sel], rng),
            }
        rows.append(row)
    summary = {}
    for depth in ("shallow", "middle", "deep"):
        summary[depth] = {
            f"{kind}_{what}": float(np.nanmedian([r[depth][kind][w] for r in rows]))
            for kind in ("input", "own_layer") for w, what in enumerate(("pairwise", "with_sum"))
        }
        summary[depth]["neurons_per_photo"] = float(np.mean([r[depth]["n"] for r in rows]))
    out = {"photos": len(rows), "pool": args.pool, "summary": summary, "per_photo": rows, "wall_s": time.perf_counter() - t0}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
