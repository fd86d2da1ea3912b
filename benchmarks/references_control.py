"""A control chance cannot pass: are a concept's top references consistent in the bird part they
show, beyond random neuron groups of the same size and layer mix?

    python benchmarks/references_control.py --data ../shared/data/cub_parts --index INDEX \
        [--random 99] [--top 10] [--exact-check 8] [--out docs/results/references.json]

Rule, written before the run (and rerun unchanged on kept-aside species: pass their folder and
an index of it):

- Photos: the evaluation's dev photos of ``--data`` (``load_cub_parts`` + one photo per species,
  target = the true species, as ``conceptree evaluate``). Each is explained with the default
  options; its concepts are the groups under test.
- References of a group: the ``--top`` images of the index by the product's ranking
  (:meth:`ConceptIndex.scores`, relevance-weighted by the members' ``r_p`` on the explained
  photo), excluding the explained photo itself.
- Part of a reference: the part region (evaluation disks, left/right merged) at the seed of the
  group's map on it, the map being the product's (:func:`peak_map`) and the seed its first
  maximum; "no part" when the seed lies in no part's disk.
- Part consistency of a group: the largest number of its references showing one same part,
  divided by ``--top``.
- Control (the issue's "random neuron groups matched in size and layer mix"): for each concept,
  ``--random`` groups of channels drawn uniformly from each layer the concept has members in,
  as many per layer as the concept has (same layer histogram), ranked and scored exactly as the
  concept (weights = their own ``r_p`` on the photo, positive part).
  ``p = (1 + #{random >= real}) / (1 + random)``; a concept beats random when ``p < 0.05``.
  Lift = real − mean random consistency. These give ``share_beating_random`` and ``mean_lift``.
- Stricter control, reported beside it (``same_pool``): the random groups are drawn from the
  neurons clustered in the same explanation (the photo's 4,000 most relevant), so they share
  the photo's relevance and test what the clustering adds beyond it.
- Sensitivity check of the statistic itself (``representative``): each concept's most relevant
  neuron alone (zennit-crp's relevance maximisation of one channel) against ``--random``
  single channels of the same layer, same ranking and part rule.
- Written after a dry run of the stricter control alone on 2 photos with 19 random groups
  (real 0.35 vs random 0.35 consistency), before any run of this rule.
- Trivial baseline: the same consistency when each reference's seed is drawn uniformly over
  its image (expected over 200 draws).
- Targets (from the issue): ``share_beating_random >= 0.5`` and ``mean_lift > 0``.
- ``--dictionary DICT`` (added for the concept dictionary, issue 25): the groups under test are
  each photo's concise list from the dictionary instead of its per-image concepts; everything
  else is unchanged (the same-pool control draws from the listed concepts' members).
- ``by_stability`` (added for issue 22): the same statistic for the concepts labelled stable,
  weak and fragile by the explainer's stability score (does a concept that reappears under
  resampling also show one part on its references?).

``--exact-check N`` also recomputes, for the first N photos, every real concept's reference maps
from each reference's own LRP pass (``exact_references``) and reports how far the seeds, crop
boxes and parts of the stored-peak maps are from the exact ones, and the consistency under the
exact maps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "docs" / "models" / "bird.json"


def explain_dev(data: Path, cache: Path, limit: int | None = None, dictionary: Path | None = None) -> list[dict]:
    """The default explanation's concepts of every dev photo (cached as JSON); with a concept
    dictionary, its concise list of each photo."""
    from conceptree import ConceptExplainer
    from conceptree.datasets.cub_parts import load_cub_parts, select

    if cache.is_file():
        return json.loads(cache.read_text())
    images, _ = load_cub_parts(data)
    dev = select(images, per_species=1)[:limit]
    explainer = ConceptExplainer.from_config(CONFIG, dictionary=dictionary)
    out = []
    for i, image in enumerate(dev):
        t0 = time.perf_counter()
        explanation = explainer.explain(image.path, target=image.target)
        attribution = explainer.attribute(image.path, target=image.target)
        everything = [float(v) for layer in explainer.engine.layers for v in attribution.channel_relevance(layer.name)]
        active = [n for c in explanation.concepts.concepts for n in c.neurons]
        out.append({"file": str(image.path.relative_to(data)), "species": image.species,
                    "pixels_sha1": explanation.image_info.hash,
                    "concepts": [{"rank": c.rank, "share": c.share, "stability": c.stability,
                                  "neurons": [[n.layer, n.channel, n.relevance] for n in c.neurons]}
                                 for c in explanation.concepts.concepts],
                    "top_level": [{"rank": c.rank, "share": c.share, "stability": c.stability,
                                   "neurons": [[n.layer, n.channel, n.relevance] for n in c.neurons]}
                                  for c in explanation.concepts.top_level],
                    "pool": [[n.layer, n.channel, n.relevance] for n in active],
                    "relevance": everything})
        print(f"explained {i + 1}/{len(dev)} {image.path.name}: k={explanation.concepts.k} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def weights_of(relevance: np.ndarray) -> np.ndarray:
    from conceptree.index.specificity import ranking_weights

    return ranking_weights(relevance)


class Groups:
    """All groups under test as sparse matrices over the index's neuron columns."""

    def __init__(self, n_neurons: int) -> None:
        self.n = n_neurons
        self.columns: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []

    def add(self, columns: np.ndarray, relevance: np.ndarray) -> int:
        self.columns.append(np.asarray(columns, np.int64))
        self.weights.append(weights_of(np.asarray(relevance, np.float64)))
        return len(self.columns) - 1

    def matrix(self, values: list[np.ndarray] | None = None) -> sparse.csc_matrix:
        """``(neurons, groups)`` with the ranking weights (or ``values``) as entries."""
        values = values if values is not None else self.weights
        rows = np.concatenate(self.columns)
        cols = np.concatenate([np.full(len(c), g) for g, c in enumerate(self.columns)])
        return sparse.csc_matrix((np.concatenate(values), (rows, cols)), shape=(self.n, len(self.columns)))


