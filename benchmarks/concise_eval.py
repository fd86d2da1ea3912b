"""A concise, stable, hierarchical top level: every route on the dev photos (issue 35).

Rules, candidates, controls and the choice of the default are in docs/results/concise.md (written
before the run). Per photo (one per species, target = the true species): today's per-image
route and the hierarchy routes ``own``, ``consensus`` (no index), ``tree``, ``tree+own`` (a
model-level tree from the index rows without the evaluated photos), with the random-partition and
random-tree controls; the top level's stability under the six nuisance changes, the lift of the
20 maps of each hierarchy, conciseness and time.

    python benchmarks/concise_eval.py --data ../shared/data/cub_parts --index benchmarks/cache/index_cub \
        --out docs/results/concise.json

Reruns unchanged on other species (``--data``/``--index`` of another set, ``--species``). One heavy
job (about 75 s a photo on 2 cores): run it alone. Per-photo rows (stability, conciseness, times)
are appended to ``OUT.rows.jsonl`` as they finish.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from conceptree import ConceptExplainer
from conceptree.concepts import find_concepts
from conceptree.concepts.concepts import Concept, _build_concepts, canonical_order, cut_concepts
from conceptree.concepts.features import concept_maps, consensus_copies, features_for
from conceptree.concepts.flows import concept_flows
from conceptree.concepts.hierarchy import hierarchical_concepts
from conceptree.datasets.cub_parts import REGION_RULES, load_cub_parts, select
from conceptree.dictionary import DictionaryBuilder
from conceptree.dictionary.hierarchy import ModelTree, tree_concepts, tree_own_concepts
from conceptree.evaluation.methods import disk_maps
from conceptree.evaluation.nuisance import CHANGES, changed_input
from conceptree.evaluation.runner import at_k_table, at_key, dataset_parts, score_method_maps, summarise
from conceptree.index import ConceptIndex
from conceptree.models.loading import load_image, preprocess

K = 20
ROUTES = ("own", "consensus", "tree", "tree+own", "random-tree")
CONDITIONS = {"a": "min_share_kept_top >= 0.9", "b": "lift_k20_disks >= 0.074 and lift_k20_slic >= 0.050",
              "c": "median_top_level <= 8 and median_largest_share <= 0.35", "d": "time_ratio <= 1.5"}


def listed(top: list[Concept]) -> list[Concept]:
    return [c for c in top if c.relevance > 0]


def member_names(concept: Concept) -> frozenset[str]:
    return frozenset(f"{n.layer}:{n.channel}" for n in concept.neurons)


def share_kept(top_a: list[Concept], top_b: list[Concept], by_id: bool) -> dict:
    """Share of ``top_a``'s listed positive relevance whose concepts reappear in ``top_b``'s list."""
    a, b = listed(top_a), listed(top_b)
    total = sum(c.relevance for c in a)
    if by_id:
        ids = {c.concept_id for c in b}
        kept = [c.concept_id in ids for c in a]
    else:
        sets_b = [member_names(c) for c in b]
        kept = []
        for c in a:
            s = member_names(c)
            kept.append(max((len(s & t) / len(s | t) for t in sets_b), default=0.0) >= 0.5)
    return {"share_kept": float(sum(c.relevance for c, k in zip(a, kept) if k) / total) if total > 0 else float("nan"),
            "reappear": int(sum(kept)), "listed": len(a)}


def conciseness(top: list[Concept]) -> dict:
    a = listed(top)
    total = sum(c.relevance for c in a)
    return {"top_level": len(a), "largest_share": float(max(c.relevance for c in a) / total) if total > 0 else float("nan")}


def tree_top_on(model_tree: ModelTree, attribution, neurons) -> list[Concept]:
    """``tree+own``'s top level on the photo's clustered neurons, without clustering below it."""
    _, node_rel = model_tree.node_relevance(attribution)
    top = model_tree.top_level(node_rel)
    groups = model_tree.groups_of(neurons, top)
    order = canonical_order(neurons)
    active = order[groups[order] >= 0]
    present = sorted(set(groups[active].tolist()))
    labels = np.searchsorted(present, groups[active])
    concepts = _build_concepts(neurons, active, labels, len(present), order)
    for c in concepts:
        c.concept_id = int(top[int(groups[c.index[0]])])
    return concepts


def random_partition(concepts: list[Concept], neurons, seed: int) -> list[Concept]:
    """The same member counts, neurons drawn at random among those the concepts hold (the control
    written in concise.md; ``conceptree.concepts.random_groups.random_partition`` also keeps each
    concept's layer mix, a stricter control not used here)."""
    rows = np.concatenate([c.index for c in concepts])
    labels = np.concatenate([np.full(len(c.index), i) for i, c in enumerate(concepts)])
    perm = np.random.default_rng(seed).permutation(len(rows))
    order = canonical_order(neurons)
    position = {int(r): i for i, r in enumerate(order)}
    active = np.array(sorted(rows.tolist(), key=lambda r: position[int(r)]))
    label_of = dict(zip(rows[perm].tolist(), labels.tolist()))
    return _build_concepts(neurons, active, np.array([label_of[int(r)] for r in active]), len(concepts), order)


def hierarchy(route: str, explainer, attribution, x, target, neurons, trees: dict, with_sub: bool = True):
    """``(top level, 20 concepts or None, route seconds)`` of one route on one photo."""
    o = explainer.options
    t0 = time.perf_counter()
    if route in ("own", "consensus"):
        copies = None
        if route == "consensus":
            prep = explainer.preprocessing
            copies = consensus_copies(explainer.engine, x, target, neurons, prep.mean, prep.std)
        cs = hierarchical_concepts(neurons, o.distance, o.k_range, route=route, copies=copies)
        seconds = time.perf_counter() - t0
        return cs.top_level, (cut_concepts(cs, neurons, K) if with_sub else None), seconds, neurons
    if route in ("tree", "random-tree"):
        cs, nm = tree_concepts(trees[route], attribution, [la.name for la in explainer.engine.layers], k=K)
        return cs.top_level, cs.concepts, time.perf_counter() - t0, nm
    if route == "tree+own":
        if not with_sub:
            return tree_top_on(trees["tree"], attribution, neurons), None, time.perf_counter() - t0, neurons
        cs = tree_own_concepts(trees["tree"], attribution, neurons, distance=o.distance, k_range=o.k_range)
        seconds = time.perf_counter() - t0
        return cs.top_level, cut_concepts(cs, neurons, K), seconds, neurons
    raise ValueError(route)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--model-config", default="docs/models/bird.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--species", help="comma-separated species substrings (default: every species of --data)")
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
    print(f"{len(items)} photos; model-level tree from {len(keep)} index rows ({len(eval_rows)} evaluated photos left out)")
    t0 = time.perf_counter()
    dictionary = DictionaryBuilder().fit(index, keep)
    build_s = time.perf_counter() - t0
    model_tree = ModelTree(dictionary)
    trees = {"tree": model_tree, "random-tree": model_tree.permuted(0)}

    explainer = ConceptExplainer.from_config(args.model_config)
    engine, prep = explainer.engine, explainer.preprocessing
    o = explainer.options
    parts = dataset_parts(items)
    rows_path = Path(str(args.out) + ".rows.jsonl")
    if rows_path.exists():
        rows_path.unlink()
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    scores = {rule: [] for rule in REGION_RULES}
    for image in tqdm(items, desc="photos", unit="photo"):
        picture, _ = load_image(str(image.path))
        picture = picture.convert("RGB")
        x, _ = preprocess(picture, prep)
        t = time.perf_counter()
        attribution = engine.attribute(x, image.target)
        t_attr = time.perf_counter() - t
        t = time.perf_counter()
        neurons = features_for(engine, attribution, o)
        today = find_concepts(neurons, o.distance, o.method, o.k_range, stability=o.stability, k_rule=o.k_rule)
        t_today = time.perf_counter() - t
        t = time.perf_counter()
        concept_maps(engine, attribution, today.concepts, o.concept_map)
        t_today_maps = time.perf_counter() - t
        t = time.perf_counter()
        concept_flows(engine, attribution, today.concepts)
        t_today_graph = time.perf_counter() - t
        row: dict = {"image": image.image_id, "times": {"attribution_s": t_attr, "today_s": t_today,
                     "today_maps_s": t_today_maps, "today_graph_s": t_today_graph}, "routes": {}}
        maps_at = {at_key("today", K): concept_maps(engine, attribution, cut_concepts(today, neurons, K), o.concept_map)}
        base = {}
        for route in ROUTES:
            top, twenty, seconds, nm = hierarchy(route, explainer, attribution, x, image.target, neurons, trees)
            t = time.perf_counter()
            concept_maps(engine, attribution, top + twenty, o.concept_map)
            t_maps = time.perf_counter() - t
            t = time.perf_counter()
            if route != "random-tree":
                concept_flows(engine, attribution, listed(top))
            t_graph = time.perf_counter() - t
            maps_at[at_key(route, K)] = concept_maps(engine, attribution, twenty, o.concept_map)
            if route == "consensus":
                control = random_partition(twenty, nm, zlib.crc32(str(image.image_id).encode()))
                maps_at[at_key("random-partition", K)] = concept_maps(engine, attribution, control, o.concept_map)
            base[route] = top
            total = t_attr + seconds + t_maps + t_graph
            today_total = t_attr + t_today + t_today_maps + t_today_graph
            row["routes"][route] = {**conciseness(top), "route_s": seconds, "maps_s": t_maps, "graph_s": t_graph,
                                    "time_ratio": total / today_total, "nuisance": {}}
        native, restricted = disk_maps(image, 0, (K,))
        maps_at.update(restricted)
        for rule in REGION_RULES:
            s = score_method_maps(replace(image, region_rule=rule), maps_at, parts)
            scores[rule].append(s)
        for change in CHANGES:
            xc = changed_input(picture, change, prep)
            ac = engine.attribute(xc, image.target)
            nc = features_for(engine, ac, o)
            for route in ROUTES:
                top, _, _, _ = hierarchy(route, explainer, ac, xc, image.target, nc, trees, with_sub=False)
                by_id = route in ("tree", "tree+own", "random-tree")
                row["routes"][route]["nuisance"][change] = share_kept(base[route], top, by_id)
        with rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        tqdm.write(" ".join(f"{r}:{min(v['nuisance'][c]['share_kept'] for c in CHANGES):.2f}/{v['top_level']}"
                            for r, v in row["routes"].items()))

    # ---------------------------------------------------------------- summary
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    out: dict = {"n_photos": len(rows), "changes": list(CHANGES), "k": K, "tree_rows": len(keep),
                 "tree_build_s": build_s, "conditions": CONDITIONS, "routes": {}}
    lifts = {}
    for rule in REGION_RULES:
        summary = summarise(scores[rule], parts)
        table = at_k_table(summary["methods"], (K,))
        lifts[rule] = {m: {"lift_iou": v[K]["lift_iou"], "mean_iou": v[K]["mean_iou"], "pointing": v[K]["pointing"],
                           "threshold": v[K]["threshold"]} for m, v in table.items()}
    for route in ROUTES:
        per_change = {c: float(np.nanmean([r["routes"][route]["nuisance"][c]["share_kept"] for r in rows]))
                      for c in CHANGES}
        entry = {
            "min_share_kept_top": min(per_change.values()),
            "share_kept_top": per_change,
            "share_kept_top_p10": {c: float(np.nanpercentile([r["routes"][route]["nuisance"][c]["share_kept"] for r in rows], 10))
                                   for c in CHANGES},
            "lift_k20_disks": lifts["disks"][route]["lift_iou"],
            "lift_k20_slic": lifts["slic"][route]["lift_iou"],
            "median_top_level": float(np.median([r["routes"][route]["top_level"] for r in rows])),
            "median_largest_share": float(np.median([r["routes"][route]["largest_share"] for r in rows])),
            "time_ratio": float(np.median([r["routes"][route]["time_ratio"] for r in rows])),
            "route_s_median": float(np.median([r["routes"][route]["route_s"] for r in rows])),
        }
        entry["conditions_met"] = {
            "a": entry["min_share_kept_top"] >= 0.9,
            "b": entry["lift_k20_disks"] >= 0.074 and entry["lift_k20_slic"] >= 0.050,
            "c": entry["median_top_level"] <= 8 and entry["median_largest_share"] <= 0.35,
            "d": entry["time_ratio"] <= 1.5,
        }
        out["routes"][route] = entry
    out["today_k20"] = {rule: lifts[rule]["today"] for rule in REGION_RULES}
    out["random_partition_k20"] = {rule: lifts[rule]["random-partition"] for rule in REGION_RULES}
    out["random_disks_k20"] = {rule: lifts[rule]["random-disks"] for rule in REGION_RULES}
    out["today_time_s_median"] = float(np.median([sum(r["times"].values()) for r in rows]))

    def pick(candidates: list[str]) -> dict:
        entries = {r: out["routes"][r] for r in candidates}
        full = [r for r, e in entries.items() if all(e["conditions_met"].values())]
        if full:
            best = max(full, key=lambda r: entries[r]["lift_k20_disks"])
        else:
            best = max(entries, key=lambda r: (sum(entries[r]["conditions_met"].values()),
                                               entries[r]["min_share_kept_top"], entries[r]["lift_k20_disks"]))
        return {"route": best, "meets_all": bool(full), "failing": [c for c, ok in entries[best]["conditions_met"].items() if not ok],
                **{k: entries[best][k] for k in ("min_share_kept_top", "lift_k20_disks", "lift_k20_slic",
                                                 "median_top_level", "median_largest_share", "time_ratio")}}

    out["without_index"] = pick(["own", "consensus"])
    out["with_index"] = pick(["own", "consensus", "tree", "tree+own"])
    out["wall_s"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(out, indent=1))
    for route, v in out["routes"].items():
        print(f"{route:12s} kept {v['min_share_kept_top']:.3f}  disks {v['lift_k20_disks']:+.3f} slic {v['lift_k20_slic']:+.3f} "
              f"top {v['median_top_level']:.0f} largest {v['median_largest_share']:.2f} time x{v['time_ratio']:.2f}")
    print("without index:", out["without_index"])
    print("with index:", out["with_index"])


if __name__ == "__main__":
    main()
