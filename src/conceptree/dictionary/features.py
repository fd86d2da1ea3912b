"""What each neuron looks like across a reference set: the features a dictionary clusters.

From a reference index (:mod:`conceptree.index`), every neuron ``p`` has on every image ``i``
its relevance ``r_p(i)`` and the cell of its own-layer relevance peak. Two neurons belong to one
model-level concept when they carry the decision on the same images (co-relevance) and, where
they do, at the same place. The feature vector of neuron ``p`` is

``f_p = [z_p(i)]_i  ⊕  β · [z_p(i) · y_p(i), z_p(i) · x_p(i)]_i``,  then ``f_p / ‖f_p‖``

with ``z_p(i) = r_p(i) / Σ_q |r_q(i)|`` (the share of image ``i``'s decision through ``p``: images
weigh alike whatever their logit), ``(y_p(i), x_p(i))`` the peak's position in ``[-½, ½]`` of the
input's height and width, and ``β`` the location weight (``0``: co-relevance only). The
Euclidean distance between two normalised vectors is the paper's weighted distance carried
to the model level: a relevance term (do both carry the same images) plus, weighted by ``β``,
a map term (do they point at the same place where they do); normalising makes a concept a
*pattern* of use, so that weak neurons join the concept they behave like instead of one heap of
weak neurons (what Ward on raw relevances gives). Neurons with zero relevance on every
reference image have no pattern: they are *inactive* and join no concept.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import InputError

#: location weight β of the default dictionary (chosen on the dev photos, docs/results/dictionary.md).
DEFAULT_LOCATION_WEIGHT = 3.0


def index_features(
    relevance: np.ndarray,
    abs_total: np.ndarray,
    peaks: np.ndarray | None = None,
    peak_grid: tuple[int, int] = (56, 56),
    location_weight: float = DEFAULT_LOCATION_WEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised feature vectors of every neuron (module docstring).

    Parameters
    ----------
    relevance : np.ndarray
        ``(images, neurons)`` ``r_p(i)`` (e.g. :attr:`ConceptIndex.relevance` rows).
    abs_total : np.ndarray
        ``(images,)`` ``Σ_q |r_q(i)|`` of each image (positive).
    peaks : np.ndarray, optional
        ``(images, neurons)`` peak cells ``row * grid_w + col`` (needed when ``location_weight > 0``).
    peak_grid : (int, int)
        The grid of the peak cells.
    location_weight : float
        β ≥ 0.

    Returns
    -------
    features : np.ndarray
        ``(active neurons, images * (1 or 3))`` float32, unit rows.
    active : np.ndarray
        ``(neurons,)`` bool: the neurons with nonzero relevance on some image (the rows of ``features``).
    """
    relevance = np.asarray(relevance)
    abs_total = np.asarray(abs_total, dtype=np.float64)
    if relevance.ndim != 2 or abs_total.shape != (relevance.shape[0],):
        raise InputError(f"relevance must be (images, neurons) and abs_total (images,), got {relevance.shape} "
                         f"and {abs_total.shape}")
    if location_weight < 0:
        raise InputError(f"location_weight must be >= 0, got {location_weight}")
    if not np.all(abs_total > 0):
        raise InputError("every image needs a nonzero total relevance; drop the failed or empty images first")
    z = (np.asarray(relevance, dtype=np.float32) / abs_total[:, None].astype(np.float32)).T  # (neurons, images)
    active = np.any(z != 0, axis=1)
    z = z[active]
    parts = [z]
    if location_weight > 0:
        if peaks is None or np.shape(peaks) != relevance.shape:
            raise InputError("location_weight > 0 needs the peaks of the same images and neurons")
        cells = np.asarray(peaks).T[active].astype(np.int64)
        gh, gw = peak_grid
        y = ((cells // gw) + 0.5) / gh - 0.5
        x = ((cells % gw) + 0.5) / gw - 0.5
        parts += [location_weight * z * y.astype(np.float32), location_weight * z * x.astype(np.float32)]
    features = np.concatenate(parts, axis=1)
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    return features / norm, active


def condensed_euclidean(features: np.ndarray, block: int = 1024) -> np.ndarray:
    """Pairwise Euclidean distances of the rows of ``features`` as a condensed float64 vector.

    Computed block by block from Gram products (BLAS): ``‖a − b‖² = ‖a‖² + ‖b‖² − 2 a·b``, clipped
    at 0. scipy's ``pdist`` takes 456 s for the 17,056 neurons × 840 images of the bird index on
    the 2-core CPU; this takes seconds (``benchmarks/results/dictionary_build.json``). Peak
    memory: the condensed vector (``n(n−1)/2`` float64) plus one ``block × n`` float32 block.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    n = x.shape[0]
    squared = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    out = np.empty(n * (n - 1) // 2, dtype=np.float64)
    start = 0
    for a in range(0, n, block):
        b = min(n, a + block)
        gram = x[a:b] @ x[a:].T  # (b-a, n-a)
        dist = squared[a:b, None] + squared[None, a:] - 2.0 * gram.astype(np.float64)
        np.maximum(dist, 0.0, out=dist)
        np.sqrt(dist, out=dist)
        for i in range(a, b):
            row = dist[i - a, i - a + 1 :]
            out[start : start + row.size] = row
            start += row.size
    return out


def neuron_features(*args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Deprecated name of :func:`index_features` (it clashed with
    :func:`conceptree.concepts.features.neuron_features`, which takes one image's LRP pass)."""
    warnings.warn("conceptree.dictionary.features.neuron_features is now index_features; the old name goes in the "
                  "next release", DeprecationWarning, stacklevel=2)
    return index_features(*args, **kwargs)
