"""Chosen k and silhouette per linkage, λ and term normalisation on real CUB photos (bird model).

Shows whether a clustering configuration gives concise concept sets (neither k at the
bottom nor at the top of the searched range, no single giant concept). Reads ``../shared`` in
place; caches each photo's neuron maps in ``benchmarks/cache/`` (not committed) so the sweep
can be re-run. Writes ``benchmarks/results/cub_k_table.json`` and ``.md``.

Run:  python benchmarks/cub_k_table.py --photos 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fastcluster
import numpy as np
import timm
import torch
from PIL import Image

from conceptree.attribution import CRPEngine
from conceptree.attribution.engine import NeuronMaps
from conceptree.concepts import DistanceConfig, NeuronDistance
from conceptree.concepts.clustering import cut_labels, nested_silhouettes

SHARED = Path(__file__).resolve().parents[2] / "shared"
OUT = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / "cache"
K_RANGE = (10, 40)
LINKAGES = ("average", "complete", "ward", "single")
LAMBDAS = (0.25, 0.5, 0.75)
TERM_NORMS = ("max", "p99")


class Mixed(NeuronDistance):
    """λ-mix of a pure map distance and a pure relevance distance (exact Ward form for ward)."""

    def __init__(self, d_map: NeuronDistance, d_rel: NeuronDistance, lam: float, euclidean: bool) -> None:
        self.n, self.block = d_map.n, d_map.block
        self.d_map, self.d_rel, self.lam, self.euclidean = d_map, d_rel, np.float32(lam), euclidean

    def rows(self, start: int, stop: int) -> np.ndarray:
        a, b = self.d_map.rows(start, stop), self.d_rel.rows(start, stop)
        if self.euclidean:
            return np.sqrt(self.lam * a * a + (1 - self.lam) * b * b)
        return self.lam * a + (1 - self.lam) * b


def neurons_for(engine: CRPEngine, image: dict) -> NeuronMaps:
    CACHE.mkdir(exist_ok=True)
    cache = CACHE / (Path(image["file"]).stem + ".npz")
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        return NeuronMaps(list(data["layers"]), data["layer_index"], data["channel"], data["relevance"], data["maps"], data["map_sums"])
    path = SHARED / "data" / "cub_parts" / image["file"]
    pixels = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32)
    x = torch.from_numpy((pixels - 128.0) * 0.0078125).permute(2, 0, 1).unsqueeze(0)
    attribution = engine.attribute(x, target=image["species"]["inat_index"])
    neurons = engine.neuron_maps(attribution, 32, map_size=(56, 56), dtype=np.float16, progress=True)
    np.savez(cache, layers=np.array(neurons.layers), layer_index=neurons.layer_index, channel=neurons.channel,
             relevance=neurons.relevance, maps=neurons.maps, map_sums=neurons.map_sums)
    return neurons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2)
    args = parser.parse_args()
    ann = json.loads((SHARED / "data" / "cub_parts" / "annotations.json").read_text())
    images = [im for im in ann["images"] if "inat_index" in im["species"] and im["subset"] == "bbox_crop227"]
    images = images[:: max(1, len(images) // args.photos)][: args.photos]
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=965, pad_type="same", bn_eps=1e-3)
    model.load_state_dict(torch.load(SHARED / "models" / "inat_bird_mobilenetv2" / "weights.pth", map_location="cpu", weights_only=True))
    engine = CRPEngine(model.eval())
    rows = []
    for im in images:
        neurons = neurons_for(engine, im)
        flat = neurons.maps.reshape(len(neurons), -1)
        active = ~((neurons.relevance == 0) & ~np.any(flat != 0, axis=1))
        maps, rel = neurons.maps[active].astype(np.float32), neurons.relevance[active]
        total = float(rel.sum())
        for term_norm in TERM_NORMS:
            d_map = NeuronDistance(maps, rel, DistanceConfig(lam=1.0, term_norm=term_norm))
            d_rel = NeuronDistance(maps, rel, DistanceConfig(lam=0.0, term_norm=term_norm))
            for method in LINKAGES:
                for lam in (LAMBDAS if method in ("average", "ward") else (0.5,)):
                    start = time.perf_counter()
                    dist = Mixed(d_map, d_rel, lam, euclidean=method == "ward")
                    Z = fastcluster.linkage(dist.condensed(), method=method, preserve_input=False)
                    cuts = cut_labels(Z, list(range(K_RANGE[0], K_RANGE[1] + 1)))
                    scores = nested_silhouettes(dist, cuts)
                    k = max(scores, key=lambda kk: (scores[kk], -kk))
                    labels = cuts[k]
                    shares = np.array([rel[labels == c].sum() for c in range(k)]) / total
                    sizes = np.bincount(labels, minlength=k)
                    row = {
                        "image": Path(im["file"]).name, "species": im["species"]["name"], "neurons": int(active.sum()),
                        "linkage": method, "lam": lam, "term_norm": term_norm, "exact_ward": method == "ward",
                        "k": k, "silhouette": scores[k], "largest_concept_size": int(sizes.max()),
                        "largest_concept_share": float(np.abs(shares).max()),
                        "concepts_over_1pct_share": int((np.abs(shares) >= 0.01).sum()),
                        "seconds": time.perf_counter() - start,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            del d_map, d_rel
    OUT.mkdir(exist_ok=True)
    (OUT / "cub_k_table.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| image | term norm | linkage | λ | k | silhouette | largest concept (neurons) | largest share | concepts ≥1 % share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['image'][:28]} | {r['term_norm']} | {r['linkage']}{' (exact)' if r['exact_ward'] else ''} | {r['lam']} | "
            f"{r['k']} | {r['silhouette']:.3f} | {r['largest_concept_size']} | {r['largest_concept_share']:.2f} | {r['concepts_over_1pct_share']} |"
        )
    (OUT / "cub_k_table.md").write_text(
        f"k searched in {K_RANGE[0]}..{K_RANGE[1]}; bird MobileNetV2, target = true species, all 52 conv layers; "
        f"command: `python benchmarks/cub_k_table.py --photos {args.photos}`\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
