"""The ablation rows of `docs/results/concept_ablation.md` from `conceptree evaluate` results.

    python benchmarks/ablation_table.py docs/results/cub_parts_dev/results.json \
        docs/results/cub_parts_dev_subset20/results.json > /tmp/rows.md

One table per results file: every method at K = 20 (the faithfulness K) with its mean IoU,
pointing, their lifts over random disks (disk and SLIC regions), faithfulness (median drop,
control, ratio, p), redundancy, and, for our variants, mean k and the median largest
concept share.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(value, spec=".3f", signed=False) -> str:
    if value is None:
        return "–"
    return f"{value:+{spec}}" if signed else f"{value:{spec}}"


def rows(results: dict) -> str:
    k = str(results["config"]["faithfulness_k"])
    faith, red, stats = results["faithfulness"], results["redundancy"], results.get("ours_stats", {})
    slic = results["region_rules"].get("slic", {}).get("at_k", {})
    head = ["method", f"mIoU@{k}", "lift", "pointing", "lift", "lift (slic)", "drop ratio", "p", "redundancy", "mean k",
            "largest share (median)"]
    lines = [f"{results['n_images']} photos, {results['n_species']} species, region rule {results['region_rule']}; "
             f"command: `{results['command']}`", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(results["at_k"], key=lambda m: (not m.startswith("ours"), "randomised" in m, m))
    for method in order:
        entry = results["at_k"][method].get(k)
        if entry is None:
            continue
        f = faith.get(method, {})
        s = stats.get(method, {})
        sl = slic.get(method, {}).get(k, {})
        lines.append("| " + " | ".join([
            f"`{method}`", fmt(entry["mean_iou"]), fmt(entry["lift_iou"], signed=True), fmt(entry["pointing"], ".2f"),
            fmt(entry["lift_pointing"], ".2f", signed=True), fmt(sl.get("lift_iou"), signed=True),
            fmt(f.get("drop_ratio"), ".2f"), fmt(f.get("p_value"), ".0e"),
            fmt(red.get(method, {}).get("mean_correlation"), ".2f"),
            fmt(s.get("mean_k"), ".1f"), fmt(s.get("median_largest_share"), ".2f"),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    for path in sys.argv[1:]:
        results = json.loads(Path(path).read_text())
        print(f"### {path}\n")
        print(rows(results))


if __name__ == "__main__":
    main()
