"""Paired bootstrap over photos of two methods of one ``conceptree evaluate`` run (not a test).

Per photo: the mean over parts of each method's IoU and pointing (its own maps, as scored);
the difference B - A is resampled over photos (10,000 times, seed 0) for a 95 % interval.
Also copies each method's K = 20 lifts and faithfulness from the run.

    python benchmarks/paired_bootstrap.py RUN/results.json ours-paper 'ours[paper-pooled]' --out FILE.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def per_photo(run: dict, method: str, key: str) -> np.ndarray:
    return np.array([np.mean([v for v in image["methods"][method][key] if v is not None]) for image in run["images"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--k", default="20")
    parser.add_argument("--out")
    args = parser.parse_args()
    run = json.loads(Path(args.results).read_text())
    rng = np.random.default_rng(0)
    out: dict = {"a": args.a, "b": args.b, "n_photos": len(run["images"]), "difference_b_minus_a": {}}
    for key in ("iou", "pointing"):
        diff = per_photo(run, args.b, key) - per_photo(run, args.a, key)
        boots = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(10_000)])
        low, high = np.percentile(boots, [2.5, 97.5])
        out["difference_b_minus_a"][key] = {"mean": float(diff.mean()), "ci95": [float(low), float(high)],
                                            "half_width": float((high - low) / 2)}
    out[f"lift_at_{args.k}"] = {m: {"iou": run["at_k"][m][args.k]["lift_iou"],
                                    "pointing": run["at_k"][m][args.k]["lift_pointing"]} for m in (args.a, args.b)}
    out["faithfulness"] = {m: {"drop_ratio": run["faithfulness"][m]["drop_ratio"], "p": run["faithfulness"][m]["p_value"]}
                           for m in (args.a, args.b) if m in run.get("faithfulness", {})}
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
