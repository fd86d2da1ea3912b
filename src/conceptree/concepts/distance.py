"""Weighted distance between neurons: ``λ·dE_norm(y_p, y_q) + (1−λ)·w_norm(p, q)``.

``dE`` is the Euclidean distance between (optionally pre-processed) conditional maps and
``w = |r_p − r_q|`` the difference of relevances. Each term is divided by a normaliser (its
maximum, or a robust percentile) so that λ weighs comparable quantities.

The ``exact_ward`` variant, ``sqrt(λ·dE_norm² + (1−λ)·w_norm²)``, is the Euclidean distance
between augmented feature vectors ``[sqrt(λ)/n_E · y_p, sqrt(1−λ)/n_w · r_p]``, so Ward
linkage on it is exact Ward. Plain Ward on the mixed (non-Euclidean) distance is only
"Ward-like": the Lance-Williams update is applied to a distance that is not Euclidean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

MapNorm = Literal["none", "l2", "maxabs"]
TermNorm = Literal["max", "p99"]
LINKAGES = ("single", "complete", "average", "ward")


@dataclass(frozen=True)
class DistanceConfig:
    """Parameters of the neuron distance.

    Parameters
    ----------
    lam : float
        Weight λ of the map term (1: maps only, 0: relevance only). Default 0.5.
    map_norm : {"none", "l2", "maxabs"}
        Per-map normalisation before ``dE`` (default ``"l2"``: compares the shape of where a
        neuron's relevance lies, not its amount, which the relevance term already carries).
        All-zero maps stay zero.
    map_size : (int, int) or None
        Average-pool larger maps down to this size for the distance only (default ``(56, 56)``).
    term_norm : {"max", "p99"}
        Normaliser of each term: its maximum (default) or its 99th percentile (robust to
        outliers; estimated on a fixed, deterministic subsample of pairs when n is large).
    exact_ward : bool
        Use ``sqrt(λ·dE_norm² + (1−λ)·w_norm²)`` (Euclidean, exact for Ward). Default False.
    """

    lam: float = 0.5
    map_norm: MapNorm = "l2"
    map_size: tuple[int, int] | None = (56, 56)
    term_norm: TermNorm = "max"
    exact_ward: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise InputError(f"lam must be in [0, 1], got {self.lam}")
        if self.map_norm not in ("none", "l2", "maxabs"):
            raise InputError(f"map_norm must be 'none', 'l2' or 'maxabs', got {self.map_norm!r}")
        if self.term_norm not in ("max", "p99"):
            raise InputError(f"term_norm must be 'max' or 'p99', got {self.term_norm!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def prepare_maps(maps: np.ndarray, config: DistanceConfig) -> np.ndarray:
    """Pool and normalise maps ``(n, h, w)`` into float32 feature rows ``(n, d)``."""
    if maps.ndim != 3:
        raise InputError(f"maps must have shape (n, h, w), got {maps.shape}")
    rows = []
    for start in range(0, len(maps), 1024):
        chunk = torch.from_numpy(np.ascontiguousarray(maps[start : start + 1024], dtype=np.float32))
        if config.map_size is not None and (chunk.shape[-2] > config.map_size[0] or chunk.shape[-1] > config.map_size[1]):
            chunk = F.adaptive_avg_pool2d(chunk.unsqueeze(1), config.map_size).squeeze(1)
        rows.append(chunk.reshape(chunk.shape[0], -1).numpy())
    features = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
    if config.map_norm == "l2":
        norms = np.sqrt(np.einsum("ij,ij->i", features, features, dtype=np.float64)).astype(np.float32)
        features /= np.where(norms > 0, norms, 1.0)[:, None]
    elif config.map_norm == "maxabs":
        peaks = np.abs(features).max(axis=1) if features.size else np.zeros(len(features), np.float32)
        features /= np.where(peaks > 0, peaks, 1.0)[:, None]
    return features


def _normaliser(values_fn, maximum: float, mode: TermNorm, n: int) -> float:
    """Divisor for one term; 1 if the term is identically zero (no division by zero)."""
    if mode == "max":
        scale = maximum
    else:
        scale = float(np.percentile(values_fn(), 99))
        if scale <= 0:
            scale = maximum
    return scale if scale > 0 else 1.0


def _pair_sample(n: int, limit: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic subsample of index pairs i < j (all pairs when few)."""
    i, j = np.triu_indices(n, k=1) if n * (n - 1) // 2 <= limit else (None, None)
    if i is None:
        rng = np.random.default_rng(0)
        i = rng.integers(0, n, limit)
        j = rng.integers(0, n, limit)
        keep = i != j
        i, j = i[keep], j[keep]
    return i, j


def euclidean_square(features: np.ndarray) -> np.ndarray:
    """Square float32 Euclidean distance matrix via the Gram trick (zero diagonal, no NaN)."""
    sq = np.einsum("ij,ij->i", features, features, dtype=np.float64).astype(np.float32)
    dist = features @ features.T  # (n, n) float32
    dist *= -2.0
    dist += sq[:, None]
    dist += sq[None, :]
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    np.sqrt(dist, out=dist)
    return dist


def neuron_distance(maps: np.ndarray, relevance: np.ndarray, config: DistanceConfig) -> np.ndarray:
    """Square float32 matrix of ``dis(p, q)`` between ``n`` neurons.

    Parameters
    ----------
    maps : np.ndarray
        Conditional maps, shape ``(n, h, w)``.
    relevance : np.ndarray
        ``r_p``, shape ``(n,)``.
    config : DistanceConfig

    Returns
    -------
    np.ndarray
        ``(n, n)`` float32, symmetric, zero diagonal, finite.
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    if len(relevance) != len(maps):
        raise InputError(f"{len(maps)} maps but {len(relevance)} relevances")
    n = len(relevance)
    features = prepare_maps(maps, config)
    dist = euclidean_square(features) if config.lam > 0 else np.zeros((n, n), np.float32)
    del features
    pi, pj = _pair_sample(n)
    norm_e = _normaliser(lambda: dist[pi, pj], float(dist.max()) if n else 0.0, config.term_norm, n)
    r = relevance.astype(np.float32)
    spread = float(r.max() - r.min()) if n else 0.0
    norm_w = _normaliser(lambda: np.abs(r[pi] - r[pj]), spread, config.term_norm, n)
    lam = config.lam
    if config.exact_ward:
        dist *= np.float32(1.0 / norm_e)
        np.square(dist, out=dist)
        dist *= np.float32(lam)
        for start in range(0, n, 1024):
            block = np.abs(r[start : start + 1024, None] - r[None, :]) / np.float32(norm_w)
            dist[start : start + 1024] += np.float32(1 - lam) * np.square(block)
        np.sqrt(dist, out=dist)
    else:
        dist *= np.float32(lam / norm_e)
        if lam < 1:
            for start in range(0, n, 1024):
                block = np.abs(r[start : start + 1024, None] - r[None, :])
                dist[start : start + 1024] += np.float32((1 - lam) / norm_w) * block
    np.fill_diagonal(dist, 0.0)
    return dist
