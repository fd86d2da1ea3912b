"""Markdown tables of benchmarks/concise_eval.py's results (the Pareto table and the stability per change).

    python benchmarks/concise_table.py docs/results/concise.json
"""

from __future__ import annotations

import json
import sys

LABELS = {"own": "own (photo's Ward tree)", "consensus": "consensus (6 jittered copies)",
          "tree": "tree (model-level)", "tree+own": "tree+own (model-level top, own below)",
          "random-tree": "control: random tree"}


def main() -> None:
    data = json.loads(open(sys.argv[1]).read())
    routes = data["routes"]
    print(f"{data['n_photos']} photos; model-level tree from {data['tree_rows']} index rows\n")
    print("| route | min share kept (top) | K=20 lift disks | K=20 lift SLIC | median top level | median largest | "
          "time ratio | route s (median) | meets |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, v in routes.items():
        met = "".join(c for c, ok in v["conditions_met"].items() if ok) or "-"
        print(f"| {LABELS.get(name, name)} | {v['min_share_kept_top']:.3f} | {v['lift_k20_disks']:+.3f} | "
              f"{v['lift_k20_slic']:+.3f} | {v['median_top_level']:.0f} | {v['median_largest_share']:.2f} | "
              f"{v['time_ratio']:.2f} | {v['route_s_median']:.2f} | {met} |")
    for key, label in (("today_k20", "today's per-image route, cut at 20"), ("random_partition_k20",
                       "control: random partition (consensus's 20 sizes)"), ("random_disks_k20", "chance: best of 20 random disks")):
        v = data[key]
        if key == "random_disks_k20":
            print(f"| {label} | | mIoU {v['disks']['mean_iou']:.3f} | mIoU {v['slic']['mean_iou']:.3f} | | | | | |")
        else:
            print(f"| {label} | | {v['disks']['lift_iou']:+.3f} | {v['slic']['lift_iou']:+.3f} | | | | | |")
    print("\nShare of the top level's relevance kept, mean over photos (10th percentile):\n")
    changes = data["changes"]
    print("| route | " + " | ".join(changes) + " |")
    print("|---|" + "---|" * len(changes))
    for name, v in routes.items():
        print(f"| {LABELS.get(name, name)} | " + " | ".join(
            f"{v['share_kept_top'][c]:.3f} ({v['share_kept_top_p10'][c]:.2f})" for c in changes) + " |")
    for situation in ("without_index", "with_index"):
        d = data[situation]
        print(f"\n**{situation.replace('_', ' ')}**: `{d['route']}` "
              f"({'meets all four' if d['meets_all'] else 'fails ' + ', '.join(d['failing'])})")


if __name__ == "__main__":
    main()
