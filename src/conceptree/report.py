"""Figures and the self-contained HTML report of an explanation."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (imported lazily)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_overlay(ax, image: np.ndarray, values: np.ndarray | None) -> None:
    """The image, or a signed map (red +, blue -, symmetric limits) over its grey version."""
    ax.axis("off")
    if values is None:
        ax.imshow(image)
        return
    lim = float(np.abs(values).max()) or 1.0
    ax.imshow(image.mean(axis=2), cmap="gray", alpha=0.5)
    ax.imshow(values, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.7)


def concept_grid(explanation, path: str | Path, columns: int = 6) -> Path:
    """Grid of concept overlays (each concept's map over the image) with rank and share."""
    plt = _pyplot()
    maps = explanation.concept_maps
    k = len(maps)
    rows = max(1, int(np.ceil((k + 1) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _draw_overlay(axes.flat[0], explanation.image, None)
    axes.flat[0].set_title(f"{explanation.target_name[:24]}\np={explanation.probability:.2f}", fontsize=8)
    for i, concept in enumerate(explanation.concepts.concepts):
        ax = axes.flat[i + 1]
        _draw_overlay(ax, explanation.image, maps[i])
        rep = concept.representative
        ax.set_title(f"#{concept.rank} {100 * concept.share:.1f}% n={concept.size}\n{rep.layer}:{rep.channel}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def _figure_png(fig) -> str:
    """Render a matplotlib figure to a base64 PNG data URI (and close it)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _overlay_png(image: np.ndarray, cmap_values: np.ndarray | None, size: float = 2.4) -> str:
    fig, ax = _pyplot().subplots(figsize=(size, size))
    _draw_overlay(ax, image, cmap_values)
    return _figure_png(fig)


def _silhouette_png(silhouette_by_k: dict[int, float], k: int) -> str | None:
    if not silhouette_by_k:
        return None
    plt = _pyplot()

    ks = sorted(silhouette_by_k)
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.plot(ks, [silhouette_by_k[x] for x in ks], marker=".")
    ax.axvline(k, color="red", linestyle="--", label=f"chosen k = {k}")
    ax.set_xlabel("number of concepts k")
    ax.set_ylabel("mean silhouette")
    ax.legend()
    return _figure_png(fig)


def _dendrogram_png(linkage: np.ndarray, k: int) -> str | None:
    if len(linkage) < 2 or k < 1:
        return None
    plt = _pyplot()
    from scipy.cluster.hierarchy import dendrogram

    fig, ax = plt.subplots(figsize=(7, 3))
    p = min(max(2 * k, 30), len(linkage) + 1)
    dendrogram(linkage, truncate_mode="lastp", p=p, ax=ax, no_labels=True, color_threshold=0, above_threshold_color="#555")
    heights = np.sort(linkage[:, 2])
    if 1 < k <= len(heights):
        cut = (heights[-k] + heights[-k + 1]) / 2 if k > 1 else heights[-1]
        ax.axhline(cut, color="red", linestyle="--", label=f"cut: k = {k}")
        ax.legend()
    ax.set_ylabel("merge distance")
    ax.set_title(f"dendrogram of {len(linkage) + 1} active neurons (last {p} merges)", fontsize=9)
    return _figure_png(fig)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px;width:250px}
.card img{width:230px}.meta{font-size:12px;color:#444}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.bar{background:#4a7bd0;height:8px;display:inline-block}
"""


def write_html(explanation, path: str | Path) -> Path:
    """Write the self-contained report (all images inlined, no network, text escaped)."""
    esc = html.escape
    concepts = explanation.concepts
    photo = _overlay_png(explanation.image, None, 3.2)
    heat = _overlay_png(explanation.image, explanation.heatmap, 3.2)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>conceptree: {esc(explanation.target_name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Why <em>{esc(explanation.target_name)}</em> (p = {explanation.probability:.3f})?</h1>",
        f"<img alt='input image' src='{photo}'> <img alt='class heatmap' src='{heat}'>",
        "<h2>Top-5 predictions</h2><table><tr><th>class</th><th>probability</th></tr>",
    ]
    for row in explanation.top5:
        parts.append(f"<tr><td>{esc(str(row['name']))}</td><td>{row['probability']:.3f}</td></tr>")
    shown = {"layer-group": "where its neurons carry relevance at their own layers",
             "group": "input relevance through all its neurons",
             "representative": "input relevance through its most relevant neuron"}.get(explanation.meta.get("concept_map"), "")
    parts.append(f"</table><h2>{concepts.k} concepts</h2>")
    if shown:
        parts.append(f"<p class='meta'>Each concept's map shows {esc(shown)}.</p>")
    parts.append("<div class='cards'>")
    for concept, cmap in zip(concepts.concepts, explanation.concept_maps):
        rep = concept.representative
        hist_max = max(concept.layer_histogram.values()) if concept.layer_histogram else 1
        hist = "".join(
            f"<tr><td>{esc(layer)}</td><td><span class='bar' style='width:{80 * n / hist_max:.0f}px'></span> {n}</td></tr>"
            for layer, n in concept.layer_histogram.items()
        )
        neurons = "".join(
            f"<tr><td>{esc(n.layer)}</td><td>{n.channel}</td><td>{n.relevance:.4g}</td></tr>" for n in concept.neurons
        )
        parts.append(
            f"<div class='card' id='concept-{concept.rank}'><b>#{concept.rank}</b> "
            f"<span class='meta'>share {100 * concept.share:.1f}% · relevance {concept.relevance:.4g} · {concept.size} neurons</span>"
            f"<img alt='concept {concept.rank}' src='{_overlay_png(explanation.image, cmap)}'>"
            f"<div class='meta'>representative: {esc(rep.layer)}:{rep.channel} (r = {rep.relevance:.4g})</div>"
            f"<details><summary>layers</summary><table>{hist}</table></details>"
            f"<details><summary>all {concept.size} neurons</summary><table><tr><th>layer</th><th>channel</th>"
            f"<th>relevance</th></tr>{neurons}</table></details></div>"
        )
    parts.append("</div>")
    dendro = _dendrogram_png(concepts.linkage, concepts.k)
    if dendro:
        parts.append(f"<h2>Dendrogram</h2><img alt='dendrogram' src='{dendro}'>")
    sil = _silhouette_png(concepts.silhouette_by_k, concepts.k)
    if sil:
        parts.append(f"<h2>Silhouette vs k</h2><img alt='silhouette' src='{sil}'>")
    params = {
        "linkage": concepts.method,
        "k_range": list(concepts.k_range),
        "distance": concepts.distance.to_dict(),
        "inactive neurons": len(concepts.inactive),
        **{k: v for k, v in explanation.meta.items()
           if k in ("features", "concept_map", "max_neurons", "model", "composite", "preprocessing", "image", "run_timings")},
    }
    parts.append(f"<h2>Parameters</h2><pre>{esc(json.dumps(params, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("".join(parts), encoding="utf-8")
    return path
