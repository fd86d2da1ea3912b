"""What a concept is, tested so that the test can succeed: specificity against random groups, a planted
positive control, and the share of the explainer's concepts that pass (issue 38).

    python benchmarks/what_test.py --data ../shared/data/cub_parts --index benchmarks/cache/index_cub \
        --out docs/results/what.json

The statistic and the decision are :mod:`conceptree.index.specificity`'s (its docstring). The rule of this
run, written before it (and rerun unchanged on kept-aside species: pass their folder and an index of it):

1. **Halves.** The index's rows are split in two by a seeded permutation (seed 0): *selection* and *test*.
2. **Planted positive control.** Stages: the index's layers in order, cut into 4 equal runs (quartiles of
   the layer order). For every CUB part region ``k`` and stage ``s``, each neuron's *affinity* to ``k`` on the
   selection half is the mean, over the rows with keypoints where its relevance is positive, of the share
   of its spread peak cell inside ``k`` minus the model's map's share inside ``k`` (the statistic's terms
   for one neuron). The planted group is the ``--planted-size`` (10) neurons of stage ``s`` with the largest
   affinity among those positive on at least 20 selection rows. Each planted group is tested on the test
   half with the full test (three families, uniform weights); *power* = the share of planted groups with
   ``p < 0.05``, per stage and overall; *named* = the share whose name is the planted part.
3. **Negative control.** For each planted group, ``--random-controls`` (5) groups with its layer histogram,
   drawn uniformly, are tested exactly like it; the share with ``p < 0.05`` is the false-positive rate.
4. **The explainer's concepts.** The 67 dev photos (one per species, true species as target), explained
   with the default options; their top-level concepts (and, reported beside, their sub-concepts) are tested
   on every other index row, each weighted by its members' relevance on its photo, random groups weighted
   by theirs: ``share_specific`` = the share of top-level concepts with ``p < 0.05``.
5. Targets (the issue's): ``positive_control_power >= 0.9``, ``negative_control_rate <= 0.05``,
   ``share_specific >= 0.5``.
6. **Trivial baselines.** The class family's chance (the largest class share of the eligible rows) and the
   spatial families' statistic of random groups (``random_mean`` of each result).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "docs" / "models" / "bird.json"
sys.path.insert(0, str(Path(__file__).parent))


def evidence_for(index, explainer):
    """The index's cell evidence (parts, colours, classes), as the explainer reads it: ``evidence.npz`` in the
    index folder, built there once (:func:`conceptree.index.specificity.index_evidence`)."""
    from conceptree.index.references import ReferenceFinder
    from conceptree.index.specificity import index_evidence

    finder = ReferenceFinder(explainer.engine, explainer.preprocessing, index)
    t0 = time.perf_counter()

    def progress(row: int, total: int) -> None:
        if row % 100 == 0:
            print(f"evidence {row}/{total} ({time.perf_counter() - t0:.0f} s)", flush=True)

    return index_evidence(index, lambda row: finder.load(row, model_input=False)[1], explainer.preprocessing, progress)


def stages_of(index, n_stages: int = 4) -> np.ndarray:
    """``(neurons,)`` stage of each index column: the layer order cut into ``n_stages`` equal runs."""
    layers = list(index.columns)
    stage = np.empty(index.n_neurons, np.int64)
    for i, layer in enumerate(layers):
        offset, channels = index.columns[layer]
        stage[offset : offset + channels] = min(n_stages - 1, i * n_stages // len(layers))
    return stage


def affinities(test, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each neuron's affinity to each part on ``rows`` (rule 2) and its number of positive rows."""
    n_parts = len(test.evidence.vocabulary["part"])
    sums = np.zeros((test.index.n_neurons, n_parts))
    counts = np.zeros(test.index.n_neurons)
    for row in rows:
        if not test.evidence.has["part"][row]:
            continue
        relevance, _, _, model = test._row(int(row))
        active = np.flatnonzero(relevance > 0)
        sums[active] += test.fractions(int(row), "part", active) - model["part"]
        counts[active] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def summarise(results, labels=None) -> dict:
    p = np.array([r.p_value for r in results])
    out = {"groups": len(results), "share_p_below_alpha": float((p < 0.05).mean()) if len(p) else None}
    if labels is not None:
        out["named_as_planted"] = float(np.mean([r.specific and r.family == "part" and r.word == lab
                                                 for r, lab in zip(results, labels)])) if results else None
    out["families_named"] = dict(Counter(r.family for r in results if r.specific))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "what.json")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache" / "what")
    parser.add_argument("--planted-size", type=int, default=10)
    parser.add_argument("--random-controls", type=int, default=5)
    parser.add_argument("--n-random", type=int, default=99)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None, help="dev photos (default: all)")
    parser.add_argument("--controls-only", action="store_true",
                        help="the planted and random controls only (an exploratory rerun, e.g. with --n-random 999)")
    args = parser.parse_args()

    from references_control import explain_dev

    from conceptree import ConceptExplainer
    from conceptree.index.specificity import SpecificityTest
    from conceptree.index.store import ConceptIndex

    t_start = time.perf_counter()
    index = ConceptIndex(args.index)
    explainer = ConceptExplainer.from_config(CONFIG)
    evidence = evidence_for(index, explainer)
    rng = np.random.default_rng(0)
    order = rng.permutation(np.flatnonzero(index.ok))
    selection, held_out = np.sort(order[: order.size // 2]), np.sort(order[order.size // 2 :])
    stage = stages_of(index)
    parts = evidence.vocabulary["part"]

    # 2. planted groups from the selection half
    chooser = SpecificityTest(index, evidence, rows=selection, families=("part",))
    t0 = time.perf_counter()
    affinity, positive = affinities(chooser, selection)
    print(f"affinities on {selection.size} rows: {time.perf_counter() - t0:.0f} s", flush=True)
    planted, planted_info = [], []
    for s in range(stage.max() + 1):
        for k, part in enumerate(parts):
            eligible = np.flatnonzero((stage == s) & (positive >= 20))
            if eligible.size < args.planted_size:
                continue
            chosen = eligible[np.argsort(-np.nan_to_num(affinity[eligible, k], nan=-np.inf), kind="stable")][: args.planted_size]
            planted.append(chosen)
            planted_info.append({"stage": s, "part": part, "affinity_mean": float(np.nanmean(affinity[chosen, k]))})
    del chooser

    # 2-3. tested on the held-out half, with their matched random groups
    tester = SpecificityTest(index, evidence, rows=held_out, top=args.top, n_random=args.n_random)
    t0 = time.perf_counter()
    planted_results = tester.test(planted)
    print(f"planted: {len(planted)} groups, {time.perf_counter() - t0:.0f} s", flush=True)
    controls, control_stage = [], []
    rng_controls = np.random.default_rng(1)
    for group, info in zip(planted, planted_info):
        for _ in range(args.random_controls):
            controls.append(tester.random_groups(group, rng_controls)[0])
            control_stage.append(info["stage"])
    t0 = time.perf_counter()
    control_results = tester.test(controls)
    print(f"random controls: {len(controls)} groups, {time.perf_counter() - t0:.0f} s", flush=True)
    by_stage = {}
    for s in sorted({i["stage"] for i in planted_info}):
        mine = [r for r, i in zip(planted_results, planted_info) if i["stage"] == s]
        theirs = [r for r, st in zip(control_results, control_stage) if st == s]
        by_stage[str(s)] = {"planted": summarise(mine, [i["part"] for i in planted_info if i["stage"] == s]),
                            "random": summarise(theirs)}
    power = float(np.mean([r.p_value < 0.05 for r in planted_results]))
    negative = float(np.mean([r.p_value < 0.05 for r in control_results]))
    print(f"power {power:.3f}, negative rate {negative:.3f}", flush=True)

    # 4. the explainer's concepts, on every other row
    dev = [] if args.controls_only else explain_dev(args.data, args.cache / f"dev_concepts_{args.data.resolve().name}_{args.limit or 'all'}_top.json",
                      args.limit)
    groups, photo_relevance, kinds = [], [], []
    full = SpecificityTest(index, evidence, top=args.top, n_random=args.n_random)
    for photo in dev:
        relevance = np.asarray(photo["relevance"], np.float64)
        row = index.row_of_pixels(photo["pixels_sha1"])
        for kind in ("top_level", "concepts"):
            for concept in photo.get(kind, []):
                columns = np.array([index.column(layer, int(ch)) for layer, ch, _ in concept["neurons"]])
                groups.append(columns)
                photo_relevance.append(relevance)
                kinds.append((kind, row))
    t0 = time.perf_counter()
    concept_results = full.test(groups, photo_relevance, exclude=[row for _, row in kinds],
                                progress=lambda g, n: g % 50 == 0 and print(
                                    f"concepts {g}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True))
    top_results = [r for r, (k, _) in zip(concept_results, kinds) if k == "top_level"]
    sub_results = [r for r, (k, _) in zip(concept_results, kinds) if k == "concepts"]
    share = float(np.mean([r.specific for r in top_results])) if top_results else None

    out = {
        "rule": __doc__,
        "index": str(args.index), "data": str(args.data),
        "positive_control_power": power,
        "negative_control_rate": negative,
        "share_specific": share,
        "share_specific_sub_concepts": float(np.mean([r.specific for r in sub_results])) if sub_results else None,
        "targets": {"positive_control_power": 0.9, "negative_control_rate": 0.05, "share_specific": 0.5},
        "planted": {"groups": len(planted), "size": args.planted_size, "by_stage": by_stage,
                    "overall": summarise(planted_results, [i["part"] for i in planted_info]),
                    "rows": [{**info, **r.to_dict()} for info, r in zip(planted_info, planted_results)]},
        "random_controls": {"groups": len(controls), "overall": summarise(control_results)},
        "concepts": {"top_level": summarise(top_results), "sub_concepts": summarise(sub_results),
                     "by_family": {f: int(sum(r.specific and r.family == f for r in top_results))
                                   for f in ("part", "colour", "class")},
                     "rows": [{"kind": k, **r.to_dict()} for r, (k, _) in zip(concept_results, kinds)]},
        "baselines": {"class_chance": float(tester._class_base.max()) if tester._class_base.size else None},
        "halves": {"selection": int(selection.size), "test": int(held_out.size)},
        "settings": {"top": args.top, "n_random": args.n_random, "alpha": 0.05},
        "wall_s": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("positive_control_power", "negative_control_rate", "share_specific")}))


if __name__ == "__main__":
    main()
