"""Is the concept graph more than noise? Concentration of flows of real concepts against random partitions.

For every dev photo of the CUB evaluation (true class, default options): the explanation's
concepts and their first-passage flows (:mod:`conceptree.concepts.flows`); then ``--draws``
random partitions of the *same* clustered neurons into concepts of the same sizes and the same
layer mixes (within each layer, the member neurons' concept labels are permuted), and their
flows on the same LRP pass. Statistic per concept: the share of what it draws from other
concepts that its 3 largest incoming edges carry (``ConceptFlows.top_incoming(3)``); per photo
the median over concepts. The rule is in ``docs/results/hierarchy.md`` (written before the run).

One heavy job (~1 h on 2 cores): run it alone.

    python benchmarks/hierarchy_eval.py --data ../shared/data/cub_parts --out docs/results/hierarchy.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from conceptree import ConceptExplainer
from conceptree.concepts.flows import EDGE_SHARE, ConceptFlows, concept_flows
from conceptree.concepts.options import ConceptOptions
from conceptree.concepts.random_groups import random_partition
from conceptree.datasets.cub_parts import load_cub_parts, select
from conceptree.models.loading import load_image, preprocess

TOP = 3


def summary(flows: ConceptFlows) -> dict:
    top = flows.top_incoming(TOP)
    edges = (flows.flows >= EDGE_SHARE).sum(1)
    return {"top3_median": float(np.nanmedian(top)), "top3": top.tolist(),
            "edges_mean": float(edges.mean()), "self_mean": float(flows.self_share.mean()),
            "to_input_mean": float(flows.to_input.mean()), "leak_max": float(np.abs(flows.leak).max()),
            "other_concepts_mean": float(flows.flows.sum(1).mean())}


def bootstrap_ci(values: np.ndarray, draws: int = 10000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model-config", default="docs/models/bird.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--species", help="comma-separated species substrings (default: the dev species)")
    ap.add_argument("--draws", type=int, default=2, help="random partitions per photo")
    args = ap.parse_args()
    t_start = time.perf_counter()
    items, _ = load_cub_parts(args.data)
    items = select(items, args.species.split(",") if args.species else None, 1)
    if args.limit:
        items = items[: args.limit]
    # the flows are computed here (timed), not inside explain
    explainer = ConceptExplainer.from_config(args.model_config, options=ConceptOptions(graph=False))
    engine = explainer.engine
    rng = np.random.default_rng(0)
    per_photo = []
    for image in tqdm(items, desc="photos", unit="photo"):
        picture, _ = load_image(str(image.path))
        x, _ = preprocess(picture.convert("RGB"), explainer.preprocessing)
        attribution = engine.attribute(x, image.target)
        explanation = explainer.explain(x, target=image.target, attribution=attribution)
        concepts = explanation.concepts.concepts
        t = time.perf_counter()
        real = concept_flows(engine, attribution, concepts)
        seconds = time.perf_counter() - t
        randoms = [summary(concept_flows(engine, attribution, random_partition(concepts, rng))) for _ in range(args.draws)]
        per_photo.append({"image": image.image_id, "species": image.species, "k": len(concepts),
                          "explain_s": explanation.timings["total_s"], "graph_s": seconds,
                          "real": summary(real), "random": randoms})
        partial = Path(args.out).with_suffix(".partial.json")
        partial.write_text(json.dumps({"per_photo": per_photo}, indent=1))
    real = np.array([p["real"]["top3_median"] for p in per_photo])
    rand = np.array([np.mean([r["top3_median"] for r in p["random"]]) for p in per_photo])
    diff = real - rand
    result = {
        "photos": len(per_photo), "draws": args.draws, "statistic": f"median over concepts of top_incoming({TOP})",
        "real_mean": float(real.mean()), "random_mean": float(rand.mean()),
        "difference_mean": float(diff.mean()), "difference_ci95": bootstrap_ci(diff),
        "photos_real_above_random": int((diff > 0).sum()),
        "edges_mean": {"real": float(np.mean([p["real"]["edges_mean"] for p in per_photo])),
                       "random": float(np.mean([r["edges_mean"] for p in per_photo for r in p["random"]]))},
        "self_mean": {"real": float(np.mean([p["real"]["self_mean"] for p in per_photo])),
                      "random": float(np.mean([r["self_mean"] for p in per_photo for r in p["random"]]))},
        "to_input_mean": {"real": float(np.mean([p["real"]["to_input_mean"] for p in per_photo])),
                          "random": float(np.mean([r["to_input_mean"] for p in per_photo for r in p["random"]]))},
        "leak_max": float(max(p["real"]["leak_max"] for p in per_photo)),
        "graph_s_median": float(np.median([p["graph_s"] for p in per_photo])),
        "explain_s_median": float(np.median([p["explain_s"] for p in per_photo])),
        "wall_s": time.perf_counter() - t_start,
        "per_photo": per_photo,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).with_suffix(".partial.json").unlink(missing_ok=True)
    print(json.dumps({k: v for k, v in result.items() if k != "per_photo"}, indent=1))


if __name__ == "__main__":
    main()
