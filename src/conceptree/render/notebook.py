"""Inline views for Jupyter: an explanation, one concept, a comparison, as small self-contained HTML.

``Explanation._repr_html_`` (what a notebook cell shows), ``Explanation.show(concept=3)`` and
``Comparison._repr_html_`` call these. Rules, so a view behaves in someone else's notebook:

- self-contained: pictures are JPEG data URIs, no ``<script>``, no external URL;
- no leaking styles: one ``<style>`` whose every selector starts with the wrapper class
  :data:`WRAPPER`, so nothing outside the view changes;
- small: thumbnails of :data:`THUMB` pixels and at most :data:`MAX_CARDS` concept cards, so one
  explanation adds about 100–200 KB to an ``.ipynb`` (``tests/test_notebook.py`` holds it under
  :data:`MAX_BYTES`); the full report is ``explanation.save(folder)``.
"""

from __future__ import annotations

import html

import numpy as np
from PIL import Image

from ..errors import InputError
from .colours import concept_colours, hex_colour, text_colour
from .pictures import concept_overview, image_data_uri, masked_photo, signed_overlay
from .report import stage_counts

WRAPPER = "conceptree-view"
THUMB = 160
MAX_CARDS = 6
MAX_BYTES = 400_000
_STYLE = (
    f"<style>.{WRAPPER}{{font:13px/1.35 sans-serif;color:#222}}"
    f".{WRAPPER} .row{{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}}"
    f".{WRAPPER} figure{{margin:0}} .{WRAPPER} figcaption{{font-size:11px;color:#555;max-width:{THUMB}px}}"
    f".{WRAPPER} .card{{border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}}"
    f".{WRAPPER} .chip{{display:inline-block;padding:0 5px;border-radius:3px;font-size:11px;margin:1px}}"
    f".{WRAPPER} .meta{{font-size:11px;color:#555}} .{WRAPPER} .fragile{{opacity:.6}}"
    f".{WRAPPER} table{{border-collapse:collapse;font-size:12px}} .{WRAPPER} td{{padding:0 6px 0 0}}</style>"
)


class HTMLView:
    """An HTML fragment that notebooks display (``_repr_html_``); ``str()`` gives the HTML."""

    def __init__(self, markup: str) -> None:
        self.markup = markup

    def _repr_html_(self) -> str:
        return self.markup

    def __str__(self) -> str:
        return self.markup


def _small(rgb: np.ndarray, size: int = THUMB) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR))


def _img(rgb: np.ndarray, alt: str, size: int = THUMB) -> str:
    return f"<img alt='{html.escape(alt)}' width='{size}' src='{image_data_uri(_small(rgb, size), quality=82)}'>"


def _figure(rgb: np.ndarray, caption: str, size: int = THUMB) -> str:
    return f"<figure>{_img(rgb, caption, size)}<figcaption>{caption}</figcaption></figure>"


def _made_of(explanation, c: int) -> str:
    flows = explanation.flows
    if flows is None:
        return ""
    ranks = [x.rank for x in explanation.concepts.concepts]
    made = ", ".join(f"#{ranks[d]} {100 * s:.0f}%" for d, s in flows.made_of(c)[:4])
    return f"<div class='meta'>made of: {made or 'no concept &ge; 5%'}</div>" if flows.defined[c] else ""


def _card(explanation, c: int, size: int = THUMB) -> str:
    concept = explanation.concepts.concepts[c]
    colour = concept_colours(len(explanation.concepts.concepts))[c]
    maps = explanation.display_maps if explanation.display_maps is not None else explanation.concept_maps
    image, cmap = explanation.image, maps[c]
    name = ""
    if explanation.references is not None and explanation.references[c].name:
        name = f" ~ <b>{html.escape(explanation.references[c].name)}</b>"
    stability = f" · {concept.stability_label} {concept.stability:.2f}" if concept.stability is not None else ""
    if concept.parent is not None:
        stability += f" · in T{concept.parent}"
    depth = _depth_text(explanation, concept)
    fragile = " fragile" if concept.stability_label == "fragile" else ""
    return (f"<div class='card{fragile}' style='max-width:{2 * size + 24}px'><span class='chip' style='background:{hex_colour(colour)};"
            f"color:{text_colour(colour)}'>#{concept.rank}</span> share {100 * concept.share:.1f}% · "
            f"{concept.size} neurons{stability}{name}<div class='row'>"
            f"{_figure(signed_overlay(image, cmap), 'map', size)}{_figure(masked_photo(image, cmap), 'most relevant region', size)}"
            f"</div><div class='meta'>{html.escape(depth)} · representative {html.escape(concept.representative.layer)}:"
            f"{concept.representative.channel}</div>{_made_of(explanation, c)}</div>")