def seeds_from_peaks(index, row: int, groups: list[int], all_groups: Groups, size: tuple[int, int]) -> np.ndarray:
    """Seed ``(x, y)`` of each group's :func:`peak_map` on ``row`` under the crop rule
    (:func:`crop_box`), vectorised over the groups (checked against it on a sample)."""
    from conceptree.index.references import CROP_SIGMA

    gh, gw = index.peak_grid
    relevance = np.clip(np.asarray(index.relevance[row], dtype=np.float64), 0.0, None)
    cells = np.asarray(index.peaks[row], dtype=np.int64)
    sides = index.cell_size(np.arange(index.n_neurons))
    member = sparse.csr_matrix((np.concatenate([np.ones(len(all_groups.columns[g])) for g in groups]),
                                (np.concatenate([np.full(len(all_groups.columns[g]), i) for i, g in enumerate(groups)]),
                                 np.concatenate([all_groups.columns[g] for g in groups]))),
                               shape=(len(groups), index.n_neurons))
    grid = np.zeros((len(groups), gh, gw))
    for side in np.unique(sides):
        chosen = np.nonzero(sides == side)[0]
        place = sparse.csr_matrix((relevance[chosen], (chosen, cells[chosen])), shape=(index.n_neurons, gh * gw))
        mass = (member @ place).toarray().reshape(len(groups), gh, gw)
        grid += ndimage.uniform_filter(mass, size=(1, int(side), int(side)), mode="constant") if side > 1 else mass
    grid = ndimage.gaussian_filter(grid.astype(np.float32).astype(np.float64), (0, CROP_SIGMA, CROP_SIGMA),
                                   mode="constant")  # as region_grid
    flat = grid.reshape(len(groups), -1)
    best = flat.argmax(1)
    empty = flat.max(1) <= 0
    r, c = np.divmod(best, gw)
    height, width = size
    ys = np.minimum(((r + 0.5) * height / gh).astype(int), height - 1)
    xs = np.minimum(((c + 0.5) * width / gw).astype(int), width - 1)
    out = np.stack([xs, ys], 1)
    out[empty] = -1
    return out


