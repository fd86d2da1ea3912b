"""The comparison page: a reference's concepts traced on other images (:class:`~conceptree.comparison.Comparison`)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from ..concepts.flows import EDGE_SHARE
from .page import html_page
from .pictures import image_data_uri, signed_overlay

if TYPE_CHECKING:  # the result types: render sits below them and reads them by attribute
    from ..comparison import Comparison, ImageComparison


def write_comparison_html(comparison: Comparison, path: str | Path) -> Path:
    """Self-contained page: per concept, the reference map and each image's group map side by side."""
    def _overlay_png(image, values):
        return image_data_uri(image if values is None else signed_overlay(image, values))

    ref = comparison.reference
    ranks = [c.rank for c in ref.concepts.concepts]

    def _parts_reference(k: int) -> str:
        if ref.flows is None:
            return ""
        made = ", ".join(f"#{ranks[d]} {100 * s:.0f}%" for d, s in ref.flows.made_of(k))
        return f"<br><small>made of {made or '(no concept &ge; 5%)'}</small>"

    def _parts_here(im: ImageComparison, k: int) -> str:
        if ref.flows is None or im.flows is None:
            return ""
        lost = set(im.lost_parts.get(ranks[k], []))
        made = ", ".join(f"<span class='{'lost' if ranks[d] in lost else ''}'>#{ranks[d]} {100 * im.flows.flows[k, d]:.0f}%"
                         "</span>" for d, _ in ref.flows.made_of(k))
        note = f" <b class='missing'>lost {', '.join(f'#{r}' for r in sorted(lost))}</b>" if lost else ""
        return f"<br><small>parts here: {made or '-'}{note}</small>"

    kind = ("the sum of the concept's neurons' own-layer relevance maps, in input geometry"
            if ref.options.concept_map == "layer-group" else "the input relevance through all the concept's neurons "
            "(their conditional maps summed)")
    head = "".join(f"<th>{html.escape(im.name)}<br><small>p={im.probability:.2f}</small></th>" for im in comparison.images)
    rows = [f"<tr><th>reference<br><small>{html.escape(ref.target_name)}</small></th>"
            f"<td><img src='{_overlay_png(ref.image, None)}'></td>"
            + "".join(f"<td><img src='{_overlay_png(im.image, None)}'></td>" for im in comparison.images) + "</tr>"]
    for k, concept in enumerate(ref.concepts.concepts):
        cells = []
        for im in comparison.images:
            trace = im.concepts[k]
            flag = " <b class='missing'>missing</b>" if trace.missing else ""
            cells.append(f"<td><img src='{_overlay_png(im.image, im.group_maps[k])}'><br>"
                         f"ratio {trace.ratio:.2f}, share {100 * trace.share:.1f}%{flag}{_parts_here(im, k)}</td>")
        rep = concept.representative
        rows.append(
            f"<tr><th>#{concept.rank}<br><small>{100 * concept.share:.1f}%, {concept.size} neurons<br>"
            f"rep {html.escape(rep.layer)}:{rep.channel}</small></th>"
            f"<td><img src='{_overlay_png(ref.image, ref.concept_maps[k])}'>{_parts_reference(k)}</td>{''.join(cells)}</tr>"
        )
    parts_note = ("" if ref.flows is None else
                  f" Made of / parts here: the share of the concept's relevance that flows into each of the concepts it "
                  f"is made of on the reference (&ge; {100 * EDGE_SHARE:.0f}%), on the reference and on each image; "
                  f"<b class='lost'>lost</b> = below {comparison.missing_fraction} of the reference's share.")
    new_lines = []
    for im in comparison.images:
        for c in im.new_concepts:
            if c.new:
                new_lines.append(f"<li>{html.escape(im.name)}: concept #{c.rank} ({100 * c.share:.1f}%, {c.size} neurons), "
                                 f"best overlap {100 * c.best_overlap:.0f}% with reference #{c.best_reference_rank}</li>")
    style = "td,th{padding:4px;text-align:center;vertical-align:top;font-size:12px}img{width:170px}.missing,.lost{color:#b00}"
    body = f"""<h1>Concepts of {html.escape(ref.target_name)} traced on {len(comparison.images)} image(s)</h1>
<p>Group map = {kind} on that image; ratio = group relevance there / in the
reference; <b>missing</b> = ratio &lt; {comparison.missing_fraction}.{parts_note}</p>
<table><tr><th></th><th>reference</th>{head}</tr>{''.join(rows)}</table>
<h2>New concepts</h2><ul>{''.join(new_lines) or '<li>none flagged (or not computed: explain_new=False)</li>'}</ul>"""
    Path(path).write_text(html_page("conceptree comparison", body, style))
    return Path(path)
