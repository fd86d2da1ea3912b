"""The pictures of an explanation: signed overlays, concept regions and overviews, thumbnails, the
silhouette and dendrogram figures and the concept grid PNG.

No global state: pictures are composed with numpy and PIL, plots are drawn on
``matplotlib.figure.Figure`` objects (no pyplot, no backend switch), so a user's notebook keeps
its backend after :meth:`Explanation.save`.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .colours import colormap, concept_colours

#: colormap of signed maps (red = positive relevance, blue = negative), symmetric around zero.
SIGNED_CMAP = "RdBu_r"
#: fraction of a concept's positive relevance inside its "most relevant region".
REGION_MASS = 0.5


# ---------------------------------------------------------------------- pictures (numpy + PIL)
def image_data_uri(rgb: np.ndarray, quality: int = 90) -> str:
    """``(H, W, 3)`` uint8 -> ``data:image/jpeg;base64,...`` (photo composites: JPEG is ~6x smaller
    than PNG at no visible loss; plots stay PNG)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``(H, W)``."""
    if values.shape == tuple(size):
        return values.astype(np.float32)
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(values.astype(np.float32), sigma) if sigma > 0 else values.astype(np.float32)


def signed_overlay(image: np.ndarray, values: np.ndarray, limit: float | None = None) -> np.ndarray:
    """A signed map over the photo in full colour, ``(H, W, 3)`` uint8.

    Colour from :data:`SIGNED_CMAP` with limits ``±limit`` (default: the map's 99.5th
    percentile of ``|values|``, so one hot pixel does not wash out the rest); opacity grows
    with ``|values|``, so where the map is near zero the photo shows unchanged.
    """
    values = _resize(np.asarray(values, np.float32), image.shape[:2])
    lim = limit or float(np.percentile(np.abs(values), 99.5)) or float(np.abs(values).max()) or 1.0
    scaled = np.clip(values / lim, -1.0, 1.0)
    colour = colormap(SIGNED_CMAP)((scaled + 1.0) / 2.0)[..., :3]
    alpha = np.clip(np.abs(scaled) * 2.0, 0.0, 0.92)[..., None]
    out = image.astype(np.float32) / 255.0 * (1.0 - alpha) + colour * alpha
    return (out * 255).round().astype(np.uint8)


def region_mask(values: np.ndarray, mass: float = REGION_MASS, sigma: float = 3.0) -> np.ndarray:
    """The smallest set of pixels holding ``mass`` of the (smoothed) positive relevance, ``(H, W)`` bool."""
    positive = _smooth(np.clip(values, 0.0, None), sigma)
    total = float(positive.sum())
    if total <= 0:
        return np.zeros(values.shape, bool)
    flat = np.sort(positive.ravel())[::-1]
    cutoff = flat[min(int(np.searchsorted(np.cumsum(flat), mass * total)), flat.size - 1)]
    return positive >= cutoff


def masked_photo(image: np.ndarray, values: np.ndarray, mass: float = REGION_MASS) -> np.ndarray:
    """The photo with everything outside the concept's most relevant region dimmed, ``(H, W, 3)`` uint8."""
    values = _resize(np.asarray(values, np.float32), image.shape[:2])
    keep = _smooth(region_mask(values, mass).astype(np.float32), 1.5)[..., None]
    grey = image.astype(np.float32).mean(axis=2, keepdims=True)
    dimmed = 0.25 * grey + 20.0
    return (image * keep + dimmed * (1.0 - keep)).round().astype(np.uint8)


def concept_overview(image: np.ndarray, concept_maps: np.ndarray, sigma: float = 4.0,
                     faded: np.ndarray | None = None) -> np.ndarray:
    """The photo coloured by which concept carries the most positive relevance at each place.

    Each concept map's positive part is smoothed (Gaussian, ``sigma`` px); each pixel takes the
    colour of the largest one, with an opacity that grows with that relevance (so places where
    no concept has positive relevance keep the photo). ``faded`` ``(k,)`` bool marks concepts
    drawn at a third of that opacity (fragile ones). Returns ``(H, W, 3)`` uint8.
    """
    if len(concept_maps) == 0:
        return image.copy()
    size = image.shape[:2]
    stack = np.stack([_smooth(np.clip(_resize(m, size), 0.0, None), sigma) for m in concept_maps])
    winner = stack.argmax(axis=0)
    strength = stack.max(axis=0)
    top = float(np.percentile(strength, 99)) or float(strength.max()) or 1.0
    alpha = np.clip(strength / top, 0.0, 1.0)[..., None] * 0.75
    if faded is not None and np.any(faded):
        alpha = alpha * np.where(np.asarray(faded, bool)[winner], 1.0 / 3.0, 1.0)[..., None]
    colour = concept_colours(len(concept_maps))[winner]
    out = image.astype(np.float32) / 255.0 * (1.0 - alpha) + colour * alpha
    return (out * 255).round().astype(np.uint8)