def consistency(parts: list[int], top: int) -> float:
    counted = Counter(p for p in parts if p >= 0)
    return max(counted.values(), default=0) / top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a cub_parts folder (annotations.json)")
    parser.add_argument("--index", type=Path, required=True, help="an index of the bird model over --data")
    parser.add_argument("--random", type=int, default=99)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exact-check", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="only the first N dev photos (a dry run)")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache" / "references_control")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "references.json")
    parser.add_argument("--dictionary", type=Path, default=None,
                        help="test the concepts of this concept dictionary (each photo's concise list) instead")
    args = parser.parse_args()
    import torch

    from conceptree.index import ConceptIndex
    from conceptree.index.evidence import part_label_map
    from conceptree.models.loading import Preprocessing

    torch.set_num_threads(2)
    t_start = time.perf_counter()
    index = ConceptIndex(args.index)
    prep = Preprocessing.from_dict(index.key["preprocessing"])
    size = (prep.crop or prep.resize,) * 2
    # the explainer's options changed with issue 22 (float64 LRP, stability scores): a new cache
    tag = f"_dict_{args.dictionary.resolve().name}" if args.dictionary else "_stability"
    dev = explain_dev(args.data, args.cache / f"dev_concepts_{args.data.resolve().name}_{args.limit or 'all'}{tag}.json",
                      args.limit, args.dictionary)
    rng = np.random.default_rng(args.seed)
    groups = Groups(index.n_neurons)
    tests = []  # (photo, concept rank, real group, [random groups], own row)
    for photo in dev:
        own = index.row_of_pixels(photo["pixels_sha1"])
        pool_by_layer: dict[str, list[tuple[int, float]]] = {}
        for layer, channel, rel in photo["pool"]:
            pool_by_layer.setdefault(layer, []).append((index.column(layer, channel), rel))
        for concept in photo["concepts"]:
            neurons = concept["neurons"]
            real = groups.add([index.column(la, ch) for la, ch, _ in neurons], [r for _, _, r in neurons])
            histogram = Counter(la for la, _, _ in neurons)
            randoms, pooled = [], []
            everything = np.asarray(photo["relevance"])
            for _ in range(args.random):
                cols, rels, pcols, prels = [], [], [], []
                for layer, count in sorted(histogram.items()):
                    offset, channels = index.columns[layer]
                    pick = offset + rng.choice(channels, size=count, replace=False)
                    cols += pick.tolist()
                    rels += everything[pick].tolist()
                    pool = pool_by_layer[layer]
                    pick = rng.choice(len(pool), size=count, replace=False)
                    pcols += [pool[i][0] for i in pick]
                    prels += [pool[i][1] for i in pick]
                randoms.append(groups.add(cols, rels))
                pooled.append(groups.add(pcols, prels))
            rep_layer, rep_channel, rep_rel = max(neurons, key=lambda n: n[2])
            rep = groups.add([index.column(rep_layer, rep_channel)], [1.0])
            offset, channels = index.columns[rep_layer]
            singles = [groups.add([offset + int(c)], [1.0]) for c in rng.choice(channels, size=args.random)]
            tests.append({"file": photo["file"], "rank": concept["rank"], "share": concept["share"],
                          "stability": concept.get("stability"),
                          "size": len(neurons), "real": real, "random": randoms, "same_pool": pooled, "own": own,
                          "rep": rep, "singles": singles})
    print(f"{len(tests)} concepts of {len(dev)} photos, {len(groups.columns)} groups", flush=True)
    # ranking: (images, groups) scores in one sparse product, failed images and the own photo excluded
    relevance = np.asarray(index.relevance, dtype=np.float32) / np.maximum(index.abs_total, 1e-30)[:, None].astype(np.float32)
    scores = np.asarray(groups.matrix().T.tocsr() @ relevance.T).T  # (images, groups)
    scores[~index.ok] = -np.inf
    top_rows: dict[int, list[int]] = {}
    for test in tests:
        for g in [test["real"], *test["random"], *test["same_pool"], test["rep"], *test["singles"]]:
            column = scores[:, g].astype(np.float64).copy()
            if test["own"] is not None:
                column[test["own"]] = -np.inf
            order = np.lexsort((np.arange(len(column)), -column))
            top_rows[g] = [int(r) for r in order[: args.top]]
    # seeds and parts, one row at a time
    by_row: dict[int, list[int]] = {}
    for g, rows in top_rows.items():
        for r in rows:
            by_row.setdefault(r, []).append(g)
    part_of: dict[tuple[int, int], int] = {}
    uniform: dict[int, np.ndarray] = {}
    for i, (row, gs) in enumerate(sorted(by_row.items())):
        annotation = index.images[row].annotation
        labels, _ = part_label_map(annotation, prep, size)
        uniform[row] = np.bincount(labels[labels >= 0].ravel(), minlength=11) / labels.size
        seeds = seeds_from_peaks(index, row, gs, groups, size)
        if i % 50 == 0:  # the vectorised seeds equal the product's crop rule
            from conceptree.index.references import crop_box, peak_map

            for g, seed in list(zip(gs, seeds))[:5]:
                box, expected, _, empty = crop_box(peak_map(index, row, groups.columns[g], size))
                assert (tuple(seed) == expected) or (empty and seed[0] < 0), (seed, expected)
        for g, (x, y) in zip(gs, seeds):
            part_of[(g, row)] = -1 if x < 0 else int(labels[y, x])
        if (i + 1) % 100 == 0:
            print(f"parts: {i + 1}/{len(by_row)} reference images", flush=True)
    # per concept statistics
    draws = 200
    per_concept = []
    for test in tests:
        real = consistency([part_of[(test["real"], r)] for r in top_rows[test["real"]]], args.top)
        rand = np.array([consistency([part_of[(g, r)] for r in top_rows[g]], args.top) for g in test["random"]])
        p = (1 + int((rand >= real).sum())) / (1 + len(rand))
        pool = np.array([consistency([part_of[(g, r)] for r in top_rows[g]], args.top) for g in test["same_pool"]])
        p_pool = (1 + int((pool >= real).sum())) / (1 + len(pool))
        rep = consistency([part_of[(test["rep"], r)] for r in top_rows[test["rep"]]], args.top)
        singles = np.array([consistency([part_of[(g, r)] for r in top_rows[g]], args.top) for g in test["singles"]])
        p_rep = (1 + int((singles >= rep).sum())) / (1 + len(singles))
        sims = []
        for _ in range(draws):
            picks = []
            for r in top_rows[test["real"]]:
                probs = np.append(uniform[r], max(0.0, 1.0 - uniform[r].sum()))  # last: no part
                pick = int(rng.choice(len(probs), p=probs / probs.sum()))
                picks.append(pick if pick < len(uniform[r]) else -1)
            sims.append(consistency(picks, args.top))
        per_concept.append({"file": test["file"], "rank": test["rank"], "share": test["share"], "size": test["size"],
                            "stability": test["stability"],
                            "consistency": real, "random_mean": float(rand.mean()), "random_p95": float(np.quantile(rand, 0.95)),
                            "p": p, "same_pool_mean": float(pool.mean()), "same_pool_p": p_pool,
                            "uniform_seed": float(np.mean(sims)), "representative": rep,
                            "single_random_mean": float(singles.mean()), "representative_p": p_rep,
                            "parts": [part_of[(test["real"], r)] for r in top_rows[test["real"]]]})
    lifts = np.array([c["consistency"] - c["random_mean"] for c in per_concept])
    beating = np.array([c["p"] < 0.05 for c in per_concept])
    shares = np.array([c["share"] for c in per_concept])
    summary = {
        "share_beating_random": float(beating.mean()),
        "mean_lift": float(lifts.mean()),
        "relevance_weighted_share_beating_random": float((beating * np.abs(shares)).sum() / np.abs(shares).sum()),
        "mean_consistency": float(np.mean([c["consistency"] for c in per_concept])),
        "mean_random_consistency": float(np.mean([c["random_mean"] for c in per_concept])),
        "mean_uniform_seed_consistency": float(np.mean([c["uniform_seed"] for c in per_concept])),
        "concepts": len(per_concept), "photos": len(dev),
        "same_pool": {
            "share_beating_random": float(np.mean([c["same_pool_p"] < 0.05 for c in per_concept])),
            "mean_lift": float(np.mean([c["consistency"] - c["same_pool_mean"] for c in per_concept])),
            "mean_random_consistency": float(np.mean([c["same_pool_mean"] for c in per_concept])),
        },
        "representative": {
            "share_beating_random": float(np.mean([c["representative_p"] < 0.05 for c in per_concept])),
            "mean_lift": float(np.mean([c["representative"] - c["single_random_mean"] for c in per_concept])),
            "mean_consistency": float(np.mean([c["representative"] for c in per_concept])),
            "mean_random_consistency": float(np.mean([c["single_random_mean"] for c in per_concept])),
        },
        "share_beating_random_top5": float(np.mean([c["p"] < 0.05 for c in per_concept if c["rank"] <= 5])),
        "mean_lift_top5": float(np.mean([c["consistency"] - c["random_mean"] for c in per_concept if c["rank"] <= 5])),
    }
    from conceptree.concepts.stability import stability_label

    by_band: dict[str, list[dict]] = {}
    for c in per_concept:
        by_band.setdefault(stability_label(c["stability"]), []).append(c)
    summary["by_stability"] = {band: {"concepts": len(cs), "share_beating_random": float(np.mean([c["p"] < 0.05 for c in cs])),
                                      "mean_lift": float(np.mean([c["consistency"] - c["random_mean"] for c in cs]))}
                               for band, cs in sorted(by_band.items())}
    print(json.dumps(summary, indent=1), flush=True)
    exact = exact_check(args, index, prep, size, dev, tests, top_rows, part_of) if args.exact_check else None
    from conceptree.datasets.cub_parts import REGIONS

    result = {
        "command": "python benchmarks/references_control.py " + " ".join(sys.argv[1:]),
        "data": str(args.data), "index": str(args.index), "index_images": len(index), "top": args.top,
        "random_groups_per_concept": args.random, "seed": args.seed, "parts": list(REGIONS),
        **summary,
        "exact_check": exact,
        "wall_s": time.perf_counter() - t_start,
        "per_concept": per_concept,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"-> {args.out}")


