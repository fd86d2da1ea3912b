"""Concept stability, k by stability and robustness to nuisance changes on the dev photos (issue 22).

Rules (written before the run) and the results: docs/results/stability.md. For every dev photo
(one per dev species, target = its true species) and each change of
:data:`conceptree.evaluation.nuisance.CHANGES`:

* the photo is clustered as the explainer does (float64 LRP, 4,000 strongest neurons, Ward),
  and every cut of k in 15..30 is scored by Hennig's subsampling stability for each candidate
  scheme (fraction of neurons per draw, draws);
* k is chosen by silhouette and by stability (:func:`conceptree.concepts.clustering.choose_k`);
* each changed photo is clustered the same way; a concept of the photo *survives* a change when
  a concept of the changed photo has member Jaccard >= 0.5 with it; the table reports the ARI of
  the two partitions on the neurons both cluster, the Pearson correlation of matched concepts'
  maps (Hungarian matching on member Jaccard, maps lined up by
  :func:`conceptree.evaluation.nuisance.align_maps`), survivors and their relevance share;
* chance-controlled part lifts at each rule's own k: mean IoU of the k concept maps minus that
  of the first k random disks on the same photo (thresholds chosen per method on these photos).

    python benchmarks/stability_eval.py --data ../shared/data/cub_parts --out docs/results/stability.json

One heavy job (~1 h on 2 cores with ``--before-photos 20``): run it alone. The paper preset
(input-level maps of the 2,000 strongest neurons, ~5 min per photo) runs on a few photos:

    python benchmarks/stability_eval.py --data ../shared/data/cub_parts --limit 2 --paper-photos 2 \
        --before-photos 0 --reference-photos 0 --out docs/results/stability_paper.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from tqdm import tqdm

from conceptree import ConceptExplainer
from conceptree.concepts.clustering import choose_k, nested_silhouettes
from conceptree.concepts.concepts import canonical_order
from conceptree.concepts.distance import NeuronDistance
from conceptree.concepts.features import features_for
from conceptree.concepts.layer_maps import layer_group_maps
from conceptree.concepts.linkage import cut_labels, linkage_matrix
from conceptree.concepts.options import PAPER_POOL, ConceptOptions
from conceptree.concepts.stability import StabilityConfig, cut_stability, weighted_stability
from conceptree.datasets.cub_parts import REGION_RULES, load_cub_parts, select
from conceptree.evaluation.methods import random_disks
from conceptree.evaluation.nuisance import CHANGES, align_maps, changed_input
from conceptree.evaluation.runner import dataset_parts, score_method_maps, summarise
from conceptree.models.loading import load_image, preprocess

SCHEMES = {"f50": StabilityConfig(resamples=8, fraction=0.5), "f80": StabilityConfig(resamples=8, fraction=0.8)}
REFERENCE_DRAWS = 32
SURVIVES = 0.5


def cluster_photo(engine, attribution, options: ConceptOptions, schemes: dict[str, StabilityConfig]) -> dict:
    """The clustering of one photo as ``find_concepts`` does it, with every k's silhouette and each scheme's stability."""
    t0 = time.perf_counter()
    neurons = features_for(engine, attribution, options)
    order = canonical_order(neurons)
    flat = neurons.maps.reshape(len(neurons), -1)
    inactive = (neurons.relevance == 0) & ~np.any(flat != 0, axis=1)
    active = order[~inactive[order]]
    distance = replace(options.distance, exact_ward=options.method == "ward")
    condensed = NeuronDistance(neurons.maps[active], neurons.relevance[active], distance).condensed()
    square = squareform(condensed)
    Z = linkage_matrix(condensed, options.method)
    del condensed
    ks = list(range(options.k_range[0], min(options.k_range[1], len(active) - 1) + 1))
    cuts = cut_labels(Z, ks)
    sil = nested_silhouettes(square, cuts)
    t1 = time.perf_counter()
    names = neurons.names()
    rel = neurons.relevance[active]
    out = {"names": [names[i] for i in active], "relevance": rel, "cuts": cuts, "silhouette": sil,
           "k": {"silhouette": choose_k(ks, sil, {}, "silhouette")}, "stability": {}, "by_k": {},
           "seconds": {"clustering": t1 - t0}, "neurons": neurons, "active": active}
    for name, config in schemes.items():
        t = time.perf_counter()
        stab = cut_stability(square, cuts, options.method, config)
        out["seconds"][name] = time.perf_counter() - t
        by_k = {k: weighted_stability(stab.scores[k], np.bincount(cuts[k], weights=np.abs(rel), minlength=k)) for k in ks}
        out["stability"][name] = stab.scores
        out["by_k"][name] = by_k
        out["k"][name] = choose_k(ks, sil, by_k, "stability")
    return out


def groups_of(c: dict, k: int) -> list[dict[str, list[int]]]:
    """``layer -> channels`` of each cluster of the cut at ``k``."""
    groups: list[dict[str, list[int]]] = [{} for _ in range(k)]
    for name, label in zip(c["names"], c["cuts"][k]):
        layer, channel = name.rsplit(":", 1)
        groups[label].setdefault(layer, []).append(int(channel))
    return groups


def agreement(a: dict, ka: int, maps_a: np.ndarray, b: dict, kb: int, maps_b: np.ndarray, change: str) -> dict:
    """How the concepts of photo ``a`` (cut ``ka``) reappear on its changed version ``b`` (cut ``kb``)."""
    index_b = {n: i for i, n in enumerate(b["names"])}
    la, lb = a["cuts"][ka], b["cuts"][kb]
    shared_a = np.array([i for i, n in enumerate(a["names"]) if n in index_b], dtype=np.int64)
    shared_b = np.array([index_b[a["names"][i]] for i in shared_a], dtype=np.int64)
    inter = np.zeros((ka, kb))
    np.add.at(inter, (la[shared_a], lb[shared_b]), 1)
    size_a, size_b = np.bincount(la, minlength=ka), np.bincount(lb, minlength=kb)
    jac = inter / (size_a[:, None] + size_b[None, :] - inter)
    best = jac.max(1)
    rel = np.bincount(la, weights=a["relevance"], minlength=ka)
    rows, cols = linear_sum_assignment(-jac)
    oa, ob = align_maps(maps_a[rows], maps_b[cols], change)
    corr = []
    for x, y in zip(oa.reshape(len(rows), -1), ob.reshape(len(rows), -1)):
        corr.append(float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan"))
    survived = best >= SURVIVES
    positive = np.clip(rel, 0, None)
    return {"ari": float(adjusted_rand_score(la[shared_a], lb[shared_b])), "map_corr": float(np.nanmean(corr)),
            "survived": survived.tolist(), "best_jaccard": best.tolist(),
            "share_survived": float(positive[survived].sum() / positive.sum()) if positive.sum() > 0 else float("nan"),
            "k": [int(ka), int(kb)]}


def concept_maps_at(attribution, c: dict, k: int) -> np.ndarray:
    return layer_group_maps(attribution, groups_of(c, k), tuple(attribution.forward.input.shape[-2:]))


def summary_rows(rows: list[dict]) -> dict:
    return {"ari": float(np.nanmean([r["ari"] for r in rows])), "map_corr": float(np.nanmean([r["map_corr"] for r in rows])),
            "survived": float(np.mean([np.mean(r["survived"]) for r in rows])),
            "share_survived": float(np.nanmean([r["share_survived"] for r in rows])), "photos": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model-config", default="docs/models/bird.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--species", help="comma-separated species substrings (default: the dev species)")
    ap.add_argument("--reference-photos", type=int, default=10, help="photos with 32-draw reference scores")
    ap.add_argument("--before-photos", type=int, default=67, help="photos also run as before (float32 LRP)")
    ap.add_argument("--paper-photos", type=int, default=0, help="photos also run with the paper preset (2,000 neurons)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    items, _ = load_cub_parts(args.data)
    items = select(items, args.species.split(",") if args.species else None, 1)
    if args.limit:
        items = items[: args.limit]
    parts = dataset_parts(items)
    routes = {"after": ConceptExplainer.from_config(args.model_config)}
    routes["before"] = ConceptExplainer.from_config(args.model_config, options=ConceptOptions(precision="float32"))
    if args.paper_photos:
        paper = ConceptOptions(features="input", concept_map="layer-group", max_neurons=PAPER_POOL, precision="float32")
        routes["paper"] = ConceptExplainer.from_config(args.model_config, options=paper)
    prep = routes["after"].preprocessing
    nuisance: dict[str, dict[str, dict[str, list]]] = {}
    survival: dict[str, list] = {name: [] for name in SCHEMES}
    survival_rows: list[dict] = []
    reference: dict[str, list] = {name: [] for name in SCHEMES}
    scores = {rule: [] for rule in REGION_RULES}
    per_photo = []
    for p, image in enumerate(tqdm(items, desc="photos", unit="photo")):
        picture, _ = load_image(str(image.path))
        picture = picture.convert("RGB")
        x, _ = preprocess(picture, prep)
        record = {"image": image.image_id, "species": image.species}
        for route, explainer in routes.items():
            if (route == "before" and p >= args.before_photos) or (route == "paper" and p >= args.paper_photos):
                continue
            engine = explainer.engine
            schemes = SCHEMES if route == "after" else {}
            attribution = engine.attribute(x, image.target)
            base = cluster_photo(engine, attribution, explainer.options, schemes)
            rules = ["silhouette", *schemes]
            base_maps = {r: concept_maps_at(attribution, base, base["k"][r]) for r in rules}
            record[route] = {"k": base["k"], "seconds": base["seconds"]}
            if route == "after":
                maps_at = {}
                disks = random_disks(image, max(base["k"].values()), 0)
                for r in rules:
                    maps_at[r] = base_maps[r]
                    maps_at[f"disks-{r}"] = disks[: base["k"][r]]
                for rule in REGION_RULES:
                    scores[rule].append(score_method_maps(replace(image, region_rule=rule), maps_at, parts))
                if p < args.reference_photos:
                    for name, config in SCHEMES.items():
                        big = cluster_photo(engine, attribution, explainer.options,
                                            {name: replace(config, resamples=REFERENCE_DRAWS, seed=1)})
                        k = base["k"]["silhouette"]
                        reference[name].append([base["stability"][name][k].tolist(), big["stability"][name][k].tolist()])
                record["by_k"] = {name: {str(k): v for k, v in by_k.items()} for name, by_k in base["by_k"].items()}
                record["silhouette"] = {str(k): v for k, v in base["silhouette"].items()}
            for change in CHANGES:
                xc = changed_input(picture, change, prep)
                ac = engine.attribute(xc, image.target)
                other = cluster_photo(engine, ac, explainer.options, schemes)
                for r in rules:
                    kb = other["k"][r]
                    row = agreement(base, base["k"][r], base_maps[r], other, kb, concept_maps_at(ac, other, kb), change)
                    nuisance.setdefault(f"{route}/{r}", {}).setdefault(change, []).append(row)
                    if route == "after" and r == "silhouette":
                        k = base["k"]["silhouette"]
                        for name in SCHEMES:
                            survival[name].append((base["stability"][name][k].tolist(), row["survived"]))
                        survival_rows.append({"image": image.image_id, "change": change, "survived": row["survived"],
                                              **{name: base["stability"][name][k].tolist() for name in SCHEMES}})
        per_photo.append(record)
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps({"done": p + 1, "per_photo": per_photo}))

    # ---------------------------------------------------------------- summary
    out: dict = {"photos": len(items), "changes": list(CHANGES), "survives_at_jaccard": SURVIVES,
                 "schemes": {n: c.to_dict() for n, c in SCHEMES.items()}, "machine": f"{torch.get_num_threads()} torch threads"}
    out["nuisance"] = {route: {change: summary_rows(rows) for change, rows in by_change.items()}
                       for route, by_change in nuisance.items()}
    for route, by_change in nuisance.items():
        out["nuisance"][route]["all"] = summary_rows([r for rows in by_change.values() for r in rows])
    out["prediction"] = {}
    for name, pairs in survival.items():
        s = np.concatenate([np.asarray(a, float) for a, _ in pairs])
        y = np.concatenate([np.asarray(b, bool) for _, b in pairs])
        keep = np.isfinite(s)
        bands = {"stable": s >= 0.75, "weak": (s > 0.5) & (s < 0.75), "fragile": s <= 0.5}
        out["prediction"][name] = {
            "auc": float(roc_auc_score(y[keep], s[keep])), "concept_changes": int(keep.sum()),
            "survival": {band: {"share_of_concepts": float(m[keep].mean()), "survived": float(y[m & keep].mean()) if (m & keep).any() else None}
                         for band, m in bands.items()},
            "seconds_median": float(np.median([r["after"]["seconds"][name] for r in per_photo])),
        }
    all_scores = np.concatenate([np.asarray(s, float) for s, _ in survival["f80"]]) if survival["f80"] else np.zeros(0)
    out["distribution"] = {name: np.nanpercentile(np.concatenate([np.asarray(s, float) for s, _ in pairs]),
                                                  [10, 25, 50, 75, 90]).tolist() for name, pairs in survival.items()}
    out["distribution_f80_n"] = int(np.isfinite(all_scores).sum())
    out["reference_draws"] = {}
    for name, pairs in reference.items():
        if pairs:
            a = np.concatenate([np.asarray(x, float) for x, _ in pairs])
            b = np.concatenate([np.asarray(y, float) for _, y in pairs])
            keep = np.isfinite(a) & np.isfinite(b)
            out["reference_draws"][name] = {"photos": len(pairs), "draws": REFERENCE_DRAWS,
                                            "pearson_8_vs_32": float(np.corrcoef(a[keep], b[keep])[0, 1]),
                                            "mean_abs_diff": float(np.abs(a[keep] - b[keep]).mean()),
                                            "same_band": float(np.mean([_band(u) == _band(v) for u, v in zip(a[keep], b[keep])]))}
    out["lifts"] = {}
    for rule in REGION_RULES:
        methods = summarise(scores[rule], parts)["methods"]
        out["lifts"][rule] = {r: {"mean_iou": methods[r]["mean_iou"], "disks_mean_iou": methods[f"disks-{r}"]["mean_iou"],
                                  "lift_iou": methods[r]["mean_iou"] - methods[f"disks-{r}"]["mean_iou"],
                                  "lift_pointing": methods[r]["pointing"] - methods[f"disks-{r}"]["pointing"],
                                  "mean_k": methods[r]["complexity"]}
                              for r in ["silhouette", *SCHEMES]}
    out["wall_s"] = time.perf_counter() - t_start
    out["per_photo"] = per_photo
    out["survival_rows"] = survival_rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    for name, v in out["prediction"].items():
        print(name, "auc", round(v["auc"], 3), v["survival"])
    for rule, v in out["lifts"].items():
        print(rule, {r: (round(x["lift_iou"], 4), x["mean_k"]) for r, x in v.items()})
    for route, v in out["nuisance"].items():
        print(route, v["all"])


def _band(s: float) -> str:
    return "stable" if s >= 0.75 else "fragile" if s <= 0.5 else "weak"


if __name__ == "__main__":
    main()
