"""Private: relevance propagation over the fx graph, from start nodes down to the input.

Two walks over the graph in reverse order, both batched (one relevance row per condition,
channel or concept): :func:`propagate` (masks, recorded nodes, nodes where it stops) and
:func:`propagate_absorbing` (first passage: what arrives at marked channels is taken out).
The engine calls them with start tensors it builds from layer names and channel groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, UnsupportedModelError
from . import rules as R
from ._forward import ForwardPass, FxGraph, is_channels_last


def propagate(
    graph: FxGraph,
    forward: ForwardPass,
    start: Mapping[fx.Node, Tensor],
    masks: Mapping[fx.Node, Tensor] | None = None,
    record: Sequence[fx.Node] = (),
    stop: frozenset[fx.Node] = frozenset(),
) -> tuple[Tensor, dict[fx.Node, Tensor]]:
    """Propagate relevance batches from ``start`` nodes down to the input.

    Parameters
    ----------
    graph : FxGraph
        The engine's graph (node order).
    forward : ForwardPass
        The prepared rules.
    start : mapping node -> Tensor
        Relevance at these nodes' outputs, each of shape ``(B, *activation.shape[1:])`` in the
        node's layout (:meth:`FxGraph.node_layout`).
    masks : mapping node -> Tensor, optional
        Multiplied onto the relevance at these nodes (broadcast to ``(B, ...)``).
    record : sequence of nodes
        Nodes whose (masked) relevance is returned.
    stop : set of nodes
        Relevance that reaches these nodes is returned in ``recorded`` and not propagated
        further (:meth:`FxGraph.fine_nodes`).

    Returns
    -------
    input_relevance : Tensor
        Shape ``(B, C, H, W)`` (zeros where everything stopped above the input).
    recorded : dict
        Node -> relevance, for the nodes in ``record`` and ``stop`` that relevance reached.
    """
    pending: dict[fx.Node, Tensor] = dict(start)
    wanted = set(record)
    recorded: dict[fx.Node, Tensor] = {}
    batch = next(iter(start.values())).shape[0]
    first = max(graph.index[node] for node in start)
    result: Tensor | None = None
    for node in reversed(graph.nodes[: first + 1]):
        rel = pending.pop(node, None)
        if rel is None:
            continue
        if masks is not None and node in masks:
            rel = rel * masks[node]
        if node in wanted or node in stop:
            recorded[node] = rel
        if node in stop:
            continue
        if node.op == "placeholder":
            result = rel
            continue
        _backward_into(forward, node, rel, pending)
    if result is None:
        result = forward.input.new_zeros((batch, *forward.input.shape[1:]))
    return result, recorded


def absorbing_nodes(forward: ForwardPass) -> list[fx.Node]:
    """The nodes whose rule keeps a share of the relevance on a constant (a class token's ``cat``, a token
    LayerNorm's bias): those with an ``absorbed`` method that answers."""
    return [node for node, rule in forward.rules.items() if hasattr(rule, "absorbed")
            and not (isinstance(rule, R.CatRule) and None not in rule.pieces)]


def absorbed_relevance(forward: ForwardPass, recorded: Mapping[fx.Node, Tensor], batch: int) -> Tensor:
    """``(batch,)`` float64: the relevance that the recorded :func:`absorbing_nodes` kept on constants."""
    total = torch.zeros(batch, dtype=torch.float64, device=forward.input.device)
    for node, rel in recorded.items():
        share = getattr(forward.rules[node], "absorbed", None)
        if share is None:
            continue
        rows = _pass_rows(forward, node, rel)
        blocks = [share(block) for block in torch.split(rel, rows)] if rows else [share(rel)]
        if any(kept is None for kept in blocks):
            continue
        kept = torch.cat(blocks)  # inside folded windows a relevance row spans several rows of the pass
        total += kept.to(total.device).reshape(batch, -1).sum(1)
    return total


def _pass_rows(forward: ForwardPass, node: fx.Node, rel: Tensor) -> int:
    """The pass's rows per relevance row at ``node`` where the pass folded windows into its batch (Swin:
    the relevance carries a block of them per row), else 0."""
    shape = forward.shapes.get(node)
    rows = int(shape[0]) if shape is not None and len(shape) else 1
    return rows if rows > 1 and rel.shape[0] != rows and rel.shape[0] % rows == 0 else 0


def _backward_into(forward: ForwardPass, node: fx.Node, rel: Tensor, pending: dict[fx.Node, Tensor]) -> None:
    """One rule's backward step: ``rel`` at ``node``'s output added to its inputs' pending relevance."""
    rule = forward.rules.get(node)
    if rule is None:
        raise UnsupportedModelError(f"relevance reached node '{node.name}' which has no LRP rule")
    rows = _pass_rows(forward, node, rel)
    if rows:
        # the pass folded windows into its batch (Swin): `rows` forward rows per relevance row; each
        # relevance row's block of rows goes through the rule as the pass's own batch
        outputs: dict[fx.Node, list[Tensor]] = {}
        for block in torch.split(rel, rows):
            summed: dict[fx.Node, Tensor] = {}
            for inp, part in rule.backward(block):  # an input listed twice (x + x) is summed within the block
                summed[inp] = part if inp not in summed else summed[inp] + part
            for inp, part in summed.items():
                outputs.setdefault(inp, []).append(part)
        parts = [(inp, torch.cat(chunks)) for inp, chunks in outputs.items()]
    else:
        parts = rule.backward(rel)
    for inp, rel_in in parts:
        previous = pending.get(inp)
        pending[inp] = rel_in if previous is None else previous + rel_in


def propagate_absorbing(
    graph: FxGraph,
    forward: ForwardPass,
    start: Mapping[fx.Node, Tensor],
    absorb: Mapping[fx.Node, Tensor],
) -> tuple[Tensor, dict[fx.Node, Tensor]]:
    """Propagate relevance from ``start`` down, absorbing what *arrives* at marked channels.

    At each node of ``absorb`` the relevance arriving from above is split: the part on the
    marked channels (``absorb[node]``, a 0/1 tensor with one value per channel, in the node's
    layout: ``(1, C, 1, 1)``, ``(1, 1, 1, C)``, ``(1, 1, C)`` for tokens or ``(1, C)``) is summed per channel and not
    propagated further; the rest goes on, together with the node's own ``start`` (which is never
    absorbed at its own node). :meth:`CRPEngine.absorbing_flows` builds concept-to-concept flows on it.

    Returns
    -------
    input_relevance : Tensor
        ``(B, C, H, W)``: relevance that reached the input without meeting a marked channel.
    absorbed : dict
        Node -> ``(B, channels)`` relevance absorbed at each marked channel of that node.
    """
    pending: dict[fx.Node, Tensor] = {}
    starts = dict(start)
    absorbed: dict[fx.Node, Tensor] = {}
    batch = next(iter(start.values())).shape[0]
    first = max(graph.index[node] for node in start)
    result: Tensor | None = None
    for node in reversed(graph.nodes[: first + 1]):
        arrival = pending.pop(node, None)
        own = starts.pop(node, None)
        if arrival is None and own is None:
            continue
        if arrival is not None and node in absorb:
            mask = absorb[node]
            if arrival.ndim == 4:
                dims = (1, 2) if is_channels_last(forward.rules.get(node)) else (2, 3)
                absorbed[node] = arrival.sum(dims) * mask.reshape(1, -1)
            elif arrival.ndim == 3:  # a token sequence (B, N, C)
                absorbed[node] = arrival.sum(1) * mask.reshape(1, -1)
            else:
                absorbed[node] = (arrival * mask).reshape(batch, -1)
            arrival = arrival * (1 - mask)
        rel = own if arrival is None else arrival if own is None else arrival + own
        assert rel is not None
        if node.op == "placeholder":
            result = rel
            continue
        _backward_into(forward, node, rel, pending)
    if result is None:
        result = forward.input.new_zeros((batch, *forward.input.shape[1:]))
    return result, absorbed


def first_passage(
    graph: FxGraph,
    forward: ForwardPass,
    chunks: Iterable[tuple[int, dict[fx.Node, Tensor]]],
    owner: Mapping[fx.Node, np.ndarray],
    k: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """First-passage relevance between ``k`` groups (:meth:`CRPEngine.absorbing_flows`).

    Parameters
    ----------
    chunks : iterable of (first row, start)
        Rows ``first, first + 1, ...`` of the groups, started at their nodes: node -> channels-first
        ``(rows, C, h, w)`` (:meth:`CRPEngine._group_starts`).
    owner : mapping node -> np.ndarray
        The group of each channel of the node, ``(C,)`` int64 (-1: none); its channels absorb.
    k : int
        Number of groups.

    Returns
    -------
    absorbed, to_input, start, input_maps : Tensor
        float64 ``(k, k)``, ``(k,)``, ``(k,)`` and ``(k, H, W)`` in the pass's type (:class:`AbsorbedFlows`).
    """
    work = forward.input.dtype
    absorb = {}
    for node, who in owner.items():
        extra = len(forward.shapes[node]) - 2
        mask = torch.as_tensor(who >= 0, dtype=work, device=forward.input.device).reshape(1, -1, *([1] * extra))
        absorb[node] = graph.node_layout(forward, node, mask)
    absorbed = np.zeros((k, k))
    to_input = np.zeros(k)
    starts_total = np.zeros(k)
    input_maps = forward.input.new_zeros((k, *forward.input.shape[-2:]))
    for first, start in chunks:
        if not start:
            continue
        rows = slice(first, first + next(iter(start.values())).shape[0])
        for rel in start.values():
            starts_total[rows] += rel.double().flatten(1).sum(1).cpu().numpy()
        start = {node: graph.node_layout(forward, node, rel) for node, rel in start.items()}
        input_rel, taken = propagate_absorbing(graph, forward, start, absorb)
        to_input[rows] = input_rel.double().flatten(1).sum(1).cpu().numpy()
        input_maps[rows] = input_rel.sum(1)
        for node, who in owner.items():
            if node not in taken:
                continue
            per_channel = taken[node].double().cpu().numpy()  # (rows, channels)
            member = who >= 0
            for row in range(per_channel.shape[0]):
                absorbed[first + row] += np.bincount(who[member], weights=per_channel[row, member], minlength=k)
    return torch.from_numpy(absorbed), torch.from_numpy(to_input), torch.from_numpy(starts_total), input_maps


def pool_stopped(forward: ForwardPass, input_rel: Tensor, stopped: Mapping[fx.Node, Tensor],
                  size: tuple[int, int]) -> Tensor:
    """``(B, *size)``: stopped relevance summed over channels, pooled to ``size`` and scaled
    by its cells' share of the input area (an average pooling of the input-level map)."""
    height, width = forward.input.shape[-2:]
    if any(node.op == "placeholder" for node in stopped):  # input_rel is then all zeros
        out = input_rel.new_zeros((input_rel.shape[0], *size))
    else:
        out = F.adaptive_avg_pool2d(input_rel.sum(1, keepdim=True), size)[:, 0]
    for rel in stopped.values():
        h, w = rel.shape[-2:]
        pooled = F.adaptive_avg_pool2d(rel.sum(1, keepdim=True), size)[:, 0]
        out += pooled * (h * w / (height * width))
    return out


def channel_indices(layer: str, channels: Sequence[int], n_channels: int) -> Tensor:
    """Channel indices as a long tensor, checked against the layer's channel count."""
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_channels):
        raise InputError(f"channel index out of range for layer {layer!r} with {n_channels} channels")
    return idx
