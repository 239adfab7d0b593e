"""Ranked-retrieval grids: a query, then its top-k gallery images, each framed by what the protocol makes of it.

Pure functions over images, labels and rankings (no model, no files), so every pixel is testable. The kinds follow
the Market-1501 protocol of reid.metrics.evaluate_rank: a gallery image of the query's identity from another
camera is a match (green); one from the query's own camera is discarded by the protocol (grey, "same cam");
pid -1 is Market-1501's junk, ignored (grey, "junk"; reid's Market-1501 loader drops such images before
evaluation); pid 0 is a distractor, a wrong match (red, "distractor"); any other identity is wrong (red).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MATCH = "match"
WRONG = "wrong"
DISTRACTOR = "distractor"
SAME_CAMERA = "same_camera"
JUNK = "junk"
QUERY = "query"

JUNK_PID = -1
DISTRACTOR_PID = 0

GREEN = (0, 170, 0)
RED = (215, 0, 0)
GREY = (150, 150, 150)
BLUE = (30, 90, 220)
BORDER_COLOURS = {QUERY: BLUE, MATCH: GREEN, WRONG: RED, DISTRACTOR: RED, SAME_CAMERA: GREY, JUNK: GREY}
KIND_LABELS = {QUERY: "query", MATCH: "match", WRONG: "wrong", DISTRACTOR: "distractor", SAME_CAMERA: "same cam",
               JUNK: "junk"}
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def match_kind(query_pid: int, query_camid: int, gallery_pid: int, gallery_camid: int) -> str:
    """What the protocol makes of one gallery image for one query (see the module docstring)."""
    if gallery_pid == query_pid:
        return SAME_CAMERA if gallery_camid == query_camid else MATCH
    if gallery_pid == JUNK_PID:
        return JUNK
    if gallery_pid == DISTRACTOR_PID:
        return DISTRACTOR
    return WRONG


def match_kinds(query_pid: int, query_camid: int, gallery_pids: Sequence[int],
                gallery_camids: Sequence[int]) -> list[str]:
    return [match_kind(query_pid, query_camid, int(pid), int(camid))
            for pid, camid in zip(gallery_pids, gallery_camids)]


def top_k(distances: np.ndarray, k: int) -> np.ndarray:
    """The gallery indices of one query's `k` nearest items, in the protocol's order: by distance, ties by
    gallery index (a stable sort, as evaluate_rank ranks)."""
    distances = np.asarray(distances)
    k = min(k, distances.shape[0])
    if k < distances.shape[0]:
        # Only the items up to the k-th smallest distance (ties at it included) need sorting.
        bound = np.partition(distances, k - 1)[k - 1]
        candidates = np.flatnonzero(distances <= bound)
    else:
        candidates = np.arange(distances.shape[0])
    order = np.argsort(distances[candidates], kind="stable")
    return candidates[order][:k]


@dataclass(frozen=True)
class GridLayout:
    """Geometry of a grid: a title line, then tiles in one row (the query first, a wider gap after it), each image
    inside a `border`-pixel frame with a caption of two lines below."""

    tile_height: int = 128
    tile_width: int = 64
    border: int = 4
    gap: int = 6
    query_gap: int = 18
    margin: int = 8
    title_height: int = 18
    caption_height: int = 28

    def tile_box(self, position: int) -> tuple[int, int, int, int]:
        """The frame of tile `position` (0: the query, 1..k: the ranked gallery images) as (left, top, right,
        bottom), right and bottom exclusive; the image fills it less `border` pixels on every side."""
        step = self.tile_width + 2 * self.border + self.gap
        left = self.margin + position * step + (self.query_gap if position > 0 else 0)
        top = self.margin + self.title_height
        return left, top, left + self.tile_width + 2 * self.border, top + self.tile_height + 2 * self.border

    def size(self, num_ranked: int) -> tuple[int, int]:
        """(width, height) of a grid with the query and `num_ranked` gallery tiles."""
        right = self.tile_box(num_ranked)[2]
        bottom = self.tile_box(0)[3] + self.caption_height
        return right + self.margin, bottom + self.margin


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _framed(draw: ImageDraw.ImageDraw, canvas: Image.Image, image: Image.Image, box: tuple[int, int, int, int],
            colour: tuple[int, int, int], layout: GridLayout) -> None:
    left, top, right, bottom = box
    draw.rectangle((left, top, right - 1, bottom - 1), fill=colour)
    thumbnail = image.convert("RGB").resize((layout.tile_width, layout.tile_height), Image.BILINEAR)
    canvas.paste(thumbnail, (left + layout.border, top + layout.border))


def draw_retrieval_grid(query: Image.Image, gallery: Sequence[Image.Image], kinds: Sequence[str],
                        captions: Sequence[str], title: str, query_caption: str = "query",
                        layout: GridLayout = GridLayout()) -> Image.Image:
    """The grid of one query: `gallery[i]` is the image ranked i + 1, framed in the colour of `kinds[i]` and
    captioned `captions[i]` (up to two lines) under its kind's label."""
    if not len(gallery) == len(kinds) == len(captions):
        raise ValueError(f"gallery ({len(gallery)}), kinds ({len(kinds)}) and captions ({len(captions)}) must have "
                         "one entry per ranked image")
    unknown = sorted(set(kinds) - set(BORDER_COLOURS))
    if unknown:
        raise ValueError(f"unknown match kinds {unknown}: expected {', '.join(sorted(BORDER_COLOURS))}")
    canvas = Image.new("RGB", layout.size(len(gallery)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((layout.margin, layout.margin // 2), title, fill=TEXT, font=font)
    tiles = [(query, QUERY, query_caption)] + list(zip(gallery, kinds, captions))
    for position, (image, kind, caption) in enumerate(tiles):
        box = layout.tile_box(position)
        _framed(draw, canvas, image, box, BORDER_COLOURS[kind], layout)
        label = KIND_LABELS[kind] if position else ""
        text = "\n".join(line for line in (label, caption) if line)
        draw.multiline_text((box[0], box[3] + 2), text, fill=BORDER_COLOURS[kind] if position else TEXT, font=font,
                            spacing=2)
    return canvas
