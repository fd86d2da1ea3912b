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


def check_linkage(method: str) -> str:
    """``method`` if it is one of :data:`LINKAGES`, else a one-line error naming them."""
    if method not in LINKAGES:
        raise InputError(f"unknown linkage {method!r}; use one of {', '.join(LINKAGES)}")
    return method

#: Maps are average-pooled to this size for the distance (and stored at it): one place for the default.
DEFAULT_MAP_SIZE: tuple[int, int] = (56, 56)


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
        Normaliser of each term: its 99th percentile (default; robust to the few shallow-layer
        neurons whose relevance is orders of magnitude above the rest) or its maximum.
        The percentile is estimated on a fixed, deterministic subsample of pairs when n is large.
    exact_ward : bool or None
        Use ``sqrt(λ·dE_norm² + (1−λ)·w_norm²)`` (Euclidean, so Ward is exact). Default None:
        exact exactly when the linkage is Ward (resolved by :func:`find_concepts`).

    Notes
    -----
    The defaults (Ward, λ = 0.5, p99) were chosen on real CUB photos with the bird model:
    average and single linkage put 65-100 % of the relevance into one giant concept and sit at
    the bottom of the k range; see ``docs/concepts.md``. The sweep against CUB part regions on
    67 dev species (``docs/results/cub_sweep.md``) confirmed them.
    """

    lam: float = 0.5
    map_norm: MapNorm = "l2"
    map_size: tuple[int, int] | None = DEFAULT_MAP_SIZE
    term_norm: TermNorm = "p99"
    exact_ward: bool | None = None

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


def _pair_sample(n: int, limit: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic subsample of index pairs i != j (all pairs i < j when few)."""
    if n * (n - 1) // 2 <= limit:
        return np.triu_indices(n, k=1)
    rng = np.random.default_rng(0)
    i = rng.integers(0, n, limit)
    j = rng.integers(0, n, limit)
    keep = i != j
    return i[keep], j[keep]


