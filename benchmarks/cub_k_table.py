"""Chosen k and silhouette per linkage and λ on real CUB photos with the iNat bird model.

Shows whether the default clustering gives concise concept sets (neither k = 2 nor k = max).
Reads ``../shared`` in place. Writes ``benchmarks/results/cub_k_table.json`` and a Markdown
table ``benchmarks/results/cub_k_table.md``.

Run:  python benchmarks/cub_k_table.py --photos 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from conceptree import CRPEngine
from conceptree.concepts import DistanceConfig
from conceptree.concepts.clustering import cluster
from conceptree.concepts.distance import neuron_distance

SHARED = Path(__file__).resolve().parents[2] / "shared"
OUT = Path(__file__).parent / "results"
CONFIGS = [("average", 0.5), ("complete", 0.5), ("single", 0.5), ("ward", 0.5), ("average", 0.25), ("average", 0.75)]
K_RANGE = (10, 40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=3)
    args = parser.parse_args()
    ann = json.loads((SHARED / "data" / "cub_parts" / "annotations.json").read_text())
    images = [im for im in ann["images"] if "inat_index" in im["species"] and im["subset"] == "bbox_crop227"]
    images = images[:: max(1, len(images) // args.photos)][: args.photos]
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=965, pad_type="same", bn_eps=1e-3)
    model.load_state_dict(torch.load(SHARED / "models" / "inat_bird_mobilenetv2" / "weights.pth", map_location="cpu", weights_only=True))
    engine = CRPEngine(model.eval())
    rows = []
    for im in images:
        path = SHARED / "data" / "cub_parts" / im["file"]
        pixels = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32)
        x = torch.from_numpy((pixels - 128.0) * 0.0078125).permute(2, 0, 1).unsqueeze(0)
        t0 = time.perf_counter()
        attribution = engine.attribute(x, target=im["species"]["inat_index"])
        neurons = engine.neuron_maps(attribution, 32, map_size=(56, 56), progress=True)
        maps_s = time.perf_counter() - t0
        flat = neurons.maps.reshape(len(neurons), -1)
        active = ~((neurons.relevance == 0) & ~np.any(flat != 0, axis=1))
        maps, rel = neurons.maps[active], neurons.relevance[active]
        d_map = neuron_distance(maps, rel, DistanceConfig(lam=1.0))
        d_rel = neuron_distance(maps, rel, DistanceConfig(lam=0.0))
        for method, lam in CONFIGS:
            dist = np.float32(lam) * d_map + np.float32(1 - lam) * d_rel  # = DistanceConfig(lam) with term_norm="max"
            start = time.perf_counter()
            result = cluster(dist, method, K_RANGE)
            row = {
                "image": im["file"], "species": im["species"]["name"], "neurons": int(active.sum()),
                "linkage": method, "lam": lam, "k": result.k, "silhouette": result.silhouette_by_k.get(result.k),
                "cluster_s": time.perf_counter() - start, "maps_s": maps_s,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            del dist
    OUT.mkdir(exist_ok=True)
    (OUT / "cub_k_table.json").write_text(json.dumps(rows, indent=2))
    lines = ["| image | linkage | λ | k | silhouette |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['image']).name} | {r['linkage']} | {r['lam']} | {r['k']} | {r['silhouette']:.3f} |")
    (OUT / "cub_k_table.md").write_text(
        f"k searched in {K_RANGE[0]}..{K_RANGE[1]}; command: `python benchmarks/cub_k_table.py --photos {args.photos}`\n\n"
        + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
