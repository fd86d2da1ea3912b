"""Every evaluated method's maps for one photo: all of them, and its first K by its own order.

Order used for the equal-complexity restriction (``method@K``):

* ``ours`` (and its variants): the same dendrogram cut at exactly K concepts
  (:func:`conceptree.concepts.concepts.cut_concepts`), every concept's map;
* ``crp``: the K neurons with the largest ``r_p``;
* ``dcne``: the K strongest components of a 30-component NMF (by weight norm);
* CAM methods: the K deepest conv layers;
* ``fullgrad``: its input term plus the K-1 deepest bias terms;
* ``random-disks``: the first K disks of the photo's fixed sequence.

A method with fewer than K maps (a CAM on a model with fewer than K conv layers) keeps all
of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..attribution.engine import Attribution, CRPEngine, NeuronMaps
from ..concepts import find_concepts
from ..concepts.concepts import cut_concepts
from ..concepts.distance import DEFAULT_MAP_SIZE
from ..concepts.features import concept_maps, features_for
from ..concepts.options import ConceptOptions
from ..datasets.images import AnnotatedImage
from .baselines import CAM_METHODS
from .controls import DISK_COUNTS, random_disks
from .image_maps import ImageMaps

#: Equal-complexity budgets (maps per photo).
K_VALUES: tuple[int, ...] = (5, 10, 20, 30)


def at_key(method: str, k: int) -> str:
    """Score key of ``method`` restricted to ``k`` maps, e.g. ``"gradcam@20"``."""
    return f"{method}@{k}"


@dataclass
class OursResult:
    """One variant of our method on one photo: its maps and what the clustering found."""

    maps: np.ndarray  # (k, H, W)
    at_k: dict[int, np.ndarray]  # K -> (K, H, W)
    k: int
    largest_share: float
    largest_size_fraction: float
    n_neurons: int
    shares: list[float] = field(default_factory=list)


def ours_maps(
    engine: CRPEngine,
    attribution: Attribution,
    options: ConceptOptions,
    ks: tuple[int, ...] = K_VALUES,
    neurons: NeuronMaps | None = None,
) -> OursResult:
    """Concepts of one photo under ``options``, their maps, and the cuts at every K."""
    if neurons is None:
        neurons = features_for(engine, attribution, options)
    # stability draws only where they choose k (the scores are not part of the evaluation)
    concepts = find_concepts(neurons, options.distance, options.method, options.k_range,
                             stability=options.stability if options.k_rule == "stability" else None, k_rule=options.k_rule)
    maps = concept_maps(engine, attribution, concepts.concepts, options.concept_map)
    at_k = {}
    n_active = len(concepts.active_index)
    for k in ks:
        if k == concepts.k:
            at_k[k] = maps
        elif k <= n_active:
            at_k[k] = concept_maps(engine, attribution, cut_concepts(concepts, neurons, k), options.concept_map)
    sizes = [c.size for c in concepts.concepts]
    return OursResult(
        maps=maps,
        at_k=at_k,
        k=concepts.k,
        largest_share=max((c.share for c in concepts.concepts), default=0.0),
        largest_size_fraction=max(sizes, default=0) / max(n_active, 1),
        n_neurons=len(neurons),
        shares=[c.share for c in concepts.concepts],
    )


def baseline_maps(cached: ImageMaps, ks: tuple[int, ...] = K_VALUES) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(native, restricted)``: every baseline's maps, and ``method@K`` -> its first K maps."""
    native: dict[str, np.ndarray] = {
        "crp-10": cached.crp_maps[:10],
        "crp-300": cached.crp_maps[:300],
        "dcne": cached.dcne_maps,
        **cached.cam,
    }
    restricted: dict[str, np.ndarray] = {}
    for k in ks:
        restricted[at_key("crp", k)] = cached.crp_maps[:k]
        restricted[at_key("dcne", k)] = cached.dcne_ranked_maps[:k]
        for method, maps in cached.cam.items():
            if method == "fullgrad":
                deepest = maps[max(1, len(maps) - (k - 1)):] if k > 1 else maps[:0]
                restricted[at_key(method, k)] = np.concatenate([maps[:1], deepest])
            else:
                restricted[at_key(method, k)] = maps[max(0, len(maps) - k):]
    return native, restricted


def disk_maps(image: AnnotatedImage, seed: int = 0, ks: tuple[int, ...] = K_VALUES) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(native, restricted)`` random-disk controls: ``random-disks-N`` and ``random-disks@K``."""
    disks = random_disks(image, max(max(DISK_COUNTS), max(ks)), seed)
    native = {f"random-disks-{n}": disks[:n] for n in DISK_COUNTS}
    restricted = {at_key("random-disks", k): disks[:k] for k in ks}
    return native, restricted


def redundancy(maps: np.ndarray, grid: tuple[int, int] = DEFAULT_MAP_SIZE) -> float:
    """Mean pairwise Pearson correlation of a method's maps (average-pooled to ``grid``).

    Constant maps are left out; NaN when fewer than two maps vary.
    """
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.asarray(maps, np.float32))[:, None]
    if tuple(m.shape[-2:]) != tuple(grid):
        m = F.adaptive_avg_pool2d(m, grid)
    flat = m.flatten(1).double().numpy()
    flat = flat[flat.std(1) > 0]
    if len(flat) < 2:
        return float("nan")
    c = np.corrcoef(flat)
    return float(c[np.triu_indices(len(flat), 1)].mean())


__all__ = ["CAM_METHODS", "K_VALUES", "OursResult", "at_key", "baseline_maps", "disk_maps", "ours_maps", "redundancy"]
