"""Weighted distance between neurons: ``λ·dE_norm(y_p, y_q) + (1−λ)·w_norm(p, q)``.

``dE`` is the Euclidean distance between (optionally pre-processed) conditional maps and
``w = |r_p − r_q|`` the difference of relevances. Each term is divided by a normaliser (its
maximum, or a robust percentile) so that λ weighs comparable quantities.

The ``exact_ward`` variant, ``sqrt(λ·dE_norm² + (1−λ)·w_norm²)``, is the Euclidean distance
between augmented feature vectors ``[sqrt(λ)/n_E · y_p, sqrt(1−λ)/n_w · r_p]``, so Ward
linkage on it is exact Ward. Plain Ward on the mixed (non-Euclidean) distance is only
"Ward-like": the Lance-Williams update is applied to a distance that is not Euclidean.

Reproducible to the bit: the map features are put on a fixed-point grid (integers held in
float64, :func:`quantise_features`) so that every Gram product is an exact integer sum whatever
the BLAS, its thread count or its summation order, and the mixed distances are rounded to a
grid of ``2**-DISTANCE_BITS`` so that sums of them (the silhouettes) are exact too. The same
float32 features therefore give the same distances, dendrogram, silhouettes and cut on any
machine; the features themselves come from a float64 LRP pass (``ConceptOptions.precision``).
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

#: The mixed distances are rounded to multiples of ``2**-DISTANCE_BITS`` (6e-8: float32's
#: resolution at 1), so that sums of up to ``2**20`` of them below ``2**12`` are exact in float64.
DISTANCE_BITS = 24


def quantise_features(features: np.ndarray) -> tuple[np.ndarray, float]:
    """Feature rows ``(n, d)`` on a fixed-point grid: integers in float64 and the grid step.

    The step is the largest power of two for which every Gram product of two rows, and every
    squared difference ``|f_p - f_q|**2``, is a sum of integers below ``2**53``
    (``4 d max|f|**2 / step**2 <= 2**53``), so BLAS computes it exactly in any order. For unit
    rows of 3,136 values the step is ``2**-19`` (2e-6, below the float32 noise of the maps of a
    float32 LRP pass).
    """
    n, d = features.shape
    top = float(np.abs(features).max()) if features.size else 0.0
    if top == 0.0 or d == 0:
        return np.zeros((n, d), np.float64), 1.0
    bits = int(np.floor((51 - np.log2(max(d, 1))) / 2 - 1e-9)) - int(np.ceil(np.log2(top)))
    step = float(2.0 ** -bits)
    out = features.astype(np.float64)
    out *= 2.0 ** bits  # a power of two: exact
    return np.rint(out, out=out), step


def round_distances(d: np.ndarray) -> np.ndarray:
    """``d`` rounded in place to multiples of ``2**-DISTANCE_BITS``."""
    d *= 2.0 ** DISTANCE_BITS
    np.rint(d, out=d)
    d *= 2.0 ** -DISTANCE_BITS
    return d


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
    Every value is exact on the grids of the module docstring: the same features give the
    same bits from :meth:`condensed`, :meth:`rows` and :meth:`square`, on any thread count.

    Parameters
    ----------
    maps : np.ndarray
        Conditional maps, ``(n, h, w)``.
    relevance : np.ndarray
        ``r_p``, ``(n,)``.
    config : DistanceConfig
    block : int
        Rows per block (memory ``block * n * 8`` bytes).
    """

    def __init__(self, maps: np.ndarray, relevance: np.ndarray, config: DistanceConfig, block: int = 256) -> None:
        relevance = np.asarray(relevance, dtype=np.float64)
        if len(relevance) != len(maps):
            raise InputError(f"{len(maps)} maps but {len(relevance)} relevances")
        self.n = len(relevance)
        self.config = config
        self.block = block
        self.features: np.ndarray | None = None
        self.step = 1.0
        if config.lam > 0:
            self.features, self.step = quantise_features(prepare_maps(maps, config))
        # squared norms: exact integer sums
        self.sq = np.einsum("ij,ij->i", self.features, self.features) if self.features is not None else None
        self.r = relevance.astype(np.float32).astype(np.float64)
        spread = float(self.r.max() - self.r.min()) if self.n else 0.0
        w_sample = None
        if config.term_norm == "p99":
            pi, pj = _pair_sample(self.n)
            w_sample = np.abs(self.r[pi] - self.r[pj])
        self.norm_w = self._normaliser(w_sample, spread)
        # the map term's normaliser, found on first use (from the condensed pass when there is one)
        self.norm_e: float | None = 1.0 if self.features is None else None

    def _ensure_norm_e(self) -> float:
        """The map term's normaliser: the 99th percentile of the map distances of 20,000
        fixed pairs (to well under 1 %), or the maximum (one pass over the row blocks)."""
        if self.norm_e is None:
            if self.config.term_norm == "p99":
                sample = self._pair_map_distances(*_pair_sample(self.n, limit=20_000))
                self.norm_e = self._normaliser(sample, float(sample.max()) if len(sample) else 0.0)
            else:
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
        """Map distances of the pairs ``(pi, pj)``, equal to the Gram route's (exact integers)."""
        out = np.empty(len(pi), np.float64)
        for start in range(0, len(pi), 1024):
            a = self.features[pi[start : start + 1024]] - self.features[pj[start : start + 1024]]
            out[start : start + 1024] = np.einsum("ij,ij->i", a, a)
        return np.sqrt(out) * self.step

    def _raw_rows(self, start: int, stop: int, first: int = 0) -> np.ndarray:
        """Euclidean map distances of rows ``start:stop`` to neurons ``first:``, float64 (exact Gram)."""
        rows = self.features[start:stop] @ self.features[first:].T
        rows *= -2.0
        rows += self.sq[start:stop, None]
        rows += self.sq[None, first:]
        np.maximum(rows, 0.0, out=rows)
        np.sqrt(rows, out=rows)
        rows *= self.step
        diagonal = np.arange(max(start, first), stop)
        rows[diagonal - start, diagonal - first] = 0.0
        return rows

    def _mix(self, d: np.ndarray | None, w: np.ndarray) -> np.ndarray:
        """Normalise raw map distances ``d`` and relevance gaps ``w``, mix and round them, in place.

        Returns ``d`` (or ``w`` when there is no map term, λ = 0).
        """
        lam = self.config.lam
        w *= 1.0 / self.norm_w
        if d is None:
            return round_distances(w)
        d *= 1.0 / self._ensure_norm_e()
        if self.config.exact_ward:
            np.square(d, out=d)
            np.square(w, out=w)
        d *= lam
        w *= 1 - lam
        d += w
        if self.config.exact_ward:
            np.sqrt(d, out=d)
        return round_distances(d)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the mixed distance, float64 ``(stop - start, n)``."""
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
            block = max(self.block, 1024)  # fewer, larger products: BLAS packs the right operand once per call
            for start in range(0, n, block):
                stop = min(start + block, n)
                rows = self._raw_rows(start, stop, first=start)  # the upper triangle only
                top = max(top, float(rows.max()))
                for i in range(start, stop):
                    out[offsets[i] : offsets[i] + n - i - 1] = rows[i - start, i - start + 1 :]
            if self.norm_e is None:
                if self.config.term_norm == "p99":  # the sampled pairs, read from the raw distances
                    pi, pj = _pair_sample(n, limit=20_000)
                    a, b = np.minimum(pi, pj), np.maximum(pi, pj)
                    sample = out[n * a - a * (a + 1) // 2 + (b - a - 1)]
                    self.norm_e = self._normaliser(sample, float(sample.max()) if len(sample) else 0.0)
                else:
                    self.norm_e = top if top > 0 else 1.0
        r = self.r
        for i in range(n - 1):
            seg = out[offsets[i] : offsets[i] + n - i - 1]
            mixed = self._mix(None if self.features is None else seg, np.abs(r[i + 1 :] - r[i]))
            if mixed is not seg:
                seg[:] = mixed
        return out

    def matmul(self, matrix: np.ndarray) -> np.ndarray:
        """``D @ matrix`` (float64) without holding ``D``: exact for a 0/1 ``matrix``."""
        out = np.empty((self.n, matrix.shape[1]), dtype=np.float64)
        m64 = np.asarray(matrix, dtype=np.float64)
        for start in range(0, self.n, self.block):
            stop = min(start + self.block, self.n)
            out[start:stop] = self.rows(start, stop) @ m64
        return out

    def square(self) -> np.ndarray:
        """The full ``(n, n)`` float64 matrix (small n, tests, reports)."""
        if self.n == 0:
            return np.zeros((0, 0), np.float64)
        return np.concatenate([self.rows(s, min(s + self.block, self.n)) for s in range(0, self.n, self.block)])


def neuron_distance(maps: np.ndarray, relevance: np.ndarray, config: DistanceConfig) -> np.ndarray:
    """Square float64 matrix of ``dis(p, q)`` between ``n`` neurons.

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
        ``(n, n)`` float64, symmetric, zero diagonal, finite.
    """
    return NeuronDistance(maps, relevance, config).square()