def exact_check(args, index, prep, size, dev, tests, top_rows, part_of) -> dict:
    """Stored-peak maps against exact recomputed maps on the first ``--exact-check`` photos."""
    from conceptree.attribution import CRPEngine
    from conceptree.concepts.layer_maps import layer_group_maps
    from conceptree.index.evidence import part_label_map
    from conceptree.index.references import crop_box, peak_map
    from conceptree.models.config import load_model_config
    from conceptree.models.loading import load_image, preprocess

    spec = load_model_config(CONFIG).load()
    engine = CRPEngine(spec.model)
    files = {p["file"] for p in dev[: args.exact_check]}
    chosen = [t for t in tests if t["file"] in files]
    concept_groups = {}
    for photo in dev[: args.exact_check]:
        for concept in photo["concepts"]:
            group: dict[str, list[int]] = {}
            for layer, channel, _ in concept["neurons"]:
                group.setdefault(layer, []).append(channel)
            concept_groups[(photo["file"], concept["rank"])] = group
    rows = sorted({r for t in chosen for r in top_rows[t["real"]]})
    seed_dist, box_iou, same_part, exact_parts = [], [], [], {}
    for first in range(0, len(rows), 4):
        chunk = rows[first : first + 4]
        import torch

        x = torch.cat([preprocess(load_image(str(index.image_path(r)))[0], prep)[0] for r in chunk])
        batch = engine.attribute_batch(x, [index.images[r].target for r in chunk], keep_maps=True)
        for j, row in enumerate(chunk):
            labels, _ = part_label_map(index.images[row].annotation, prep, size)
            tests_here = [t for t in chosen if row in top_rows[t["real"]]]
            maps = layer_group_maps(batch.image(j), [concept_groups[(t["file"], t["rank"])] for t in tests_here], size)
            for t, exact_map in zip(tests_here, maps):
                ebox, eseed, _, eempty = crop_box(exact_map)
                columns = [index.column(la, ch) for la, chans in concept_groups[(t["file"], t["rank"])].items() for ch in chans]
                pbox, pseed, _, pempty = crop_box(peak_map(index, row, np.array(columns), size))
                epart = -1 if eempty else int(labels[eseed[1], eseed[0]])
                exact_parts[(t["real"], row)] = epart
                same_part.append(epart == part_of[(t["real"], row)])
                seed_dist.append(float(np.hypot(eseed[0] - pseed[0], eseed[1] - pseed[1])))
                ix = max(0, min(ebox[2], pbox[2]) - max(ebox[0], pbox[0])) * max(0, min(ebox[3], pbox[3]) - max(ebox[1], pbox[1]))
                union = (ebox[2] - ebox[0]) * (ebox[3] - ebox[1]) + (pbox[2] - pbox[0]) * (pbox[3] - pbox[1]) - ix
                box_iou.append(ix / union)
    exact_consistency = [consistency([exact_parts[(t["real"], r)] for r in top_rows[t["real"]]], args.top) for t in chosen]
    peak_consistency = [consistency([part_of[(t["real"], r)] for r in top_rows[t["real"]]], args.top) for t in chosen]
    return {"photos": args.exact_check, "concepts": len(chosen), "references": len(seed_dist),
            "seed_distance_px_median": float(np.median(seed_dist)), "seed_distance_px_p90": float(np.quantile(seed_dist, 0.9)),
            "box_iou_median": float(np.median(box_iou)), "same_part": float(np.mean(same_part)),
            "mean_consistency_exact": float(np.mean(exact_consistency)),
            "mean_consistency_peaks": float(np.mean(peak_consistency))}


if __name__ == "__main__":
    main()
