"""What each concept is made of: relevance flows between the concepts of one explanation.

Definition (first passage). A concept ``C`` carries ``R_C = sum_{p in C} r_p``: each member's
relevance at its own layer. Start every member's relevance map at its layer and propagate it
down with the explanation's LRP rules; a unit of it travels until it *arrives* at a channel that
belongs to some concept (any layer below where it started) and is absorbed there:

- at a member of another concept ``D``: it is part of ``flow(C <- D)``, "C is made of D";
- at another member of ``C`` itself: ``self`` (that member's own ``r_q`` already counts it, so
  it is not followed twice);
- it reaches the input through channels of no concept: ``to_input``.

Each is divided by ``R_C``, so a row ``flows[C, :]`` plus ``self``, ``to_input`` and ``leak``
sums to one, where ``leak`` is what LRP's rules do not pass on (bias terms and stabilisers;
zero for exactly conservative rules). A member's own start is never absorbed at its own node.
Shares are only read for concepts with positive relevance (``ConceptFlows.defined``): a
concept whose members' relevance sums to zero or below (a "speaks against" concept, or one
that nearly cancels) has parts of mixed sign whose ratios to ``R_C`` can exceed 100 %; its row
is kept in the matrix but not listed, drawn or counted.

Why first passage: a concept's members span layers, and with skip connections no layer is a
cut, so "the relevance of C at layer L" is not defined; first passage assigns every unit of C's
relevance to exactly one place (conserved), follows residual paths past layers, and credits the
*nearest* concepts C is built from (the graph is read transitively: C ← D ← E). Cost: one
batched propagation of k rows (:meth:`CRPEngine.absorbing_flows`), no per-neuron pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..attribution import CRPEngine
from .concepts import Concept

#: Edges drawn and listed ("made of", "feeds") carry at least this share of a concept's relevance.
EDGE_SHARE = 0.05


@dataclass
class ConceptFlows:
    """Relevance flows between ``k`` concepts (module docstring).

    Attributes
    ----------
    flows : np.ndarray
        ``(k, k)``; ``flows[c, d]`` = share of concept ``c``'s relevance absorbed by the members
        of concept ``d`` (``d != c``; the diagonal is zero, see ``self_share``). Rows and
        columns follow the explanation's concept order (rank 1 first).
    self_share : np.ndarray
        ``(k,)`` share absorbed by the concept's own lower members.
    to_input : np.ndarray
        ``(k,)`` share that reached the input through channels of no concept.
    leak : np.ndarray
        ``(k,)`` ``1 -`` everything above (bias terms, stabilisers).
    relevance : np.ndarray
        ``(k,)`` ``R_C`` on the attribution the flows were computed on.
    """

    flows: np.ndarray
    self_share: np.ndarray
    to_input: np.ndarray
    leak: np.ndarray
    relevance: np.ndarray

    @property
    def k(self) -> int:
        return len(self.relevance)

    @property
    def defined(self) -> np.ndarray:
        """``(k,)`` bool: concepts with positive relevance, whose shares are read (module docstring)."""
        return self.relevance > 0

    def made_of(self, c: int, threshold: float = EDGE_SHARE) -> list[tuple[int, float]]:
        """``[(d, share)]`` of the concepts ``c`` (0-based) draws at least ``threshold`` from, largest
        first (empty for a concept without positive relevance)."""
        if not self.defined[c]:
            return []
        row = self.flows[c]
        order = np.argsort(-row, kind="stable")
        return [(int(d), float(row[d])) for d in order if row[d] >= threshold]

    def feeds(self, d: int, threshold: float = EDGE_SHARE) -> list[tuple[int, float]]:
        """``[(c, share)]`` of the concepts (with positive relevance) that draw at least ``threshold``
        of their relevance from ``d``."""
        col = self.flows[:, d]
        order = np.argsort(-col, kind="stable")
        return [(int(c), float(col[c])) for c in order if col[c] >= threshold and self.defined[c]]

    def top_incoming(self, n: int = 3) -> np.ndarray:
        """``(k,)`` share of each concept's flows from other concepts carried by its ``n`` largest edges
        (NaN for a concept without positive relevance or without positive flows)."""
        positive = np.clip(self.flows, 0.0, None)
        total = positive.sum(1)
        top = -np.sort(-positive, axis=1)[:, :n].sum(1)
        return np.divide(top, total, out=np.full(self.k, np.nan), where=(total > 0) & self.defined)

    def to_dict(self) -> dict:
        return {"definition": "first passage (conceptree.concepts.flows)", "flows": self.flows.tolist(),
                "self": self.self_share.tolist(), "to_input": self.to_input.tolist(), "leak": self.leak.tolist(),
                "relevance": self.relevance.tolist(), "edge_share": EDGE_SHARE}

    @classmethod
    def from_dict(cls, data: dict) -> ConceptFlows:
        return cls(np.asarray(data["flows"], float), np.asarray(data["self"], float), np.asarray(data["to_input"], float),
                   np.asarray(data["leak"], float), np.asarray(data["relevance"], float))


#: compute type of the flows' batched propagation (None: the attribution's own). Shares are
#: reported to 1 %; float32 holds them to ~1e-8 (tested to 1e-5) at a sixth of float64's time on
#: this CPU, cast included (``benchmarks/results/graph_time.json``).
FLOW_DTYPE = torch.float32
#: concepts propagated together: the fastest of 1, 2, 4, 8 in the same file (small batches stay in cache).
FLOW_BATCH = 2


def concept_flows(engine: CRPEngine, attribution, concepts: list[Concept], batch_size: int = FLOW_BATCH,
                  dtype: torch.dtype | None = FLOW_DTYPE) -> ConceptFlows:
    """First-passage flows between the concepts of one explanation (module docstring).

    Parameters
    ----------
    engine : CRPEngine
        The engine that made ``attribution``.
    attribution : Attribution
        The explanation's LRP pass (its layer relevances are the members' starts).
    concepts : list[Concept]
        The explanation's concepts (members as ``layer -> channels``).
    batch_size : int
        Concepts propagated together.
    dtype : torch.dtype or None
        Compute type of the propagation (a cast copy of the attribution's pass); None: the attribution's.

    Returns
    -------
    ConceptFlows
    """
    k = len(concepts)
    if k == 0:
        z = np.zeros(0)
        return ConceptFlows(np.zeros((0, 0)), z, z, z, z)
    result = engine.absorbing_flows(attribution, [concept.groups() for concept in concepts], batch_size=batch_size,
                                    dtype=dtype)
    absorbed, starts_total = result.absorbed.numpy(), result.start.numpy()
    relevance = starts_total.copy()  # R_C on this attribution (a traced concept's relevance on another image)
    scale = np.where(np.abs(starts_total) > 0, starts_total, 1.0)
    shares = absorbed / scale[:, None]
    self_share = np.diag(shares).copy()
    np.fill_diagonal(shares, 0.0)
    to_input = result.to_input.numpy() / scale
    leak = 1.0 - shares.sum(1) - self_share - to_input
    return ConceptFlows(shares, self_share, to_input, leak, relevance)