class NeuronDistance:
    """``dis(p, q)`` between ``n`` neurons, computed block by block from the map features.

    The ``n x n`` matrix is never held: :meth:`condensed` streams it into the float64
    condensed vector that the linkage consumes, and :meth:`matmul` streams ``D @ M`` for the
    silhouettes. Peak memory is the condensed vector plus the features (measured in
    ``benchmarks/results/clustering.json``). :meth:`square` materialises it for small n.

    Parameters
    ----------
    maps : np.ndarray
        Conditional maps, ``(n, h, w)``.
    relevance : np.ndarray
        ``r_p``, ``(n,)``.
    config : DistanceConfig
    block : int
        Rows per block (memory ``block * n * 4`` bytes).
    """

    def __init__(self, maps: np.ndarray, relevance: np.ndarray, config: DistanceConfig, block: int = 256) -> None:
        relevance = np.asarray(relevance, dtype=np.float64)
        if len(relevance) != len(maps):
            raise InputError(f"{len(maps)} maps but {len(relevance)} relevances")
        self.n = len(relevance)
        self.config = config
        self.block = block
        self.features = prepare_maps(maps, config) if config.lam > 0 else None
        self.sq = (
            np.einsum("ij,ij->i", self.features, self.features, dtype=np.float64).astype(np.float32)
            if self.features is not None else None
        )
        self.r = relevance.astype(np.float32)
        spread = float(self.r.max() - self.r.min()) if self.n else 0.0
        w_sample = None
        if config.term_norm == "p99":
            pi, pj = _pair_sample(self.n)
            w_sample = np.abs(self.r[pi] - self.r[pj])
        self.norm_w = self._normaliser(w_sample, spread)
        self.norm_e: float | None = 1.0 if self.features is None else None
        if self.features is not None and config.term_norm == "p99":
            # 20,000 pairs fix the 99th percentile to well under 1 % (and cost ~0.1 s)
            mi, mj = _pair_sample(self.n, limit=20_000)
            sample = self._pair_map_distances(mi, mj)
            self.norm_e = self._normaliser(sample, float(sample.max()) if len(sample) else 0.0)

    def _ensure_norm_e(self) -> float:
        """Maximum map distance (one pass over the row blocks), unless already known."""
        if self.norm_e is None:
            top = 0.0
            for start in range(0, self.n, self.block):
                top = max(top, float(self._raw_rows(start, min(start + self.block, self.n)).max()))
            self.norm_e = top if top > 0 else 1.0
        return self.norm_e

    def _normaliser(self, sample: np.ndarray | None, maximum: float) -> float:
        scale = maximum if sample is None or not len(sample) else float(np.percentile(sample, 99))
        if scale <= 0:
            scale = maximum
        return scale if scale > 0 else 1.0

    def _pair_map_distances(self, pi: np.ndarray, pj: np.ndarray) -> np.ndarray:
        out = np.empty(len(pi), np.float32)
        for start in range(0, len(pi), 1024):
            a = self.features[pi[start : start + 1024]]
            a -= self.features[pj[start : start + 1024]]
            out[start : start + 1024] = np.sqrt(np.einsum("ij,ij->i", a, a))
        return out

    def _raw_rows(self, start: int, stop: int) -> np.ndarray:
        """Euclidean map distances of rows ``start:stop`` to all neurons (Gram trick)."""
        rows = self.features[start:stop] @ self.features.T
        rows *= -2.0
        rows += self.sq[start:stop, None]
        rows += self.sq[None, :]
        np.maximum(rows, 0.0, out=rows)
        np.sqrt(rows, out=rows)
        rows[np.arange(stop - start), np.arange(start, stop)] = 0.0
        return rows

    def _mix(self, d: np.ndarray | None, w: np.ndarray) -> np.ndarray:
        """Normalise raw map distances ``d`` and relevance gaps ``w`` and mix them, in place.

        Returns ``d`` (or ``w`` when there is no map term, λ = 0).
        """
        lam = self.config.lam
        w *= 1.0 / self.norm_w
        if d is None:
            return w
        d *= 1.0 / self._ensure_norm_e()
        if self.config.exact_ward:
            np.square(d, out=d)
            np.square(w, out=w)
        d *= lam
        w *= 1 - lam
        d += w
        if self.config.exact_ward:
            np.sqrt(d, out=d)
        return d

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the mixed distance, float32 ``(stop - start, n)``."""
        w = np.abs(self.r[start:stop, None] - self.r[None, :])
        d = self._mix(None if self.features is None else self._raw_rows(start, stop), w)
        d[np.arange(stop - start), np.arange(start, stop)] = 0.0
        return d

    def condensed(self) -> np.ndarray:
        """float64 condensed distance (scipy/fastcluster order), built row block by row block.

        Raw map distances are written first while their maximum is tracked, then each row
        segment is normalised and mixed with the relevance term in place: one pass of Gram
        products, no ``n x n`` matrix.
        """
        n = self.n
        out = np.empty(n * (n - 1) // 2, dtype=np.float64)
        offsets = [i * n - i * (i + 1) // 2 for i in range(n)]
        if self.features is not None:
            top = 0.0
            for start in range(0, n, self.block):
                stop = min(start + self.block, n)
                rows = self._raw_rows(start, stop)
                top = max(top, float(rows.max()))
                for i in range(start, stop):
                    out[offsets[i] : offsets[i] + n - i - 1] = rows[i - start, i + 1 :]
            if self.norm_e is None:
                self.norm_e = top if top > 0 else 1.0
        r = self.r.astype(np.float64)
        for i in range(n - 1):
            seg = out[offsets[i] : offsets[i] + n - i - 1]
            mixed = self._mix(None if self.features is None else seg, np.abs(r[i + 1 :] - r[i]))
            if mixed is not seg:
                seg[:] = mixed
        return out

    def matmul(self, matrix: np.ndarray) -> np.ndarray:
        """``D @ matrix`` (float64) without holding ``D``."""
        out = np.empty((self.n, matrix.shape[1]), dtype=np.float64)
        m32 = matrix.astype(np.float32)
        for start in range(0, self.n, self.block):
            stop = min(start + self.block, self.n)
            out[start:stop] = self.rows(start, stop) @ m32
        return out

    def square(self) -> np.ndarray:
        """The full ``(n, n)`` float32 matrix (small n, tests, reports)."""
        if self.n == 0:
            return np.zeros((0, 0), np.float32)
        return np.concatenate([self.rows(s, min(s + self.block, self.n)) for s in range(0, self.n, self.block)])


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
    return NeuronDistance(maps, relevance, config).square()
