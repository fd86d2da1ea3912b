"""The concept graph of an explanation drawn as inline SVG: deep concepts on top, what they are made of below.

A node is a concept, placed in a row by its depth (the relevance-weighted mean network stage of
its members, in half-stage steps; deepest on top), sized by its share and coloured as in the
overview; an edge ``C -> D`` is drawn for every flow ``flow(C <- D) >= EDGE_SHARE`` ("C is made of
D", :mod:`conceptree.concepts.flows`) of a concept with positive relevance, labelled with its share from ``LABEL_SHARE`` on, from the bottom of ``C`` to the top
of ``D``, its width growing with the share times the source node's relative size. Within a row, concepts are ordered by the mean position of the concepts they connect to
(two barycentre sweeps), so that edges cross less. Plain SVG strings: no pyplot, no scripts.
"""

from __future__ import annotations

import html

import numpy as np

from ..concepts.flows import EDGE_SHARE, ConceptFlows
from .colours import concept_colours, hex_colour, text_colour

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


#: horizontal room of one sub-concept in the hierarchy drawing (its label fits inside).
SUB_SLOT = 40


def hierarchy_svg(explanation, *, threshold: float = EDGE_SHARE, min_width: int = 980) -> str:
    """The explanation's hierarchy as an ``<svg>`` string ("" without a top level).

    Three rows: the top-level concepts (coloured as in the overview, sized by share), their
    sub-concepts beneath each (one slot of :data:`SUB_SLOT` px each, so labels never meet), and
    under every sub-concept a bar of its members per network stage (shallow at the bottom). The
    flows between top-level concepts (``explanation.top_flows``, edges from ``threshold``) are an
    overlay in a group of class ``flows``, hidden until the page's switch shows it; their
    shares are tooltips, not labels. Every node links to its card.
    """
    concepts = explanation.concepts
    top = concepts.top_level
    if not top:
        return ""
    esc = html.escape
    subs = {c.rank: c for c in concepts.concepts}
    colours = concept_colours(len(top))
    stages = explanation.stages()
    stage_of = {layer: i for i, names in enumerate(stages) for layer in names}
    slots = [max(len(t.children), 2) for t in top]  # two slots at least: top-level nodes never touch
    gutter = 100  # the row names
    width = max(min_width, gutter + MARGIN + SUB_SLOT * sum(slots))
    scale = (width - gutter - MARGIN) / (SUB_SLOT * sum(slots))
    y_top, y_sub, y_bar, bar_h = 110, 206, 236, 60
    height = y_bar + bar_h + 40
    largest = max(max(t.share for t in top), 1e-12)
    out = ["<style>.hier text{font:11px sans-serif}.hier .lbl{paint-order:stroke;stroke:#fff;stroke-width:3px}"
           ".hier .flows{display:none}.hier .axis{fill:#777;font-size:10px}</style>"]
    centres = {}
    left = float(gutter)
    for t, slot in zip(top, slots):
        span = SUB_SLOT * slot * scale
        centres[t.rank] = left + span / 2
        kids = [subs[r] for r in t.children if r in subs]
        for j, sub in enumerate(kids):
            x = left + (j + 0.5) * span / len(kids)
            colour = hex_colour(colours[t.rank - 1])
            out.append(f"<line x1='{centres[t.rank]:.1f}' y1='{y_top + 24}' x2='{x:.1f}' y2='{y_sub - 12}' stroke='{colour}' "
                       "stroke-opacity='0.6'/>")
            counts = np.zeros(len(stages))
            for layer, n in sub.layer_histogram.items():
                counts[stage_of.get(layer, 0)] += n
            total = max(counts.sum(), 1.0)
            y = y_bar + bar_h
            for s, n in enumerate(counts):  # shallow stages at the bottom
                h = bar_h * n / total
                if h > 0:
                    y -= h
                    out.append(f"<rect x='{x - 7:.1f}' y='{y:.1f}' width='14' height='{h:.1f}' "
                               f"fill='{_STAGE_SHADES[min(s, len(_STAGE_SHADES) - 1)]}'><title>#{sub.rank}: stage {s + 1}, "
                               f"{int(n)} neurons</title></rect>")
            r = 6 + 8 * np.sqrt(max(sub.share, 0.0) / largest)
            tip = (f"#{sub.rank} in T{t.rank}: share {100 * sub.share:.1f}%, {sub.size} neurons, "
                   f"{len(sub.layer_histogram)} layers")
            out.append(f"<a href='#concept-{sub.rank}'><title>{esc(tip)}</title><circle cx='{x:.1f}' cy='{y_sub}' r='{r:.1f}' "
                       f"fill='{colour}' fill-opacity='0.55' stroke='#333' stroke-width='0.6'/>"
                       f"<text x='{x:.1f}' y='{y_sub + 4}' text-anchor='middle'>{sub.rank}</text></a>")
        left += span
    flow_parts = []
    flows = explanation.top_flows
    if flows is not None:
        for c in range(len(top)):
            if not flows.defined[c]:
                continue
            for d in range(len(top)):
                share = float(flows.flows[c, d])
                if c == d or share < threshold:
                    continue
                x1, x2 = centres[top[c].rank], centres[top[d].rank]
                lift = min(14 + 0.08 * abs(x2 - x1), 74) + (8 if c > d else 0)  # two directions: two arcs
                colour = hex_colour(colours[c])
                flow_parts.append(
                    f"<path d='M{x1:.1f},{y_top - 20} Q{(x1 + x2) / 2:.1f},{y_top - 20 - lift:.1f} {x2:.1f},{y_top - 20}' "
                    f"fill='none' stroke='{colour}' stroke-opacity='0.8' stroke-width='{1 + 9 * min(share, 1.0):.1f}' "
                    f"marker-end='url(#arrow)'><title>T{top[c].rank} is made of T{top[d].rank}: {100 * share:.0f}% of its "
                    "relevance</title></path>")
    out.append("<defs><marker id='arrow' viewBox='0 0 10 10' refX='8' refY='5' markerWidth='5' markerHeight='5' "
               "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='#555'/></marker></defs>")
    out.append("<g class='flows'>" + "".join(flow_parts) + "</g>")
    for t in top:
        x = centres[t.rank]
        colour = colours[t.rank - 1]
        r = 12 + 12 * np.sqrt(max(t.share, 0.0) / largest)
        ident = f" · node {t.concept_id}" if t.concept_id is not None else ""
        tip = f"T{t.rank}: share {100 * t.share:.1f}%, {t.size} neurons, {len(t.children)} sub-concepts{ident}"
        out.append(f"<a href='#top-{t.rank}'><title>{esc(tip)}</title><circle cx='{x:.1f}' cy='{y_top}' r='{r:.1f}' "
                   f"fill='{hex_colour(colour)}' stroke='#333'/><text x='{x:.1f}' y='{y_top + 4}' text-anchor='middle' "
                   f"font-weight='bold' fill='{text_colour(colour)}'>T{t.rank}</text></a>"
                   f"<text class='lbl' x='{x:.1f}' y='{y_top + r + 14:.1f}' text-anchor='middle'>{100 * t.share:.0f}%</text>")
    out.append(f"<text class='axis' x='4' y='{y_top + 4}'>top level</text>"
               f"<text class='axis' x='4' y='{y_sub + 4}'>sub-concepts</text>"
               f"<text class='axis' x='4' y='{y_bar + bar_h / 2:.0f}'>layers</text>"
               f"<text class='axis' x='4' y='{y_bar + bar_h + 14}'>(stage bars: shallow at the bottom)</text>")
    head = (f"<svg class='hier' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
            "aria-label='concept hierarchy'>")
    return head + "".join(out) + "</svg>"


_STAGE_SHADES = ["#c6dbef", "#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b", "#041a3a"]
