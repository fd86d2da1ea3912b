"""Markdown tables of ``docs/results/dictionary.json`` (written by ``dictionary_eval.py``).

    python benchmarks/dictionary_table.py docs/results/dictionary.json
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    data = json.loads(open(sys.argv[1]).read())
    routes = data["routes"]
    chance = data["random_disks_k20"]
    print(f"{data['n_photos']} dev photos; dictionaries from {data['dictionary_rows']} index rows\n")
    print("| route | min share kept | K=20 lift, disks | K=20 lift, SLIC | pointing lift | faithfulness (p) | halves: matched Jaccard, weighted (random) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in routes.items():
        lift = r["lift_k20"]
        f = r["faithfulness_k20"]
        half = data["halves"].get(name)
        halves = (f"{half['agreement']['mean']:.2f}, {half['agreement']['weighted']:.2f} "
                  f"({half['random_partitions']['mean']:.2f}, {half['random_partitions']['weighted']:.2f})") if half else ""
        faith = f"{f['drop_ratio']:.1f} ({f['p_value']:.0e})" if f["drop_ratio"] is not None else "—"
        print(f"| {name} | {r['min_share_kept']:.3f} | {lift['disks']['lift_iou']:+.3f} | {lift['slic']['lift_iou']:+.3f} | "
              f"{lift['disks']['lift_pointing']:+.2f} | {faith} | {halves} |")
    print(f"\nchance (best of 20 random disks): mIoU {chance['disks']['mean_iou']:.3f} (disks), "
          f"{chance['slic']['mean_iou']:.3f} (SLIC)\n")
    for name in [n for n in routes if n == "per_image" or n == data.get("chosen")]:
        print(f"\n**{name}**\n")
        print("| change | listed | reappear | share kept (mean) | share kept (10th pct.) | ARI | top-10 overlap |")
        print("|---|---|---|---|---|---|---|")
        for change, v in routes[name]["nuisance"].items():
            print(f"| {change} | {v['listed']:.1f} | {v['reappear']:.1f} | {v['share_kept']:.3f} | {v['share_kept_p10']:.3f} | "
                  f"{v['ari']:.2f} | {v['top10']:.2f} |")


if __name__ == "__main__":
    main()
