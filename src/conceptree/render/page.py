"""The page shell every HTML page of conceptree shares (the report, the comparison, the atlas): one
document head, one base style, the page's own style after it."""

from __future__ import annotations

import html

#: the base style: type, margins, background and the ``.meta`` caption line of every page.
BASE_STYLE = (
    "body{font-family:system-ui,-apple-system,sans-serif;margin:16px;color:#222;background:#f6f6f4}"
    "figure{margin:0}h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:30px 0 8px}"
    ".meta{font-size:12px;color:#555}"
)


def page_head(title: str, style: str = "") -> str:
    """The opening of a page up to ``<body>``: ``title`` (plain text, escaped here) and ``style``
    (CSS after :data:`BASE_STYLE`)."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{BASE_STYLE}{style}</style></head><body>")


def html_page(title: str, body: str, style: str = "") -> str:
    """A whole page: :func:`page_head`, ``body`` (HTML) and the closing tags."""
    return page_head(title, style) + body + "</body></html>"
