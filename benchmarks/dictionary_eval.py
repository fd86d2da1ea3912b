"""Concept dictionary vs per-image clustering on the dev photos (issue 25, rules in docs/results/dictionary.md).

For every dev photo (one per dev species, target = true species) and six nuisance changes:
the per-image route (default options) and every candidate dictionary (built from the index
rows without the dev photos), their stability, part lift at K = 20 with random-disk and
random-partition controls, faithfulness, and the half-split agreement of the dictionaries.

    python benchmarks/dictionary_eval.py --index benchmarks/cache/index_cub \
        --data ../shared/data/cub_parts --out docs/results/dictionary.json

Run it alone on the machine (it is one heavy job: ~30 min on 2 cores).
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
from sklearn.metrics import adjusted_rand_score
from tqdm import tqdm

from conceptree import ConceptExplainer
from conceptree.concepts import find_concepts
from conceptree.concepts.concepts import cut_concepts
from conceptree.concepts.features import concept_maps, features_for
from conceptree.datasets.cub_parts import REGION_RULES, load_cub_parts, select
from conceptree.dictionary import ConceptDictionary, DictionaryBuilder, concise_list, neuron_relevance
from conceptree.dictionary.concepts import dictionary_concepts
from conceptree.evaluation.faithfulness import occlusion_drops, summarise_faithfulness
from conceptree.evaluation.methods import disk_maps
from conceptree.evaluation.nuisance import CHANGES, changed_input
from conceptree.evaluation.runner import at_k_table, at_key, dataset_parts, score_method_maps, summarise
from conceptree.index import ConceptIndex
from conceptree.models.loading import load_image, preprocess

K = 20


def per_image_concepts(explainer, attribution):
    neurons = features_for(explainer.engine, attribution, explainer.options)
    o = explainer.options
    concepts = find_concepts(neurons, o.distance, o.method, o.k_range)
    return neurons, concepts


def per_image_stability(a, b) -> dict:
    """a, b = (neurons, ConceptSet): reappearing concepts (Jaccard >= 0.5), their share, ARI, top-10 overlap."""
    (na, ca), (nb, cb) = a, b
    names_a, names_b = na.names(), nb.names()
    sets_a = [{names_a[i] for i in c.index} for c in ca.concepts]
    sets_b = [{names_b[i] for i in c.index} for c in cb.concepts]
    jac = np.array([[len(x & y) / len(x | y) for y in sets_b] for x in sets_a])
    best = jac.max(1)
    rel = np.array([c.relevance for c in ca.concepts])
    kept = best >= 0.5
    share_kept = float(rel[kept].sum() / rel.sum()) if rel.sum() else float("nan")
    lab_a = {n: c.rank for c in ca.concepts for n in (names_a[i] for i in c.index)}
    lab_b = {n: c.rank for c in cb.concepts for n in (names_b[i] for i in c.index)}
    shared = sorted(set(lab_a) & set(lab_b))
    ari = float(adjusted_rand_score([lab_a[n] for n in shared], [lab_b[n] for n in shared])) if shared else float("nan")
    top_b = jac[:, :10]
    top10 = float(np.mean(top_b[:10].max(1) >= 0.5)) if len(sets_a) else float("nan")
    return {"reappear": int(kept.sum()), "listed": len(sets_a), "share_kept": share_kept, "ari": ari, "top10": top10}


def dictionary_stability(ra: np.ndarray, rb: np.ndarray) -> dict:
    """Concept relevances on the photo and its change: listed ids kept, their share, top-10 overlap."""
    la, lb = concise_list(ra), concise_list(rb)
    kept = np.isin(la, lb)
    share_kept = float(ra[la][kept].sum() / ra[la].sum()) if ra[la].sum() else float("nan")
    top10 = len(set(np.argsort(-ra)[:10]) & set(np.argsort(-rb)[:10])) / 10
    return {"reappear": int(kept.sum()), "listed": int(len(la)), "share_kept": share_kept, "ari": 1.0, "top10": top10}


def matched_jaccard(labels_a: np.ndarray, labels_b: np.ndarray, weight: np.ndarray) -> dict:
    """Hungarian matching of two partitions' member sets (labels -1 ignored): mean and share-weighted Jaccard."""
    ka, kb = labels_a.max() + 1, labels_b.max() + 1
    both = (labels_a >= 0) & (labels_b >= 0)
    inter = np.zeros((ka, kb))
    np.add.at(inter, (labels_a[both], labels_b[both]), 1)
    size_a = np.bincount(labels_a[labels_a >= 0], minlength=ka)
    size_b = np.bincount(labels_b[labels_b >= 0], minlength=kb)
    jac = inter / (size_a[:, None] + size_b[None, :] - inter)
    rows, cols = linear_sum_assignment(-jac)
    w = np.bincount(labels_a[labels_a >= 0], weights=weight[labels_a >= 0], minlength=ka)[rows]
    return {"mean": float(jac[rows, cols].mean()), "weighted": float((jac[rows, cols] * w).sum() / w.sum()),
            "matched_at_least_0.5": int((jac[rows, cols] >= 0.5).sum()), "k": int(ka)}


