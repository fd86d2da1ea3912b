"""Evaluation outputs: ``results.json``, ``table.md``, ``per_species.csv``, ``complexity_iou.png``,
``thresholds.json``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from .protocol import THRESHOLDS
from .runner import EvaluationRun, ImageScores

OUTPUT_FILES = ("results.json", "table.md", "per_species.csv", "complexity_iou.png", "thresholds.json")


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def table_markdown(summary: dict) -> str:
    """Rows = methods, columns = parts, mean IoU, pointing, complexity (like the paper's Table 1)."""
    parts = summary["parts"]
    head = ["method", *parts, "mean IoU", "pointing", "maps/image", "threshold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["methods"].items():
        row = [name, *[_fmt(m["parts"][p]) for p in parts], f"**{m['mean_iou']:.3f}**", _fmt(m["pointing"]),
               f"{m['complexity']:.1f}", str(m["threshold"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _signed(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"


def at_k_markdown(summary: dict) -> str:
    """Equal-complexity table: mean IoU / pointing and their lifts over random disks at each K,
    then faithfulness and redundancy at the faithfulness K."""
    at_k = summary["at_k"]
    ks = sorted({k for by_k in at_k.values() for k in by_k}, key=int)
    head = ["method", *[f"K={k} mIoU (lift)" for k in ks], *[f"K={k} pointing (lift)" for k in ks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, by_k in at_k.items():
        cells = [method]
        for k in ks:
            m = by_k.get(k)
            cells.append(f"{m['mean_iou']:.3f} ({_signed(m['lift_iou'])})" if m else "–")
        for k in ks:
            m = by_k.get(k)
            cells.append(f"{m['pointing']:.2f} ({_signed(m['lift_pointing'])})" if m else "–")
        lines.append("| " + " | ".join(cells) + " |")
    faith, red = summary.get("faithfulness", {}), summary.get("redundancy", {})
    if faith:
        k = next(iter(faith.values()))["k"]
        lines += ["", f"Faithfulness and redundancy of each method's first K={k} maps:", "",
                  "| method | median logit drop (map region) | (shifted control) | drop ratio | p (Wilcoxon, photos) | mean pairwise correlation |",
                  "|---|---|---|---|---|---|"]
        for method, f in faith.items():
            ratio = f.get("drop_ratio")
            lines.append(f"| {method} | {_fmt(f.get('median_drop'))} | {_fmt(f.get('median_drop_random'))} | "
                         f"{'–' if ratio is None else f'{ratio:.2f}'} | {f['p_value']:.1e} | "
                         f"{_fmt(red.get(method, {}).get('mean_correlation'))} |")
    rnd = summary.get("randomisation", {})
    for method, r in rnd.items():
        lines += ["", f"Model randomisation ({method}, K={r['k']}): lift_iou {_signed(r['lift_iou'])} on the real model; "
                  + "; ".join(f"re-initialised from {scope}: {_signed(v['lift_iou'])}" for scope, v in r["scopes"].items())]
    return "\n".join(lines) + "\n"


def write_per_species(summary: dict, path: Path) -> None:
    parts = summary["parts"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "species", *parts, "mean_iou"])
        for name, m in summary["methods"].items():
            for species, row in m["per_species_parts"].items():
                writer.writerow([name, species, *[f"{v:.4f}" if not math.isnan(v) else "" for v in row],
                                 f"{m['per_species'][species]:.4f}"])


_VARIANT_COLOURS = ("darkred", "darkorange", "goldenrod", "saddlebrown", "magenta", "indigo", "teal")
_VARIANT_MARKERS = ("^", "v", "s", "D", "P", "X", "h")


def plot_complexity_iou(summary: dict, path: Path) -> None:
    """Mean IoU against maps per photo (log x): each method's curve over its first K maps, the
    chance curve (best of K random disks) and each method's full set as a point."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.6, 5.0), dpi=130)
    ax = fig.add_subplot(1, 1, 1)
    colours = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    for method, by_k in summary["at_k"].items():
        if "-randomised-" in method:
            continue
        ks = sorted(by_k, key=int)  # int keys in memory, strings after a JSON round trip
        values = [by_k[k]["mean_iou"] for k in ks]
        ks = [int(k) for k in ks]
        if method == "random-disks":
            style = {"color": "black", "linestyle": "--", "marker": "x", "linewidth": 2.0, "label": "chance: best of K random disks"}
        elif method == "ours":
            colours[method] = "crimson"
            style = {"color": "crimson", "marker": "*", "markersize": 11, "linewidth": 2.6, "label": method}
        elif method.startswith("ours"):
            i = sum(name.startswith("ours") for name in colours)
            colours[method] = _VARIANT_COLOURS[i % len(_VARIANT_COLOURS)]
            style = {"color": colours[method], "marker": _VARIANT_MARKERS[i % len(_VARIANT_MARKERS)], "markersize": 6,
                     "linewidth": 1.4, "linestyle": "-.", "label": method}
        else:
            colours[method] = palette[len(colours) % len(palette)]
            style = {"color": colours[method], "marker": "o", "markersize": 4, "linewidth": 1.0, "label": method}
        ax.plot(ks, values, **style)
    disks = [(m["complexity"], m["mean_iou"]) for name, m in summary["methods"].items() if name.startswith("random-disks-")]
    if disks:
        disks.sort()
        ax.plot(*zip(*disks), color="black", linestyle=":", linewidth=1.0)
    for name, m in summary["methods"].items():
        if name.startswith("random-disks-"):
            continue
        colour = colours.get(name, colours.get(name.split("-")[0], "tab:blue"))
        ax.scatter(m["complexity"], m["mean_iou"], s=22, color=colour, edgecolors="black", linewidths=0.5, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("maps per photo (complexity, log scale); points: each method's full set")
    ax.set_ylabel(f"mean IoU with part regions ({summary.get('region_rule', 'disks')})")
    ax.set_title(f"{summary.get('dataset', '')}: {summary.get('n_images', '?')} photos, {summary.get('n_species', '?')} species",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path)


def image_records(scores: list[ImageScores], summary: dict) -> list[dict]:
    """Per image: each method's best IoU per part at its threshold, pointing, map count."""
    records = []
    for s in scores:
        entry = {"image_id": s.image_id, "species": s.species, "target": s.target, "predicted": s.predicted,
                 "probability": s.probability, "k": s.k, "methods": {}}
        for name, m in summary["methods"].items():
            t = THRESHOLDS.index(m["threshold"])
            entry["methods"][name] = {
                "iou": [None if np.isnan(v) else float(v) for v in s.iou[name][t]],
                "pointing": [None if np.isnan(v) else float(v) for v in s.pointing[name]],
                "n_maps": s.n_maps[name],
            }
        records.append(entry)
    return records


def write_outputs(summary: dict, run: EvaluationRun, out: str | Path, meta: dict) -> Path:
    """Write every output; ``results.json`` holds every number (and ``meta``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scores = run.scores[summary["region_rule"]]
    results = {**meta, **summary, "images": image_records(scores, summary)}
    (out / "results.json").write_text(json.dumps(_clean(results), indent=1, allow_nan=False))
    (out / "thresholds.json").write_text(json.dumps(summary["thresholds"], indent=1))
    text = (f"Region rule {summary['region_rule']}; thresholds per method.\n\n" + table_markdown(summary)
            + "\n## Equal complexity: each method's first K maps, lift over best-of-K random disks\n\n"
            + at_k_markdown(summary))
    for rule, block in summary["region_rules"].items():
        if rule == summary["region_rule"]:
            continue
        text += f"\n## Region rule {rule}\n\n" + at_k_markdown({"at_k": block["at_k"]})
    for rule, block in summary["region_rules"].items():
        for subset, sub in block["subsets"].items():
            text += f"\n## Region rule {rule}, {subset} photos only ({sub['n_images']})\n\n" + at_k_markdown({"at_k": sub["at_k"]})
    (out / "table.md").write_text(text)
    write_per_species(summary, out / "per_species.csv")
    plot_complexity_iou(summary, out / "complexity_iou.png")
    return out


def _clean(value):
    """NaN -> None (JSON null), numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def load_results(path: str | Path) -> dict:
    """Read ``results.json`` back (null -> NaN in the per-part numbers is left to the caller)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise InputError(f"{path} not found; run conceptree evaluate first")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} ({exc}); run conceptree evaluate again") from None