def _depth_text(explanation, concept) -> str:
    counts = stage_counts(concept, explanation.stages())
    return "depth " + " · ".join(f"S{s + 1} {n}" for s, n in enumerate(counts) if n)


def _top_card(explanation, t: int, size: int = THUMB) -> str:
    """A top-level concept: its map and region (smoothed for the eye), share, and its sub-concepts."""
    concepts = explanation.concepts
    top = concepts.top_level[t]
    colour = concept_colours(len(concepts.top_level))[t]
    maps = explanation.top_display_maps if explanation.top_display_maps is not None else explanation.top_maps
    image, cmap = explanation.image, maps[t]
    subs = {c.rank: c for c in concepts.concepts}
    kids = ", ".join(f"#{r} {100 * subs[r].share:.0f}%" for r in top.children if r in subs)
    node = f" · node {top.concept_id}" if top.concept_id is not None else ""
    made = ""
    flows = explanation.top_flows
    if flows is not None and flows.defined[t]:
        parts = ", ".join(f"T{concepts.top_level[d].rank} {100 * s:.0f}%" for d, s in flows.made_of(t)[:4])
        made = f"<div class='meta'>made of: {parts or 'no top-level concept &ge; 5%'}</div>"
    return (f"<div class='card' style='max-width:{2 * size + 24}px'><span class='chip' style='background:{hex_colour(colour)};"
            f"color:{text_colour(colour)}'>T{top.rank}</span> share {100 * top.share:.1f}% · {top.size} neurons{node}"
            f"<div class='row'>{_figure(signed_overlay(image, cmap), 'map', size)}"
            f"{_figure(masked_photo(image, cmap), 'most relevant region', size)}</div>"
            f"<div class='meta'>{html.escape(_depth_text(explanation, top))}</div>{made}"
            f"<div class='meta'>sub-concepts: {kids} (<code>explanation.show(concept=N)</code>)</div></div>")


def explanation_html(explanation, *, cards: int = MAX_CARDS) -> str:
    """The compact view of an explanation (module docstring): prediction, heatmap, overview, top cards
    (the top level when there is one, each with its sub-concepts)."""
    esc = html.escape
    if explanation.concepts.top_level:
        return _hierarchy_view(explanation)
    concepts = explanation.concepts.concepts
    colours = concept_colours(len(concepts))
    faded = np.array([c.stability_label == "fragile" for c in concepts], bool)
    top5 = "".join(f"<tr><td>{esc(p.name)}</td><td>{p.probability:.3f}</td></tr>" for p in explanation.top5)
    chips = "".join(f"<span class='chip' style='background:{hex_colour(colours[i])};color:{text_colour(colours[i])}'>"
                    f"#{c.rank} {100 * c.share:.0f}%</span>" for i, c in enumerate(concepts))
    head = (f"<div><b>Why {esc(explanation.target.name)}?</b> p = {explanation.target.probability:.3f} · "
            f"{len(concepts)} concepts from {explanation.n_neurons:,} neurons · {esc(explanation.model.spec)}</div>")
    overview = concept_overview(explanation.image, explanation.concept_maps, faded=faded)
    pictures = (f"<div class='row'>{_figure(explanation.image, 'input')}"
                f"{_figure(signed_overlay(explanation.image, explanation.heatmap), 'class heatmap (red for, blue against)')}"
                f"{_figure(overview, 'which concept carries the most relevance where')}"
                f"<table>{top5}</table></div><div>{chips}</div>")
    shown = min(cards, len(concepts))
    more = (f"<div class='meta'>{len(concepts) - shown} more concepts: <code>explanation.show(concept=N)</code>, "
            "or <code>explanation.save(folder)</code> for the full report</div>") if len(concepts) > shown else ""
    body = "".join(_card(explanation, c) for c in range(shown))
    return f"<div class='{WRAPPER}'>{_STYLE}{head}{pictures}<div class='row'>{body}</div>{more}</div>"


