"""The concept graph of an explanation drawn as inline SVG: deep concepts on top, what they are made of below.

A node is a concept, placed in a row by its depth (the relevance-weighted mean network stage of
its members, in half-stage steps; deepest on top), sized by its share and coloured as in the
overview; an edge ``C -> D`` is drawn for every flow ``flow(C <- D) >= EDGE_SHARE`` ("C is made of
D", :mod:`conceptree.concepts.graph`) of a concept with positive relevance, labelled with its share from ``LABEL_SHARE`` on, from the bottom of ``C`` to the top
of ``D``, its width growing with the share times the source node's relative size. Within a row, concepts are ordered by the mean position of the concepts they connect to
(two barycentre sweeps), so that edges cross less. Plain SVG strings: no pyplot, no scripts.
"""

from __future__ import annotations

import html

import numpy as np

from .colours import concept_colours, hex_colour, text_colour
from .concepts.graph import EDGE_SHARE, ConceptFlows

ROW_HEIGHT = 92
MARGIN = 36
#: edges at least this large carry their share as a label (all edges have it as a tooltip).
LABEL_SHARE = 0.10


def concept_depths(concepts, stages: list[list[str]]) -> np.ndarray:
    """``(k,)`` relevance-weighted (``|r_p|``) mean stage of each concept's members, 1 = shallowest."""
    stage_of = {layer: i + 1 for i, names in enumerate(stages) for layer in names}
    depths = np.zeros(len(concepts))
    for c, concept in enumerate(concepts):
        weights = np.array([abs(n.relevance) for n in concept.neurons])
        levels = np.array([stage_of.get(n.layer, 1) for n in concept.neurons], float)
        depths[c] = float((weights * levels).sum() / weights.sum()) if weights.sum() > 0 else float(levels.mean())
    return depths


def _order_rows(rows: dict[float, list[int]], edges: list[tuple[int, int, float]], sweeps: int = 2) -> dict[float, list[int]]:
    """Barycentre ordering: each row's concepts sorted by the mean slot of their neighbours in the row above."""
    neighbours: dict[int, list[int]] = {}
    for c, d, _ in edges:
        neighbours.setdefault(c, []).append(d)
        neighbours.setdefault(d, []).append(c)
    keys = sorted(rows, reverse=True)  # deep first
    order = {key: list(rows[key]) for key in keys}
    slot = {c: (i + 0.5) / len(order[key]) for key in keys for i, c in enumerate(order[key])}

    def centre(c: int) -> float:
        near = [slot[n] for n in neighbours.get(c, [])]
        return float(np.mean(near)) if near else slot[c]

    for _ in range(sweeps):
        for sequence in (keys, keys[::-1]):
            for key in sequence[1:]:
                order[key] = sorted(order[key], key=lambda c: (centre(c), slot[c]))
                slot.update({c: (i + 0.5) / len(order[key]) for i, c in enumerate(order[key])})
    return order