def random_partition(labels: np.ndarray, seed: int) -> np.ndarray:
    """The same concept sizes, neurons assigned at random (inactive ones stay inactive)."""
    out = labels.copy()
    active = np.flatnonzero(labels >= 0)
    out[active] = np.random.default_rng(seed).permutation(labels[active])
    return out


def with_labels(d: ConceptDictionary, labels: np.ndarray) -> ConceptDictionary:
    return ConceptDictionary(key=d.key, columns=d.columns, labels=labels, params={**d.params, "random_partition": True},
                             mean_share=d.neuron_share)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model-config", default="docs/models/bird.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--ks", default="50,100,200")
    ap.add_argument("--betas", default="0,1")
    ap.add_argument("--species", help="comma-separated species substrings (default: the dev species)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    index = ConceptIndex(args.index)
    items, _ = load_cub_parts(args.data)
    items = select(items, args.species.split(",") if args.species else None, 1)
    if args.limit:
        items = items[: args.limit]
    root = Path(args.data).resolve()
    row_of = {im.path: im.row for im in index.images}
    eval_rows = {row_of.get(str(Path(it.path).resolve().relative_to(root))) for it in items} - {None}
    keep = [r for r in np.flatnonzero(index.ok) if int(r) not in eval_rows]
    print(f"{len(items)} photos, dictionaries from {len(keep)} index rows ({len(eval_rows)} evaluated photos left out)")

    # ---------------------------------------------------------------- dictionaries and their controls
    dictionaries: dict[str, ConceptDictionary] = {}
    build_s = {}
    for beta in [float(b) for b in args.betas.split(",")]:
        for k in [int(v) for v in args.ks.split(",")]:
            name = f"dict-b{beta:g}-k{k}"
            t0 = time.perf_counter()
            dictionaries[name] = DictionaryBuilder(k=k, location_weight=beta).fit(index, keep)
            build_s[name] = time.perf_counter() - t0
            if beta == max(float(b) for b in args.betas.split(",")):
                dictionaries[f"random-partition-k{k}"] = with_labels(dictionaries[name], random_partition(dictionaries[name].labels, k))
    halves = {}
    species_rows: dict[object, list[int]] = {}
    for im in index.images:
        if im.ok:
            key = (im.annotation or {}).get("species") or Path(im.path).parent.name
            species_rows.setdefault(key, []).append(im.row)
    half_a = [r for rows in species_rows.values() for r in sorted(rows)[: len(rows) // 2]]
    half_b = [r for rows in species_rows.values() for r in sorted(rows)[len(rows) // 2 :]]
    for name, d in dictionaries.items():
        if name.startswith("random"):
            continue
        beta, k = d.params["location_weight"], d.params["k"]
        da = DictionaryBuilder(k=k, location_weight=beta).fit(index, half_a)
        db = DictionaryBuilder(k=k, location_weight=beta).fit(index, half_b)
        weight = np.clip(da.neuron_share, 0, None)
        halves[name] = {"images": [len(half_a), len(half_b)], "agreement": matched_jaccard(da.labels, db.labels, weight),
                        "random_partitions": matched_jaccard(random_partition(da.labels, 1), random_partition(db.labels, 2), weight)}
        print(name, "halves", halves[name]["agreement"], "random", halves[name]["random_partitions"], flush=True)

    # ---------------------------------------------------------------- per photo
    explainer = ConceptExplainer.from_config(args.model_config)
    engine, prep = explainer.engine, explainer.preprocessing
    layers = [layer.name for layer in engine.layers]
    model = explainer.model.eval()
    mean = torch.as_tensor(prep.mean, dtype=torch.float32)
    std = torch.as_tensor(prep.std, dtype=torch.float32)
    grey = (128.0 / 255.0 - mean) / std
    parts = dataset_parts(items)
    scores = {rule: [] for rule in REGION_RULES}
    stability: dict[str, dict[str, list[dict]]] = {}
    faith: dict[str, list] = {}
    timing = {"per_image_s": [], "dictionary_s": []}
    for image in tqdm(items, desc="photos", unit="photo"):
        picture, _ = load_image(str(image.path))
        picture = picture.convert("RGB")
        x, _ = preprocess(picture, prep)
        attribution = engine.attribute(x, image.target)
        t0 = time.perf_counter()
        base = per_image_concepts(explainer, attribution)
        timing["per_image_s"].append(time.perf_counter() - t0)
        neurons, concepts = base
        maps_at = {at_key("ours", K): concept_maps(engine, attribution, cut_concepts(concepts, neurons, K), "layer-group")}
        base_r = {}
        for name, d in dictionaries.items():
            t0 = time.perf_counter()
            cs, _ = dictionary_concepts(d, attribution, layers, k=K)
            maps_at[at_key(name, K)] = concept_maps(engine, attribution, cs.concepts, "layer-group")
            if name == next(iter(dictionaries)):
                timing["dictionary_s"].append(time.perf_counter() - t0)
            base_r[name] = d.concept_relevance(neuron_relevance(attribution, d))
        native, restricted = disk_maps(image, 0, (K,))
        maps_at.update(restricted)
        for rule in REGION_RULES:
            scores[rule].append(score_method_maps(replace(image, region_rule=rule), maps_at, parts))
        for key, maps in maps_at.items():
            faith.setdefault(key, []).append(occlusion_drops(model, x, image.target, maps, grey, image.image_id, 0))
        for change in CHANGES:
            xc = changed_input(picture, change, prep)
            ac = engine.attribute(xc, image.target)
            stability.setdefault("per_image", {}).setdefault(change, []).append(
                per_image_stability(base, per_image_concepts(explainer, ac)))
            for name, d in dictionaries.items():
                rc = d.concept_relevance(neuron_relevance(ac, d))
                stability.setdefault(name, {}).setdefault(change, []).append(dictionary_stability(base_r[name], rc))

    # ---------------------------------------------------------------- summary
    out: dict = {"n_photos": len(items), "changes": list(CHANGES), "k": K, "dictionary_rows": len(keep),
                 "build_s": build_s, "halves": halves, "routes": {}}
    lifts = {}
    for rule in REGION_RULES:
        summary = summarise(scores[rule], parts)
        table = at_k_table(summary["methods"], (K,))
        lifts[rule] = {m: {"lift_iou": v[K]["lift_iou"], "mean_iou": v[K]["mean_iou"], "pointing": v[K]["pointing"],
                           "lift_pointing": v[K]["lift_pointing"], "threshold": v[K]["threshold"]} for m, v in table.items()}
    for route, by_change in stability.items():
        table = {}
        for change, rows in by_change.items():
            kept = np.array([r["share_kept"] for r in rows])
            table[change] = {"reappear": float(np.mean([r["reappear"] for r in rows])),
                             "listed": float(np.mean([r["listed"] for r in rows])),
                             "share_kept": float(np.nanmean(kept)), "share_kept_p10": float(np.nanpercentile(kept, 10)),
                             "ari": float(np.nanmean([r["ari"] for r in rows])), "top10": float(np.nanmean([r["top10"] for r in rows]))}
        key = "ours" if route == "per_image" else route
        f = summarise_faithfulness(faith[at_key(key, K)])
        out["routes"][route] = {"min_share_kept": min(v["share_kept"] for v in table.values()), "nuisance": table,
                                "lift_k20": {rule: lifts[rule].get(key) for rule in REGION_RULES},
                                "faithfulness_k20": {k: f[k] for k in ("drop_ratio", "p_value", "n_maps")}}
    out["random_disks_k20"] = {rule: lifts[rule].get("random-disks") for rule in REGION_RULES}
    out["random_disks_faithfulness_k20"] = {k: summarise_faithfulness(faith[at_key("random-disks", K)])[k]
                                            for k in ("drop_ratio", "p_value")}
    out["timing"] = {"per_image_clustering_median_s": float(np.median(timing["per_image_s"])),
                     "dictionary_concepts_median_s": float(np.median(timing["dictionary_s"]))}
    out["wall_s"] = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    for route, v in out["routes"].items():
        print(f"{route:24s} min_share_kept {v['min_share_kept']:.3f}  lift disks {v['lift_k20']['disks']['lift_iou']:+.3f} "
              f"slic {v['lift_k20']['slic']['lift_iou']:+.3f}  faith {v['faithfulness_k20']['drop_ratio']}")


if __name__ == "__main__":
    main()
