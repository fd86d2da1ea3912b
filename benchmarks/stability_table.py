"""The tables of docs/results/stability.md from benchmarks/stability_eval.py's JSON, and the rules applied.

    python benchmarks/stability_table.py docs/results/stability.json [docs/results/stability_paper.json]
"""

from __future__ import annotations

import json
import sys

CHANGE_NAMES = {"jpeg90": "JPEG q90", "shift2": "shift 2 px", "resize+5": "resize +5 %", "resize-5": "resize −5 %",
                "brightness+5": "brightness +5 %", "brightness-5": "brightness −5 %", "all": "**all**"}


def nuisance_table(result: dict, routes: dict[str, str]) -> str:
    lines = ["| route | change | photos | ARI (shared neurons) | matched map corr. | concepts surviving | relevance share surviving |",
             "|---|---|---|---|---|---|---|"]
    for key, label in routes.items():
        if key not in result["nuisance"]:
            continue
        for change, row in result["nuisance"][key].items():
            photos = row["photos"] // len(result["changes"]) if change == "all" else row["photos"]
            lines.append(f"| {label} | {CHANGE_NAMES.get(change, change)} | {photos} | {row['ari']:.3f} | "
                         f"{row['map_corr']:.3f} | {row['survived']:.3f} | {row['share_survived']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    result = json.loads(open(sys.argv[1]).read())
    print(f"photos: {result['photos']}, wall {result['wall_s'] / 60:.0f} min\n")
    print("## Does the score predict survival? (R1, R2)\n")
    print("| scheme | AUC | stable: share of concepts / survive | weak | fragile | draws' median time |")
    print("|---|---|---|---|---|---|")
    for name, p in result["prediction"].items():
        s = p["survival"]
        cells = [f"{100 * s[b]['share_of_concepts']:.0f} % / {100 * (s[b]['survived'] or 0):.0f} %" for b in ("stable", "weak", "fragile")]
        print(f"| `{name}` | {p['auc']:.3f} | {' | '.join(cells)} | {p['seconds_median']:.2f} s |")
    aucs = {n: p["auc"] for n, p in result["prediction"].items()}
    best = max(aucs, key=aucs.get)
    scheme = "f50" if abs(aucs["f80"] - aucs["f50"]) <= 0.01 else best
    print(f"\nR1 -> `{scheme}` (AUC {aucs}).")
    p = result["prediction"][scheme]["survival"]
    shown = aucs[scheme] >= 0.6 and (p["stable"]["survived"] or 0) > (p["fragile"]["survived"] or 0)
    print(f"R2 -> {'show on the card, fade fragile' if shown else 'JSON only'}.\n")
    print("Distribution of concept stability (percentiles 10/25/50/75/90):",
          {n: [round(v, 2) for v in d] for n, d in result["distribution"].items()})
    print("Reference draws:", json.dumps(result["reference_draws"]))
    print("\n## k by stability vs by silhouette (R3)\n")
    print("| rule | mean k | lift_iou (disks) | lift_iou (SLIC) | lift pointing (disks) | relevance share surviving |")
    print("|---|---|---|---|---|---|")
    for r in ("silhouette", "f50", "f80"):
        d, s = result["lifts"]["disks"][r], result["lifts"]["slic"][r]
        surv = result["nuisance"][f"after/{r}"]["all"]["share_survived"]
        print(f"| {r} | {d['mean_k']:.1f} | {d['lift_iou']:+.4f} | {s['lift_iou']:+.4f} | {d['lift_pointing']:+.3f} | {surv:.3f} |")
    sil = result["lifts"]
    r = scheme
    wins = (sil["disks"][r]["lift_iou"] > sil["disks"]["silhouette"]["lift_iou"] + 0.005
            and sil["slic"][r]["lift_iou"] >= sil["slic"]["silhouette"]["lift_iou"]
            and result["nuisance"][f"after/{r}"]["all"]["share_survived"] >= result["nuisance"]["after/silhouette"]["all"]["share_survived"])
    print(f"\nR3 ({r}) -> {'stability' if wins else 'silhouette stays'}.\n")
    print("## Nuisance changes\n")
    print(nuisance_table(result, {"before/silhouette": "before (float32, silhouette)", "after/silhouette": "after (float64, silhouette)",
                                  f"after/{scheme}": f"after, k by stability ({scheme})"}))
    if len(sys.argv) > 2:
        paper = json.loads(open(sys.argv[2]).read())
        print("\n### Paper preset\n")
        print(nuisance_table(paper, {"paper/silhouette": "paper (2,000 neurons, float32)", "after/silhouette": "default, same photos"}))


if __name__ == "__main__":
    main()
