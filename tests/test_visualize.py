"""`python -m reid.visualize`: retrieval grids whose borders follow the protocol, pages worst AP first, plots."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_named, train_env
from PIL import Image

from reid.checkpoint import BEST_MODEL, save_model_file
from reid.config import as_plain_dict
from reid.models import build_model
from reid.visualization.grids import (
    BLUE,
    DISTRACTOR,
    GREEN,
    GREY,
    JUNK,
    MATCH,
    RED,
    SAME_CAMERA,
    WRONG,
    GridLayout,
    draw_retrieval_grid,
    match_kinds,
    top_k,
)
from reid.visualization.pages import QueryEntry, worst_first, write_pages
from reid.visualize import visualize

# More than synthetic_tiny's 46 gallery images: every grid shows each of the query's matches, whatever the model.
TOP_K = 50
GALLERY = 46
LAYOUT = GridLayout(tile_height=32, tile_width=16)


def border_colour(image: Image.Image, layout: GridLayout, position: int) -> tuple[int, int, int]:
    left, top, _, _ = layout.tile_box(position)
    return image.getpixel((left + 1, top + layout.tile_height // 2))


# ------------------------------------------------------------------------------------------ pure drawing


def test_match_kinds_follow_market1501():
    kinds = match_kinds(5, 0, gallery_pids=[5, 7, 5, 0, -1], gallery_camids=[1, 1, 0, 2, 1])
    assert kinds == [MATCH, WRONG, SAME_CAMERA, DISTRACTOR, JUNK]


def test_grid_frames_each_ranked_image_in_its_kinds_colour():
    layout = GridLayout(tile_height=40, tile_width=20)
    fills = [(10, 20, 30), (200, 200, 0), (0, 200, 200), (120, 60, 0), (60, 0, 120), (250, 250, 250)]
    query, *gallery = [Image.new("RGB", (32, 64), fill) for fill in fills]
    kinds = match_kinds(5, 0, [5, 7, 5, 0, -1], [1, 1, 0, 2, 1])
    grid = draw_retrieval_grid(query, gallery, kinds, [f"#{i}" for i in range(1, 6)], "query 0", layout=layout)
    assert grid.size == layout.size(5)
    assert border_colour(grid, layout, 0) == BLUE
    assert [border_colour(grid, layout, i) for i in range(1, 6)] == [GREEN, RED, GREY, RED, GREY]
    for position, fill in enumerate(fills):
        left, top, right, bottom = layout.tile_box(position)
        assert grid.getpixel(((left + right) // 2, (top + bottom) // 2)) == fill
    with pytest.raises(ValueError, match="one entry per ranked image"):
        draw_retrieval_grid(query, gallery, kinds[:2], ["a", "b"], "q", layout=layout)


def test_top_k_is_the_protocols_order_ties_by_gallery_index():
    rng = np.random.default_rng(0)
    for _ in range(20):
        distances = rng.integers(0, 4, 30).astype(np.float32)
        np.testing.assert_array_equal(top_k(distances, 7), np.argsort(distances, kind="stable")[:7])
    assert list(top_k(np.array([0.3, 0.1]), 10)) == [1, 0]


def test_pages_list_queries_worst_first_with_unscored_last(tmp_path):
    entries = [QueryEntry(i, f"q{i}.jpg", i, 0, ap, first, 2, f"grids/query_{i:05d}.png")
               for i, (ap, first) in enumerate([(0.5, 2), (None, None), (0.1, 7), (1.0, 1), (0.1, 3)])]
    assert [e.index for e in worst_first(entries)] == [2, 4, 0, 3, 1]
    paths = write_pages(entries, tmp_path, "<p>summary</p>", per_page=2)
    assert [p.name for p in paths] == ["index.html", "page_2.html", "page_3.html"]
    first = paths[0].read_text()
    assert re.findall(r'<img src="([^"]+)"', first) == ["grids/query_00002.png", "grids/query_00004.png"]
    assert 'href="page_2.html"' in first and "<p>summary</p>" in first
    assert "no match in the gallery" in paths[2].read_text()


# ---------------------------------------------------------------------------- a model, end to end


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, data_dir) -> Path:
    """An untrained smoke model saved as a reid model file: drawing needs a ranking, not a good one."""
    cfg = compose_named("config", "experiment=smoke", f"data_dir={data_dir}")
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.head, num_classes=8)
    path = tmp_path_factory.mktemp("untrained_run") / BEST_MODEL
    save_model_file(path, model, model.architecture, {"epoch": 0, "metrics": None, "config": as_plain_dict(cfg)})
    return path


@pytest.fixture(scope="module")
def drawn(model_file, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("drawn")
    cfg = compose_named("visualize", f"data_dir={data_dir}", f"model={model_file}", f"top_k={TOP_K}", "per_page=3",
                        f"tile_height={LAYOUT.tile_height}", f"tile_width={LAYOUT.tile_width}")
    return visualize(cfg, out), out


def test_every_query_gets_a_grid_whose_borders_follow_its_ranking(drawn):
    evaluation, out = drawn
    layout = LAYOUT
    gallery = evaluation.splits.gallery
    g_pids = np.array([r.pid for r in gallery])
    g_camids = np.array([r.camid for r in gallery])
    grids = sorted((out / "grids").glob("*.png"))
    assert len(grids) == evaluation.num_query == 8
    for index, query in enumerate(evaluation.splits.query):
        image = Image.open(out / "grids" / f"query_{index:05d}.png").convert("RGB")
        assert image.size == layout.size(GALLERY)
        assert border_colour(image, layout, 0) == BLUE
        ranked = np.argsort(evaluation.distances[index].numpy(), kind="stable")
        same_pid = g_pids[ranked] == query.pid
        expected = np.where(same_pid & (g_camids[ranked] != query.camid), "green",
                            np.where(same_pid, "grey", "red"))
        colours = {GREEN: "green", RED: "red", GREY: "grey"}
        assert [colours[border_colour(image, layout, i + 1)] for i in range(GALLERY)] == list(expected)
        # synthetic: 4 matches in the other cameras, 1 image of the query's own camera, the rest wrong
        assert (list(expected).count("green"), list(expected).count("grey")) == (4, 1)


def test_index_pages_queries_worst_ap_first(drawn):
    evaluation, out = drawn
    pages = [out / "index.html", out / "page_2.html", out / "page_3.html"]
    assert not (out / "page_4.html").exists()
    text = "".join(page.read_text() for page in pages)
    shown = [float(ap) for ap in re.findall(r'<b class="ap">AP ([0-9.]+)</b>', text)]
    assert shown == sorted(shown) and len(shown) == 8
    np.testing.assert_allclose(shown, np.sort(evaluation.result.per_query.ap), atol=5e-5)
    for src in re.findall(r'<img src="(grids/[^"]+)"', text):
        assert (out / src).is_file()
    assert "first match at rank" in text and 'href="EVALUATION.json"' in text


def test_plots_and_evaluation_files_are_written(drawn):
    _, out = drawn
    for name in ("cmc_curve.png", "ap_histogram.png"):
        with Image.open(out / name) as image:
            assert image.size == (640, 420)
    assert (out / "EVALUATION.json").is_file() and (out / "EVALUATION_QUERIES.csv").is_file()


def test_cli_draws_beside_the_model(model_file, data_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "reid.visualize", f"model={model_file}", "top_k=3",
                             "max_queries=2"], cwd=tmp_path, env=train_env(data_dir), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (index,) = (model_file.parent / "visualizations").glob("*/index.html")
    assert len(list((index.parent / "grids").glob("*.png"))) == 2
    assert Image.open(next((index.parent / "grids").glob("*.png"))).size == GridLayout().size(3)
    assert "mAP" in result.stdout and str(index) in result.stdout
