"""index.html and the pages after it: every query's grid, worst AP first, so the failures come first.

Plain static HTML with relative links, so the folder can be copied anywhere and opened in a browser.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

INDEX = "index.html"


@dataclass(frozen=True)
class QueryEntry:
    """One query as the pages list it; `ap` and `first_match` are None for a query without a positive."""

    index: int
    path: str
    pid: int
    camid: int
    ap: float | None
    first_match: int | None
    num_positives: int
    grid: str


def worst_first(entries: Sequence[QueryEntry]) -> list[QueryEntry]:
    """By AP ascending (ties by query index); queries without a positive, which have no AP, last."""
    def key(entry: QueryEntry) -> tuple[bool, float, int]:
        scored = entry.ap is not None and not math.isnan(entry.ap)
        return not scored, entry.ap if scored else 0.0, entry.index

    return sorted(entries, key=key)


def page_name(number: int) -> str:
    """index.html for page 1, page_2.html, page_3.html, ..."""
    return INDEX if number == 1 else f"page_{number}.html"


def _navigation(number: int, count: int) -> str:
    links = []
    if number > 1:
        links.append(f'<a href="{page_name(number - 1)}">&larr; previous</a>')
    links.append(f"page {number} of {count}")
    if number < count:
        links.append(f'<a href="{page_name(number + 1)}">next &rarr;</a>')
    return '<p class="nav">' + " | ".join(links) + "</p>"


def _row(position: int, entry: QueryEntry) -> str:
    ap = "no match in the gallery" if entry.ap is None else f"AP {entry.ap:.4f}"
    first = "" if entry.first_match is None else f", first match at rank {entry.first_match}"
    return (f'<div class="query" id="q{entry.index}"><p>{position}. query {entry.index} '
            f"(pid {entry.pid}, camera {entry.camid}, {entry.num_positives} positives): "
            f'<b class="ap">{ap}</b>{first}<br><small>{html.escape(entry.path)}</small></p>'
            f'<img src="{html.escape(entry.grid)}" alt="query {entry.index}"></div>')


STYLE = ("body{font-family:sans-serif;margin:1.5em}div.query{margin:1em 0}p{margin:.2em 0}"
         "small{color:#666}.nav{font-size:1.1em}")


def write_pages(entries: Sequence[QueryEntry], out_dir: str | Path, summary_html: str, per_page: int = 50,
                title: str = "reid retrieval") -> list[Path]:
    """Write index.html (page 1) and the following pages, `per_page` queries each, worst AP first; returns the
    paths. `summary_html` (the figures, links to the plots) heads every page."""
    if per_page < 1:
        raise ValueError(f"per_page={per_page}: expected an integer >= 1")
    ordered = worst_first(entries)
    count = max(1, math.ceil(len(ordered) / per_page))
    out_dir = Path(out_dir)
    paths = []
    for number in range(1, count + 1):
        chunk = ordered[(number - 1) * per_page:number * per_page]
        start = (number - 1) * per_page
        rows = "\n".join(_row(start + i + 1, entry) for i, entry in enumerate(chunk))
        nav = _navigation(number, count)
        body = f"<h1>{html.escape(title)}</h1>\n{summary_html}\n{nav}\n{rows}\n{nav}"
        page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)} - page {number}'
                f"</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
        path = out_dir / page_name(number)
        path.write_text(page, encoding="utf-8")
        paths.append(path)
    return paths