def graph_svg(explanation, *, threshold: float = EDGE_SHARE, width: int = 980) -> str:
    """The layered concept graph of ``explanation`` as an ``<svg>`` string ("" without flows).

    Nodes link to the concept cards (``#concept-RANK``); every node and edge has a tooltip.
    """
    flows: ConceptFlows | None = explanation.flows
    concepts = explanation.concepts.concepts
    if flows is None or not concepts:
        return ""
    esc = html.escape
    k = len(concepts)
    colours = concept_colours(k)
    depths = concept_depths(concepts, explanation.stages())
    level = np.round(depths * 2) / 2
    rows: dict[float, list[int]] = {}
    for c in range(k):
        rows.setdefault(float(level[c]), []).append(c)
    edges = [(c, d, float(flows.flows[c, d])) for c in range(k) for d in range(k)
             if c != d and flows.defined[c] and flows.flows[c, d] >= threshold]
    order = _order_rows(rows, edges)
    keys = sorted(order, reverse=True)
    largest = max(max(c.share for c in concepts), 1e-12)
    radius = np.array([9 + 19 * np.sqrt(max(c.share, 0.0) / largest) for c in concepts])
    pos = np.zeros((k, 2))
    for row, key in enumerate(keys):
        members = order[key]
        for i, c in enumerate(members):
            pos[c] = (MARGIN + 60 + (width - 2 * MARGIN - 60) * (i + 0.5) / len(members), MARGIN + row * ROW_HEIGHT + 24)
    height = int(MARGIN + (len(keys) - 1) * ROW_HEIGHT + 24 + 40 + MARGIN)
    names = [None] * k
    if explanation.references is not None:
        names = [refs.name for refs in explanation.references]
    fragile = [c.stability_label == "fragile" for c in concepts]

    out = ["<style>.graph text{font:11px sans-serif}.graph .share{font-size:10px;fill:#333;paint-order:stroke;"
           "stroke:#fff;stroke-width:3px}.graph .stage{fill:#777;font-size:10px}.graph .name{paint-order:stroke;stroke:#fff;"
           "stroke-width:3px}</style>"]
    for row, key in enumerate(keys):
        y = MARGIN + row * ROW_HEIGHT + 24
        out.append(f"<line x1='{MARGIN}' y1='{y}' x2='{width - MARGIN}' y2='{y}' stroke='#eee'/>"
                   f"<text class='stage' x='{MARGIN - 30}' y='{y + 4}'>stage {key:g}</text>")
    labels = []
    for c, d, share in sorted(edges, key=lambda e: e[2]):
        (x1, y1), (x2, y2) = pos[c], pos[d]
        y1, y2 = (y1 + radius[c], y2 - radius[d]) if y2 > y1 + 1 else (y1 + radius[c], y2 + radius[d])
        same_row = abs(pos[c][1] - pos[d][1]) <= 1
        bend = 10.0 + 0.12 * abs(x2 - x1) if same_row else 0.0  # same row: an arc below, deeper for far nodes
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2 + bend
        colour = hex_colour(colours[c])
        # width and opacity: the share, damped for small concepts (a 0.2 % concept's 70 % edge
        # carries little relevance) by the source node's size relative to the largest
        weight = min(share, 1.0) * radius[c] / radius.max()
        out.append(f"<path d='M{x1:.1f},{y1:.1f} Q{mx:.1f},{my + bend:.1f} {x2:.1f},{y2:.1f}' fill='none' "
                   f"stroke='{colour}' stroke-opacity='{0.35 + 0.65 * weight:.2f}' stroke-width='{1 + 10 * weight:.1f}'>"
                   f"<title>#{concepts[c].rank} is made of #{concepts[d].rank}: {100 * share:.0f}% of its relevance"
                   "</title></path>")
        t = 0.5 if same_row else 0.62  # label nearer the lower end, where edges fan out
        height = max(height, int(0.25 * y1 + 0.5 * (my + bend) + 0.25 * y2 + MARGIN))  # the arc's lowest point
        lx = (1 - t) ** 2 * x1 + 2 * (1 - t) * t * mx + t * t * x2
        ly = (1 - t) ** 2 * y1 + 2 * (1 - t) * t * (my + bend) + t * t * y2
        if share >= LABEL_SHARE:
            labels.append(f"<text class='share' x='{lx:.1f}' y='{ly:.1f}' text-anchor='middle'>{100 * share:.0f}%</text>")
    out.extend(labels)
    for c, concept in enumerate(concepts):
        x, y = pos[c]
        colour = colours[c]
        made = (", ".join(f"#{concepts[d].rank} {100 * s:.0f}%" for d, s in flows.made_of(c, threshold)) or "no concept ≥ 5%"
                if flows.defined[c] else "not defined (no positive relevance)")
        name = f" ({names[c]})" if names[c] else ""
        tip = f"#{concept.rank}{name}: share {100 * concept.share:.1f}%, mean stage {depths[c]:.1f}; made of {made}"
        if flows.defined[c]:
            tip += (f"; own lower members {100 * flows.self_share[c]:.0f}%, no concept (to the input) "
                    f"{100 * flows.to_input[c]:.0f}%")
        opacity = " opacity='0.55'" if fragile[c] else ""
        out.append(f"<a href='#concept-{concept.rank}'{opacity}><title>{esc(tip)}</title>"
                   f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{radius[c]:.1f}' fill='{hex_colour(colour)}' stroke='#333' "
                   f"stroke-width='0.8'/><text x='{x:.1f}' y='{y + 4:.1f}' text-anchor='middle' "
                   f"fill='{text_colour(colour)}' font-weight='bold'>{concept.rank}</text>")
        if names[c]:
            short = names[c] if len(names[c]) <= 22 else names[c][:21] + "…"
            out.append(f"<text class='name' x='{x:.1f}' y='{y + radius[c] + 12:.1f}' text-anchor='middle'>{esc(short)}</text>")
        out.append("</a>")
    # inline in HTML5 an <svg> needs no namespace (and the report names no URL at all)
    head = (f"<svg class='graph' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label='concept graph'>")
    return head + "".join(out) + "</svg>"
