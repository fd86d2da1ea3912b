"""Apply the rules of ``docs/results/dictionary.md`` to ``dictionary.json`` and print its tables.

    python benchmarks/dictionary_table.py docs/results/dictionary.json [--write]

Rule 1 picks the dictionary candidate, rule 2 the default route (both written before the run,
coded here as written); ``--write`` records the outcome in the JSON (``chosen``, ``default_route``,
and ``dictionary`` / ``per_image`` with their ``min_share_kept``).
"""

from __future__ import annotations

import json
import sys


def rule_1(data: dict) -> str:
    """The dictionary candidate (docs/results/dictionary.md, rule 1)."""
    candidates = {n: r for n, r in data["routes"].items() if n.startswith("dict-")}
    stable = {n: r for n, r in candidates.items() if r["min_share_kept"] >= 0.9}
    if not stable:
        return max(candidates, key=lambda n: candidates[n]["min_share_kept"])
    best = max(r["lift_k20"]["disks"]["lift_iou"] for r in stable.values())
    near = [n for n, r in stable.items() if r["lift_k20"]["disks"]["lift_iou"] >= best - 0.005]
    # within 0.005 of the best: the larger half-split agreement (weighted), then the smaller k
    return max(near, key=lambda n: (data["halves"][n]["agreement"]["weighted"], -int(n.rsplit("-k", 1)[1])))


def rule_2(data: dict, chosen: str) -> tuple[str, dict]:
    """The default route (rule 2) and each condition's outcome."""
    d, p = data["routes"][chosen], data["routes"]["per_image"]
    f = d["faithfulness_k20"]
    checks = {
        "a_min_share_kept_at_least_0.9": d["min_share_kept"] >= 0.9,
        "b_disk_lift_within_0.01": d["lift_k20"]["disks"]["lift_iou"] >= p["lift_k20"]["disks"]["lift_iou"] - 0.01,
        "b_slic_lift_within_0.01": d["lift_k20"]["slic"]["lift_iou"] >= p["lift_k20"]["slic"]["lift_iou"] - 0.01,
        "c_faithful": f["drop_ratio"] is not None and f["drop_ratio"] > 1 and f["p_value"] < 0.01,
    }
    return ("dictionary" if all(checks.values()) else "per_image"), checks


def main() -> None:
    data = json.loads(open(sys.argv[1]).read())
    data["chosen"] = chosen = rule_1(data)
    data["default_route"], data["rule_2_checks"] = rule_2(data, chosen)
    data["dictionary"] = {"candidate": chosen, "min_share_kept": data["routes"][chosen]["min_share_kept"]}
    data["per_image"] = {"min_share_kept": data["routes"]["per_image"]["min_share_kept"]}
    if "--write" in sys.argv:
        open(sys.argv[1], "w").write(json.dumps(data, indent=1))
    print(f"rule 1 -> {chosen}; rule 2 -> default route {data['default_route']} {data['rule_2_checks']}\n")
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