def _thumb(image: np.ndarray, values: np.ndarray, size: int = 112) -> np.ndarray:
    small = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return signed_overlay(small, _resize(np.asarray(values, np.float32), (size, size)))


# ---------------------------------------------------------------------- plots (Figure API)
def _figure_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def silhouette_figure(silhouette_by_k: dict[int, float], k: int, stability_by_k: dict[int, float] | None = None,
                      k_rule: str = "silhouette"):
    """Mean silhouette (and the cut's mean stability, when scored) vs k with the chosen k marked
    (a ``matplotlib.figure.Figure``), or None."""
    if not silhouette_by_k:
        return None
    from matplotlib.figure import Figure

    ks = sorted(silhouette_by_k)
    fig = Figure(figsize=(5.6, 2.6))
    ax = fig.subplots()
    ax.plot(ks, [silhouette_by_k[x] for x in ks], marker=".", label="mean silhouette")
    ax.axvline(k, color="red", linestyle="--", label=f"chosen k = {k} (by {k_rule})")
    ax.set_xlabel("number of concepts k")
    ax.set_ylabel("mean silhouette")
    handles, labels = ax.get_legend_handles_labels()
    if stability_by_k:
        twin = ax.twinx()
        sk = sorted(stability_by_k)
        line = twin.plot(sk, [stability_by_k[x] for x in sk], marker=".", color="#2ca02c",
                         label="stability (relevance-weighted)")
        twin.set_ylabel("mean stability")
        twin.set_ylim(0, 1)
        handles, labels = handles + line, labels + [line[0].get_label()]
    ax.legend(handles, labels, fontsize=8, loc="best")
    return fig


def dendrogram_figure(linkage: np.ndarray, k: int):
    """The dendrogram's last merges with the cut at k (a ``matplotlib.figure.Figure``), or None."""
    if len(linkage) < 2 or k < 1:
        return None
    from matplotlib.figure import Figure
    from scipy.cluster.hierarchy import dendrogram

    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    p = min(max(2 * k, 30), len(linkage) + 1)
    dendrogram(linkage, truncate_mode="lastp", p=p, ax=ax, no_labels=True, color_threshold=0, above_threshold_color="#555")
    heights = np.sort(linkage[:, 2])
    if 1 < k <= len(heights):
        cut = (heights[-k] + heights[-k + 1]) / 2
        ax.axhline(cut, color="red", linestyle="--", label=f"cut: k = {k}")
        ax.legend()
    ax.set_ylabel("merge distance")
    ax.set_title(f"dendrogram of {len(linkage) + 1} active neurons (last {p} merges)", fontsize=9)
    return fig


def concept_grid(explanation, path: str | Path, columns: int = 6) -> Path:
    """``concepts.png``: the photo, the top-level concepts' maps (when there is a top level), then every
    (sub-)concept's signed map over it with rank, parent and share (the drawn, smoothed maps)."""
    from matplotlib.figure import Figure

    maps = explanation.display_maps if explanation.display_maps is not None else explanation.concept_maps
    top = explanation.concepts.top_level
    top_maps = explanation.top_display_maps if explanation.top_display_maps is not None else explanation.top_maps
    panels: list[tuple[np.ndarray, str]] = []
    for t, concept in enumerate(top):
        panels.append((top_maps[t], f"T{concept.rank} {100 * concept.share:.1f}% n={concept.size}\n"
                                    f"{len(concept.children)} sub-concepts"))
    for i, concept in enumerate(explanation.concepts.concepts):
        rep = concept.representative
        stab = f" s={concept.stability:.2f}" if concept.stability is not None else ""
        parent = f"T{concept.parent} › " if concept.parent is not None else ""
        panels.append((maps[i], f"{parent}#{concept.rank} {100 * concept.share:.1f}% n={concept.size}{stab}\n"
                                f"{rep.layer}:{rep.channel}"))
    rows = max(1, int(np.ceil((len(panels) + 1) / columns)))
    fig = Figure(figsize=(2.2 * columns, 2.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    axes[0].imshow(explanation.image)
    axes[0].set_title(f"{explanation.target_name[:24]}\np={explanation.probability:.2f}", fontsize=8)
    for ax, (values, title) in zip(axes[1:], panels):
        ax.imshow(signed_overlay(explanation.image, values))
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)


# ---------------------------------------------------------------------- the page
