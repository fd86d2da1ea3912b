"""Figures of an explanation: the concept grid (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def concept_grid(explanation, path: str | Path, columns: int = 6) -> Path:
    """Grid of concept overlays (representative map over the image) with rank and share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = explanation.concept_maps
    k = len(maps)
    rows = max(1, int(np.ceil((k + 1) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(explanation.image)
    axes.flat[0].set_title(f"{explanation.target_name[:24]}\np={explanation.probability:.2f}", fontsize=8)
    for i, concept in enumerate(explanation.concepts.concepts):
        ax = axes.flat[i + 1]
        m = maps[i]
        lim = float(np.abs(m).max()) or 1.0
        ax.imshow(explanation.image.mean(axis=2), cmap="gray", alpha=0.5)
        ax.imshow(m, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.7)
        rep = concept.representative
        ax.set_title(f"#{concept.rank} {100 * concept.share:.1f}% n={concept.size}\n{rep.layer}:{rep.channel}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
