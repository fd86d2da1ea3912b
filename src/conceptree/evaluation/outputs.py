"""Evaluation outputs: ``results.json``, ``table.md``, ``per_species.csv``, ``complexity_iou.png``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from .protocol import THRESHOLDS
from .runner import ImageScores

OUTPUT_FILES = ("results.json", "table.md", "per_species.csv", "complexity_iou.png")


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


def write_per_species(summary: dict, path: Path) -> None:
    parts = summary["parts"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "species", *parts, "mean_iou"])
        for name, m in summary["methods"].items():
            for species, row in m["per_species_parts"].items():
                writer.writerow([name, species, *[f"{v:.4f}" if not math.isnan(v) else "" for v in row],
                                 f"{m['per_species'][species]:.4f}"])


def plot_complexity_iou(summary: dict, path: Path) -> None:
    """Mean IoU against maps per image (log x), one point per method (like the paper's Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for i, (name, m) in enumerate(summary["methods"].items()):
        ours = name == "ours"
        ax.scatter(m["complexity"], m["mean_iou"], s=80 if ours else 40, marker="*" if ours else "o",
                   color="crimson" if ours else "tab:blue", zorder=3)
        ax.annotate(name, (m["complexity"], m["mean_iou"]), textcoords="offset points",
                    xytext=(5, 4 if i % 2 == 0 else -11), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("maps per image (complexity, log scale)")
    ax.set_ylabel("mean IoU with part regions")
    ax.set_title(f"{summary.get('dataset', '')}: {summary.get('n_images', '?')} images, {summary.get('n_species', '?')} species", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


def write_outputs(summary: dict, scores: list[ImageScores], out: str | Path, meta: dict) -> Path:
    """Write the four outputs; ``results.json`` holds every number (and ``meta``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {**meta, **summary, "images": image_records(scores, summary)}
    (out / "results.json").write_text(json.dumps(_clean(results), indent=1, allow_nan=False))
    (out / "table.md").write_text(table_markdown(summary))
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
        raise FileNotFoundError(f"{path} not found; run conceptree evaluate first")
    return json.loads(path.read_text())
