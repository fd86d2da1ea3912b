"""The self-contained HTML report of an explanation (its pictures: :mod:`conceptree.render.pictures`).

The page reads top-down: the prediction and top-5, the class heatmap and an overview of the
photo coloured by which concept carries the most positive relevance at each place; then one
card per concept, larger for larger shares, with its map (a diverging colormap symmetric
around zero over the photo in full colour), the photo masked to the concept's most relevant
region, its share and size, a depth bar (members per network stage), thumbnails of its most
relevant members' maps, and the full neuron list behind a click; then the dendrogram with its
cut and the silhouette curve.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..concepts.flows import EDGE_SHARE
from .colours import concept_colours, hex_colour, text_colour
from .flows_svg import graph_svg, hierarchy_svg
from .page import page_head
from .pictures import (  # noqa: F401  (the picture helpers stay importable from here, as before the split)
    REGION_MASS,
    SIGNED_CMAP,
    _figure_uri,
    _thumb,
    concept_grid,
    concept_overview,
    dendrogram_figure,
    image_data_uri,
    masked_photo,
    region_mask,
    signed_overlay,
    silhouette_figure,
)

_STYLE = """
.top{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}
.panel{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px}
.panel img{width:300px;display:block}.panel figcaption{font-size:12px;color:#444;margin-top:4px;max-width:300px}
table{border-collapse:collapse;font-size:12px}.top5{margin-top:8px;width:300px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.legend{display:flex;flex-wrap:wrap;gap:4px;max-width:300px;margin-top:6px}
.legend a{font-size:11px;color:#222;text-decoration:none;padding:1px 5px;border-radius:3px}
.cards{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.card{background:#fff;border:1px solid #ccc;border-radius:8px;padding:10px;box-sizing:border-box}
.card h3{font-size:15px;margin:0 0 4px;display:flex;align-items:center;gap:6px}
.chip{width:14px;height:14px;border-radius:3px;display:inline-block;border:1px solid #0003}
.pair{display:flex;gap:6px}.pair figure{margin:0;flex:1 1 0;min-width:0}.pair img{width:100%;display:block}
.pair figcaption{font-size:11px;color:#555}
.depth{display:flex;height:12px;border-radius:3px;overflow:hidden;margin:6px 0 2px;background:#eee}
.depth span{display:block;height:100%}
.thumbs{display:flex;gap:4px;margin-top:6px}.thumbs figure{margin:0;flex:1 1 0;min-width:0}.thumbs img{width:100%;display:block}
.thumbs figcaption{font-size:10px;color:#555;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
details{font-size:12px;margin-top:6px}summary{cursor:pointer;color:#245}
.refs{display:flex;gap:4px;margin-top:6px;flex-wrap:wrap}.refs figure{margin:0;width:calc(12.5% - 4px);min-width:52px}
.refs img{width:100%;aspect-ratio:1;object-fit:cover;display:block;border-radius:2px}
.refs figcaption{font-size:10px;color:#555;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.name{font-size:13px;margin-top:6px}.name b{color:#222}
.stab{font-weight:bold}.stab.stable{color:#1a7f37}.stab.weak{color:#9a6700}.stab.fragile{color:#b2182b}
.flows{font-size:12px;margin:4px 0}.flows a{text-decoration:none}.graphbox{overflow-x:auto}
.card.fragile{opacity:.72}.legend a.fragile{opacity:.45}
.scale{font-size:11px;color:#555}.scale b{color:#b2182b}.scale i{color:#2166ac;font-style:normal;font-weight:bold}
.card.toplevel{border-width:3px}.overlap{font-size:12px;color:#9a6700;margin-top:6px}
.strip{display:flex;gap:4px;margin-top:8px;flex-wrap:wrap}.strip a{text-decoration:none;color:#222}
.strip figure{margin:0;width:96px}.strip img{width:96px;display:block;border-radius:2px}
.strip figcaption{font-size:10px;color:#555}details.subs>summary{font-size:13px;margin-top:6px}
#showflows:checked~.graphbox .flows{display:inline}
"""

_STAGE_COLOURS = ["#c6dbef", "#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b", "#041a3a"]


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%" if abs(share) >= 0.01 else f"{100 * share:.1f}%"


def _card_width(share: float, largest: float) -> int:
    """Card width in px: 330 for the smallest shares up to 720 for the largest (by sqrt of share)."""
    ratio = np.sqrt(max(share, 0.0) / largest) if largest > 0 else 0.0
    return int(round(330 + 390 * ratio))


def stage_counts(concept, stages: list[list[str]]) -> np.ndarray:
    """``(len(stages),)`` the concept's members per network stage (``Explanation.stages()``)."""
    stage_of = {layer: i for i, names in enumerate(stages) for layer in names}
    counts = np.zeros(len(stages), int)
    for layer, n in concept.layer_histogram.items():
        if layer in stage_of:
            counts[stage_of[layer]] += n
    return counts


def _depth_bar(concept, stages: list[list[str]], layer_sizes: dict) -> tuple[str, str]:
    """The members-per-stage bar and its caption."""
    counts = stage_counts(concept, stages)
    total = max(int(counts.sum()), 1)
    segments = []
    for i, n in enumerate(counts):
        if n == 0:
            continue
        size = layer_sizes.get(stages[i][0])
        res = f"{size[0]}×{size[1]}" if size else "?"
        colour = _STAGE_COLOURS[min(i, len(_STAGE_COLOURS) - 1)]
        segments.append(f"<span style='width:{100 * n / total:.2f}%;background:{colour}' "
                        f"title='stage {i + 1} ({res}): {n} neurons'></span>")
    mean_depth = float((counts * np.arange(1, len(stages) + 1)).sum() / total)
    caption = (f"depth: {' · '.join(f'S{i + 1} {n}' for i, n in enumerate(counts) if n)} "
               f"(mean stage {mean_depth:.1f} of {len(stages)})")
    return "<div class='depth'>" + "".join(segments) + "</div>", caption


def _references_html(refs) -> str:
    """The card's row "elsewhere this concept is strongest on" and its suggested name."""
    esc = html.escape
    if refs is None:
        return ""
    figures = []
    for j, ref in enumerate(refs.references):
        if ref.crop is None or not ref.crop.size:
            continue
        words = ", ".join(w for w in (ref.part if ref.part != "none" else None, ref.colour) if w)
        title = f"{ref.file} · score {ref.score:.3f}" + (f" · {words}" if words else "")
        figures.append(f"<figure title='{esc(title)}'><img alt='reference {j + 1}' src='{image_data_uri(ref.crop)}'>"
                       f"<figcaption>{esc(ref.class_name or '?')}</figcaption></figure>")
    ev = refs.evidence
    facts = []
    for key in ("part", "colour"):
        word = ev.get(key)
        if word:
            facts.append(f"{key} <b>{esc(word['word'])}</b> on {100 * word['fraction']:.0f}% of them "
                         f"(chance {100 * word['chance']:.0f}%)")
    top = (ev.get("classes") or [None])[0]
    if top:
        facts.append(f"{top['count']}/{ev['n']} <b>{esc(str(top['class']))}</b> "
                     f"({100 * top['share_of_set']:.1f}% of the index)")
    test = ev.get("specificity")
    described = "what the references show (untested): " if test is not None and facts else ""
    if test is not None:  # the name only where the concept shows more than random groups of its layers
        best = next((f for f in test["families"] if f["family"] == test["family"]), None)
        against = f"p = {test['p_value']:.2f} against {test['n_random']} random groups of its layers"
        if refs.name and best and best["statistic"] is not None:
            what, than = (("of its references are", "of the index") if best["family"] == "class"
                          else ("of its map on", "the model's own relevance"))
            name = (f"name: <b>{esc(refs.name)}</b> <span class='meta'>({best['family']}: "
                    f"{100 * best['statistic']:+.0f} points more {what} <i>{esc(str(best['word']))}</i> than {than}, "
                    f"random groups {100 * (best['random_mean'] or 0.0):+.0f}; {against})</span>")
        else:
            name = f"no consistent part, colour or class <span class='meta'>({against})</span>"
    else:
        name = (f"suggested name: <b>{esc(refs.name)}</b>" if refs.name else "no name beats chance")
    return (f"<div class='meta'>elsewhere this concept is strongest on (reference index, its region cropped):</div>"
            f"<div class='refs'>{''.join(figures)}</div>"
            f"<div class='name'>{name} <span class='meta'>· {described}{' · '.join(facts)}</span></div>")


def _id_label(concept, node: bool = False) -> str:
    """`` · D12`` for a concept of a dictionary (its id on every image), `` · node 3401`` for a node of
    a dictionary's model-level tree (``node``), else nothing."""
    if concept.concept_id is None:
        return ""
    if node:
        return (f" <span class='meta' title='node of the model-level tree: the same neurons on every image'>· node "
                f"{concept.concept_id}</span>")
    return f" <span class='meta' title='concept id in the model&#39;s dictionary'>· D{concept.concept_id}</span>"


def _stability_html(concept) -> str:
    """`` · stable 0.91`` (or weak / fragile) for a concept whose stability was scored, else nothing."""
    if concept.stability is None:
        return ""
    label = concept.stability_label
    return (f" · <span class='stab {label}' title='share of its neurons clustered together again when part of "
            f"the neurons are left out (Hennig&#39;s Jaccard; stable &ge; 0.75, fragile &le; 0.5)'>"
            f"{label} {concept.stability:.2f}</span>")


def _flows_html(flows, concepts, c: int) -> str:
    """The card's "made of: #11 34% · …" and "feeds: …" lines, as links to the other cards."""
    if flows is None:
        return ""

    def links(pairs) -> str:
        return " · ".join(f"<a href='#concept-{concepts[d].rank}'>#{concepts[d].rank}</a> {_pct(s)}" for d, s in pairs)

    made, feeds = flows.made_of(c), flows.feeds(c)
    feeds_line = f"<br><b>feeds</b>: {links(feeds) or 'no concept &ge; 5%'}</div>"
    if not flows.defined[c]:
        return ("<div class='flows'><b>made of</b>: <span class='meta'>not defined: its members' relevance sums to "
                f"zero or below, so shares of it are not proportions</span>{feeds_line}")
    rest = (f"own lower members {_pct(flows.self_share[c])}, through no concept to the input "
            f"{_pct(flows.to_input[c])}")
    return (f"<div class='flows'><b>made of</b>: {links(made) or 'no concept &ge; 5%'} "
            f"<span class='meta'>({rest})</span>{feeds_line}")


def _source_line(concepts, n_neurons: int) -> str:
    """Where the concepts come from: clustered on this image, or read from a dictionary."""
    info = concepts.dictionary
    if not info:
        return f"{concepts.k} concepts from {n_neurons:,} neurons"
    rule = info.get("rule", {})
    listed = (f"the {concepts.k} strongest" if "k" in rule else
              f"the {concepts.k} strongest, holding {100 * info.get('listed_share', 0):.0f}% of the relevance "
              f"(the fewest reaching {100 * rule.get('share', 0):.0f}%, at most {rule.get('cap')})")
    return (f"{listed} of the {info.get('k')} concepts of the model's dictionary "
            f"({html.escape(str(info.get('path') or 'in memory'))}; same ids D0… on every image, no clustering), "
            f"{n_neurons:,} member neurons")


def _card_html(explanation, i: int, concept, cmap: np.ndarray, colour: np.ndarray, width: int, fragile: bool,
               references, flows_html: str, id_label: str) -> str:
    """One concept's card: map, region, references, flows, depth, member thumbnails, neuron list."""
    esc = html.escape
    image = explanation.image
    stages = explanation.stages()
    members = explanation.member_maps
    bar, depth_caption = _depth_bar(concept, stages, explanation.layer_sizes)
    rep = concept.representative
    sign = 1.0 if concept.relevance >= 0 else -1.0  # a negative concept: where it speaks against the class
    thumbs = []
    top_members = sorted(concept.neurons, key=lambda n: -n.relevance)[: members.shape[1] if members.ndim == 4 else 0]
    for j, neuron in enumerate(top_members):
        thumbs.append(f"<figure><img alt='member {j + 1}' src='{image_data_uri(_thumb(image, members[i, j]))}'>"
                      f"<figcaption title='{esc(neuron.layer)}:{neuron.channel}'>{esc(neuron.layer)}:{neuron.channel}"
                      "</figcaption></figure>")
    neurons = "".join(f"<tr><td>{esc(n.layer)}</td><td>{n.channel}</td><td>{n.relevance:.4g}</td></tr>"
                      for n in concept.neurons)
    hist = "".join(f"<tr><td>{esc(layer)}</td><td>{n}</td></tr>" for layer, n in concept.layer_histogram.items())
    return (
        f"<div class='card{' fragile' if fragile else ''}' id='concept-{concept.rank}' style='width:{width}px'>"
        f"<h3><span class='chip' style='background:{hex_colour(colour)}'></span>#{concept.rank}{id_label} "
        f"<span class='meta'>share {100 * concept.share:.1f}% · {concept.size} neurons · "
        f"relevance {concept.relevance:.3g}{_stability_html(concept)}</span></h3>"
        f"<div class='pair'><figure><img alt='concept {concept.rank} map' "
        f"src='{image_data_uri(signed_overlay(image, cmap))}'><figcaption>map</figcaption></figure>"
        f"<figure><img alt='concept {concept.rank} region' src='{image_data_uri(masked_photo(image, sign * cmap))}'>"
        f"<figcaption>most relevant region{'' if sign > 0 else ' (of its negative relevance)'}</figcaption></figure>"
        "</div>"
        f"{_references_html(references)}"
        f"{flows_html}"
        f"{bar}<div class='meta'>{esc(depth_caption)}</div>"
        f"<div class='thumbs'>{''.join(thumbs)}</div>"
        f"<div class='meta'>most relevant members (representative {esc(rep.layer)}:{rep.channel}, "
        f"r = {rep.relevance:.3g})</div>"
        f"<details><summary>layers ({len(concept.layer_histogram)})</summary><table>{hist}</table></details>"
        f"<details><summary>all {concept.size} neurons</summary><table><tr><th>layer</th><th>channel</th>"
        f"<th>relevance</th></tr>{neurons}</table></details></div>"
    )


#: two top-level concepts "overlap heavily" when their most relevant regions have at least this IoU.
OVERLAP_IOU = 0.5


def region_overlaps(maps: np.ndarray) -> np.ndarray:
    """``(t, t)`` IoU of the most relevant regions (:func:`region_mask`) of ``t`` maps."""
    masks = np.stack([region_mask(np.asarray(m, np.float32)) for m in maps]) if len(maps) else np.zeros((0, 1, 1), bool)
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    inter = flat @ flat.T
    sizes = flat.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _top_flows_html(flows, top, t: int) -> str:
    """A top-level card's "made of: T2 34% · …" line (flows between top-level concepts)."""
    if flows is None:
        return ""
    if not flows.defined[t]:
        return ("<div class='flows'><b>made of</b>: <span class='meta'>not defined: its relevance sums to zero or "
                "below</span></div>")
    made = " · ".join(f"<a href='#top-{top[d].rank}'>T{top[d].rank}</a> {_pct(s)}" for d, s in flows.made_of(t))
    rest = f"own lower members {_pct(flows.self_share[t])}, to the input {_pct(flows.to_input[t])}"
    return f"<div class='flows'><b>made of</b>: {made or 'no top-level concept &ge; 5%'} <span class='meta'>({rest})</span></div>"


def _hierarchy_html(explanation, parts: list[str]) -> None:
    """The top level first (cards, sub-concepts behind a click), then the hierarchy drawing."""
    esc = html.escape
    concepts = explanation.concepts
    top = concepts.top_level
    image = explanation.image
    colours = concept_colours(len(top))
    maps = explanation.display_maps if explanation.display_maps is not None else explanation.concept_maps
    top_maps = explanation.top_display_maps if explanation.top_display_maps is not None else explanation.top_maps
    info = concepts.hierarchy or {}
    route = info.get("route", "?")
    where = {"own": "the photo's own Ward tree of its neurons",
             "consensus": "the consensus of the photo's neurons over jittered copies of it",
             "tree": "the model-level concept tree of a dictionary (ids = its nodes, the same neurons on every image)",
             "tree+own": "the model-level concept tree of a dictionary (ids = its nodes, the same neurons on every "
                         "image), with the photo's own clustering below it"}.get(route, route)
    rule = info.get("rule", {})
    overlaps = region_overlaps(top_maps)
    parts.append(
        f"<h2>{len(top)} top-level concepts, largest share first</h2><p class='meta'>The top level comes from {esc(where)}: "
        f"its cut into {rule.get('start', '?')} nodes, a node holding more than {100 * rule.get('dominant', 0):.0f}% of "
        f"the positive relevance split (at most {rule.get('cap', '?')} concepts; docs/results/concise.md). Each opens "
        "into its sub-concepts, and each sub-concept into its neurons. Maps are drawn smoothed (each layer's map "
        "blurred by one of its cells before summing, so that a 7×7 layer reads as a region, not as tiles); the maps "
        "saved and scored are the unsmoothed sums (maps.npz: concept_maps, top_maps). <span class='scale'><b>red</b> "
        "positive, <i>blue</i> negative</span>.</p><div class='cards'>")
    largest = max((c.share for c in top), default=0.0)
    subs = {c.rank: i for i, c in enumerate(concepts.concepts)}
    references = explanation.references or [None] * len(concepts.concepts)
    for t, (concept, cmap, colour) in enumerate(zip(top, top_maps, colours)):
        sign = 1.0 if concept.relevance >= 0 else -1.0
        bar, depth_caption = _depth_bar(concept, explanation.stages(), explanation.layer_sizes)
        heavy = [f"T{top[o].rank} (IoU {overlaps[t, o]:.2f})" for o in range(len(top)) if o != t and overlaps[t, o] >= OVERLAP_IOU]
        overlap = (f"<div class='overlap'>overlaps heavily with {', '.join(heavy)}: their most relevant regions are "
                   "largely the same place</div>" if heavy else "")
        kids = [c for c in concept.children if c in subs]
        strip = "".join(
            f"<a href='#concept-{r}' title='#{r}: share {100 * concepts.concepts[subs[r]].share:.1f}%'><figure>"
            f"<img alt='sub-concept {r}' src='{image_data_uri(_thumb(image, maps[subs[r]], 96))}'>"
            f"<figcaption>#{r} {_pct(concepts.concepts[subs[r]].share)}</figcaption></figure></a>" for r in kids)
        cards = "".join(
            _card_html(explanation, subs[r], concepts.concepts[subs[r]], maps[subs[r]], colour, 330,
                       concepts.concepts[subs[r]].stability_label == "fragile", references[subs[r]],
                       _flows_html(explanation.flows, concepts.concepts, subs[r]), _id_label(concepts.concepts[subs[r]], node=True))
            for r in kids)
        ident = (f" <span class='meta' title='node of the model-level tree: the same neurons on every image'>· node "
                 f"{concept.concept_id}</span>" if concept.concept_id is not None else "")
        parts.append(
            f"<div class='card toplevel' id='top-{concept.rank}' style='width:{_card_width(concept.share, largest)}px;"
            f"border-color:{hex_colour(colour)}'>"
            f"<h3><span class='chip' style='background:{hex_colour(colour)}'></span>T{concept.rank}{ident} "
            f"<span class='meta'>share {100 * concept.share:.1f}% · {concept.size} neurons · {len(kids)} sub-concepts"
            "</span></h3>"
            f"<div class='pair'><figure><img alt='top-level concept {concept.rank} map' "
            f"src='{image_data_uri(signed_overlay(image, cmap))}'><figcaption>map</figcaption></figure>"
            f"<figure><img alt='top-level concept {concept.rank} region' "
            f"src='{image_data_uri(masked_photo(image, sign * cmap))}'><figcaption>most relevant region"
            f"{'' if sign > 0 else ' (of its negative relevance)'}</figcaption></figure></div>{overlap}"
            f"{_top_flows_html(explanation.top_flows, top, t)}"
            f"{bar}<div class='meta'>{esc(depth_caption)}</div>"
            f"<div class='strip'>{strip}</div>"
            f"<details class='subs'><summary>open its {len(kids)} sub-concept{'s' if len(kids) != 1 else ''}</summary>"
            f"<div class='cards'>{cards}</div></details></div>")
    parts.append("</div>")
    svg = hierarchy_svg(explanation)
    flows_note = (" Switch on the flows to see what each top-level concept is made of: an arc from T<i>a</i> to "
                  f"T<i>b</i> carries the share of T<i>a</i>'s relevance absorbed by T<i>b</i>'s neurons (&ge; "
                  f"{_pct(EDGE_SHARE)}, width = share, hover for the number; conceptree.concepts.flows)."
                  if explanation.top_flows is not None else "")
    switch = ("<input type='checkbox' id='showflows'><label for='showflows'> show the flows between top-level "
              "concepts</label>" if explanation.top_flows is not None else "")
    parts.append(f"<h2 id='graph'>The hierarchy</h2><p class='meta'>Top level, then the sub-concepts of each, then "
                 f"their members per network stage. Click a node for its card.{flows_note}</p>{switch}"
                 f"<div class='graphbox'>{svg}</div>")


def write_html(explanation, path: str | Path) -> Path:
    """Write the self-contained report (all images inlined, no network, text escaped)."""
    esc = html.escape
    concepts = explanation.concepts
    image = explanation.image
    hierarchical = bool(concepts.top_level)
    shown_concepts = concepts.top_level if hierarchical else concepts.concepts
    colours = concept_colours(len(shown_concepts))
    stages = explanation.stages()
    fragile = np.array([c.stability_label == "fragile" for c in concepts.concepts], dtype=bool)
    if hierarchical:
        overview_maps = explanation.top_display_maps if explanation.top_display_maps is not None else explanation.top_maps
        faded = None
        prefix, anchor = "T", "top"
    else:
        overview_maps, faded, prefix, anchor = explanation.concept_maps, fragile, "#", "concept"
    source = (f"{len(concepts.top_level)} top-level concepts over {concepts.k} sub-concepts from "
              f"{explanation.n_neurons:,} neurons" if hierarchical else _source_line(concepts, explanation.n_neurons))
    parts = [
        page_head(f"conceptree: {explanation.target_name}", _STYLE),
        f"<h1>Why <em>{esc(explanation.target_name)}</em>? p = {explanation.probability:.3f}</h1>",
        f"<p class='meta'>{source} of "
        f"{len(explanation.layers)} layers ({len(stages)} stages) · model {esc(explanation.model.spec)} · "
        f"image {esc(explanation.image_info.file or '(in memory)')}</p>",
        "<div class='top'>",
        f"<figure class='panel'><img alt='input image' src='{image_data_uri(image)}'><figcaption>input as the model "
        "sees it</figcaption><table class='top5'><tr><th>top-5 class</th><th>p</th></tr>"
        + "".join(f"<tr><td>{esc(str(row.name))}</td><td>{row.probability:.3f}</td></tr>" for row in explanation.top5)
        + "</table></figure>",
        f"<figure class='panel'><img alt='class heatmap' src='{image_data_uri(signed_overlay(image, explanation.heatmap))}'>"
        "<figcaption>class heatmap: <span class='scale'><b>red</b> supports, <i>blue</i> speaks against the "
        "class</span></figcaption></figure>",
        f"<figure class='panel'><img alt='concept overview' "
        f"src='{image_data_uri(concept_overview(image, overview_maps, faded=faded))}'>"
        f"<figcaption>which {'top-level ' if hierarchical else ''}concept carries the most positive relevance at each "
        f"place (click a label to jump to its card){'; fragile concepts faded' if faded is not None and faded.any() else ''}"
        "</figcaption><div class='legend'>",
    ]
    for i, (concept, colour) in enumerate(zip(shown_concepts, colours)):
        weak = (not hierarchical) and fragile[i]
        parts.append(f"<a href='#{anchor}-{concept.rank}' class='{'fragile' if weak else ''}' "
                     f"style='background:{hex_colour(colour)};color:{text_colour(colour)}'>{prefix}{concept.rank} "
                     f"{_pct(concept.share)}</a>")
    parts.append("</div></figure></div>")
    if hierarchical:
        _hierarchy_html(explanation, parts)
    else:
        _flat_html(explanation, parts, fragile, colours)
    dendro = dendrogram_figure(concepts.linkage, concepts.k)
    if dendro is not None:
        parts.append(f"<h2>Dendrogram</h2><img alt='dendrogram' src='{_figure_uri(dendro)}'>")
    by_k = {int(k): v for k, v in ((concepts.stability or {}).get("by_k") or {}).items()}
    sil = silhouette_figure(concepts.silhouette_by_k, concepts.k, by_k, concepts.k_rule)
    if sil is not None:
        title = "Silhouette and stability vs k" if by_k else "Silhouette vs k"
        parts.append(f"<h2>{title}</h2><img alt='silhouette' src='{_figure_uri(sil)}'>")
    params = {
        "options": explanation.options.to_dict(),
        "distance (resolved)": concepts.distance.to_dict(),
        "inactive neurons": len(concepts.inactive),
        "model": {"spec": explanation.model.spec, "hash": explanation.model.hash},
        "preprocessing": explanation.preprocessing.to_dict() if explanation.preprocessing else None,
        "composite": explanation.composite.to_dict(),
        "image": {"file": explanation.image_info.file, "hash": explanation.image_info.hash},
        "timings_s": explanation.timings,
        "reference index": explanation.index_info,
        "concept dictionary": concepts.dictionary,
        "hierarchy": concepts.hierarchy,
        "versions": explanation.versions,
    }
    parts.append(f"<h2>Parameters</h2><pre>{esc(json.dumps(params, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("".join(parts), encoding="utf-8")
    return path


def _flat_html(explanation, parts: list[str], fragile: np.ndarray, colours: np.ndarray) -> None:
    """The flat layout (no top level): the concept graph, then one card per concept."""
    esc = html.escape
    concepts = explanation.concepts
    shown = {"layer-group": "where its neurons carry relevance at their own layers",
             "group": "input relevance through all its neurons",
             "representative": "input relevance through its most relevant neuron"}[explanation.options.concept_map]
    graph = graph_svg(explanation)
    if graph:
        top3 = explanation.flows.top_incoming(3)
        median_top3 = _pct(float(np.nanmedian(top3))) if np.isfinite(top3).any() else "n/a"
        parts.append(
            "<h2 id='graph'>What each concept is made of</h2><p class='meta'>Each concept's relevance, followed down "
            "the network with the same LRP rules, until it arrives at the neurons of another concept (absorbed "
            "there: &ldquo;made of&rdquo;), at its own lower neurons, or at the input through neurons of no concept "
            "(conceptree.concepts.flows). Rows: the concepts' relevance-weighted mean network stage, deep on top. "
            f"Edges: flows &ge; {_pct(EDGE_SHARE)} of the upper concept's relevance, drawn in its colour; node size: "
            "share; click a node for its card. Across concepts, the three largest incoming edges carry "
            f"{median_top3} of what a concept draws from other concepts (median).</p>"
            f"<div class='graphbox'>{graph}</div>")
    parts.append(f"<h2>{concepts.k} concepts, largest share first</h2><p class='meta'>Each map shows {esc(shown)} "
                 "(<span class='scale'><b>red</b> positive, <i>blue</i> negative</span>, symmetric around zero); "
                 f"beside it the photo kept where the concept's top {int(100 * REGION_MASS)}% of positive relevance "
                 "lies. Share = the concept's relevance / all neurons'. Depth = its members per network stage "
                 "(S1 shallow … deep)."
                 + (" Made of / feeds: the concepts its relevance flows into / comes from "
                    "(<a href='#graph'>the concept graph</a>)." if explanation.flows is not None else "") + "</p>")
    if concepts.stability and concepts.stability.get("by_k"):
        config = concepts.stability.get("config", {})
        parts.append(f"<p class='meta'>Stability = how much of the concept is clustered together again when "
                     f"{100 * (1 - config.get('fraction', 0)):.0f}% of the neurons are left out, averaged over "
                     f"{config.get('resamples')} draws (Hennig's Jaccard): <span class='stab stable'>stable</span> "
                     "&ge; 0.75, <span class='stab fragile'>fragile</span> &le; 0.5 (faded). On the CUB dev photos, "
                     "stable concepts mostly reappear after a JPEG re-save, a 2-pixel shift, a 5% resize or a 5% "
                     "brightness change and fragile ones rarely do (docs/results/stability.md).</p>")
    if explanation.references is not None:
        info = explanation.index_info or {}
        parts.append(f"<p class='meta'>Each card also shows where else the concept is strongest among the "
                     f"{info.get('images', '?')} images of the reference index (ranked by the concept's "
                     "relevance-weighted share, cropped to its region there) and a suggested name: the part, colour "
                     "or class most of those references share, with its chance rate. A concept is named only when "
                     "its references show a part, colour or class more than the model's own relevance does on the same "
                     "images, and more than random neuron groups of its layers (p &lt; 0.05; "
                     "docs/results/what.md); otherwise the card says so.</p>")
    parts.append("<div class='cards'>")
    largest = max((c.share for c in concepts.concepts), default=0.0)
    references = explanation.references or [None] * concepts.k
    maps = explanation.display_maps if explanation.display_maps is not None else explanation.concept_maps
    for i, (concept, cmap, colour) in enumerate(zip(concepts.concepts, maps, colours)):
        parts.append(_card_html(explanation, i, concept, cmap, colour, _card_width(concept.share, largest), fragile[i],
                                references[i], _flows_html(explanation.flows, concepts.concepts, i), _id_label(concept)))
    parts.append("</div>")