def _hierarchy_view(explanation) -> str:
    esc = html.escape
    concepts = explanation.concepts
    top = concepts.top_level
    colours = concept_colours(len(top))
    maps = explanation.top_display_maps if explanation.top_display_maps is not None else explanation.top_maps
    top5 = "".join(f"<tr><td>{esc(p.name)}</td><td>{p.probability:.3f}</td></tr>" for p in explanation.top5)
    chips = "".join(f"<span class='chip' style='background:{hex_colour(colours[i])};color:{text_colour(colours[i])}'>"
                    f"T{c.rank} {100 * c.share:.0f}%</span>" for i, c in enumerate(top))
    head = (f"<div><b>Why {esc(explanation.target.name)}?</b> p = {explanation.target.probability:.3f} · "
            f"{len(top)} top-level concepts over {concepts.k} sub-concepts from {explanation.n_neurons:,} neurons · "
            f"{esc(explanation.model.spec)}</div>")
    overview = concept_overview(explanation.image, maps)
    pictures = (f"<div class='row'>{_figure(explanation.image, 'input')}"
                f"{_figure(signed_overlay(explanation.image, explanation.heatmap), 'class heatmap (red for, blue against)')}"
                f"{_figure(overview, 'which top-level concept carries the most relevance where')}"
                f"<table>{top5}</table></div><div>{chips}</div>")
    body = "".join(_top_card(explanation, t) for t in range(len(top)))
    return f"<div class='{WRAPPER}'>{_STYLE}{head}{pictures}<div class='row'>{body}</div></div>"


def concept_html(explanation, rank: int, *, size: int = 2 * THUMB) -> str:
    """One concept in full: larger map and region, its members' stages, made of / feeds, references."""
    concepts = explanation.concepts.concepts
    by_rank = {c.rank: i for i, c in enumerate(concepts)}
    if rank not in by_rank:
        raise InputError(f"no concept #{rank}: this explanation has concepts #1..#{len(concepts)}")
    c = by_rank[rank]
    extra = []
    flows = explanation.flows
    if flows is not None:
        feeds = ", ".join(f"#{concepts[d].rank} {100 * s:.0f}%" for d, s in flows.feeds(c)[:6])
        extra.append(f"<div class='meta'>feeds: {feeds or 'no concept &ge; 5%'}</div>")
    if explanation.references is not None:
        refs = explanation.references[c]
        crops = "".join(_figure(r.crop, html.escape(r.class_name or "?"), 96) for r in refs.references[:8]
                        if r.crop is not None and r.crop.size)
        extra.append(f"<div class='meta'>elsewhere strongest on:</div><div class='row'>{crops}</div>")
    members = ", ".join(f"{html.escape(n.layer)}:{n.channel}" for n in concepts[c].neurons[:12])
    extra.append(f"<div class='meta'>most relevant members: {members}{' …' if concepts[c].size > 12 else ''}</div>")
    return f"<div class='{WRAPPER}'>{_STYLE}{_card(explanation, c, size)}{''.join(extra)}</div>"


def comparison_html(comparison, *, cards: int = MAX_CARDS) -> str:
    """A comparison's compact view: per traced image, the first concepts' group maps and ratios."""
    esc = html.escape
    ref = comparison.reference
    concepts = ref.concepts.concepts[:cards]
    rows = [f"<div><b>Concepts of {esc(ref.target.name)} traced on {len(comparison.images)} image(s)</b> "
            f"(missing: ratio &lt; {comparison.missing_fraction:g})</div>"]
    header = "".join(_figure(signed_overlay(ref.image, ref.concept_maps[i]), f"#{c.rank} reference", 110)
                     for i, c in enumerate(concepts))
    rows.append(f"<div class='row'>{_figure(ref.image, 'reference', 110)}{header}</div>")
    for im in comparison.images:
        figs = []
        for i, c in enumerate(concepts):
            trace = im.concepts[i]
            flag = " <b>missing</b>" if trace.missing else ""
            figs.append(_figure(signed_overlay(im.image, im.group_maps[i]), f"#{c.rank} ratio {trace.ratio:.2f}{flag}", 110))
        rows.append(f"<div class='row'>{_figure(im.image, esc(im.name), 110)}{''.join(figs)}</div>")
    return f"<div class='{WRAPPER}'>{_STYLE}{''.join(rows)}</div>"


def show_images(images: dict[str, np.ndarray], *, size: int = 2 * THUMB) -> HTMLView:
    """Pictures side by side in a notebook: ``{caption: (H, W, 3) uint8}`` (e.g. a CAM beside a concept)."""
    figures = "".join(_figure(np.asarray(rgb, np.uint8), html.escape(caption), size) for caption, rgb in images.items())
    return HTMLView(f"<div class='{WRAPPER}'>{_STYLE}<div class='row'>{figures}</div></div>")
