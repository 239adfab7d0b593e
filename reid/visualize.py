"""`python -m reid.visualize model=<run dir | best_model.pth | model_final.pth> [dataset=<option>]`: what a
trained model retrieves, worst queries first.

Scores the model exactly as `reid.evaluate` does (same keys: distance, flip, rerank, device, ...) and draws it into
`<run dir>/visualizations/<date>_<time>[_<dataset option>]/`: `grids/query_NNNNN.png` (the query, then its
`top_k` gallery images framed green for a match, red for a wrong identity or a distractor, grey for what the
protocol ignores: same-camera images of the query's identity and junk), `index.html` and the pages after it
(`per_page` queries each, worst AP first), `cmc_curve.png`, `ap_histogram.png`, and the evaluation files.
`max_queries=N` draws only the N worst queries.
"""

from __future__ import annotations

import functools
import html
from pathlib import Path

import hydra
from omegaconf import DictConfig
from PIL import Image

from reid.errors import ConfigError, DatasetError
from reid.evaluate import (
    CONFIG_DIR,
    EVALUATION_CSV,
    EVALUATION_JSON,
    EVALUATION_TXT,
    Evaluation,
    hydra_main,
    run_evaluation,
    write_evaluation,
)
from reid.model_outputs import register_output_resolver
from reid.visualization.grids import SAME_CAMERA, GridLayout, draw_retrieval_grid, match_kinds, top_k
from reid.visualization.pages import QueryEntry, worst_first, write_pages
from reid.visualization.plots import AP_HISTOGRAM_PNG, CMC_PNG, plot_ap_histogram, plot_cmc

PROGRAM = "reid.visualize"
VISUALIZATIONS = "visualizations"
GRIDS = "grids"

register_output_resolver("reid_visualization_dir", VISUALIZATIONS, PROGRAM)


def check_visualize_options(cfg: DictConfig) -> None:
    for key, minimum in (("top_k", 1), ("per_page", 1), ("tile_height", 8), ("tile_width", 8)):
        if cfg[key] < minimum:
            raise ConfigError(f"{key}={cfg[key]}: expected an integer >= {minimum}")
    if cfg.max_queries is not None and cfg.max_queries < 1:
        raise ConfigError(f"max_queries={cfg.max_queries}: expected an integer >= 1, or null for every query")


def query_entries(evaluation: Evaluation) -> list[QueryEntry]:
    """Every query with its figures and the relative path its grid gets."""
    per_query = evaluation.result.per_query
    entries = []
    for index, record in enumerate(evaluation.splits.query):
        valid = bool(per_query.valid[index])
        entries.append(QueryEntry(index=index, path=record.path, pid=record.pid, camid=record.camid,
                                  ap=float(per_query.ap[index]) if valid else None,
                                  first_match=int(per_query.first_match[index]) if valid else None,
                                  num_positives=int(per_query.num_positives[index]),
                                  grid=f"{GRIDS}/query_{index:05d}.png"))
    return entries


def _opener(layout: GridLayout):
    @functools.lru_cache(maxsize=4096)
    def open_tile(path: str) -> Image.Image:
        try:
            with Image.open(path) as image:
                return image.convert("RGB").resize((layout.tile_width, layout.tile_height), Image.BILINEAR)
        except OSError as exc:
            raise DatasetError(f"cannot read image {path} to draw it: {exc}") from None

    return open_tile


def draw_query(evaluation: Evaluation, entry: QueryEntry, k: int, layout: GridLayout, open_tile) -> Image.Image:
    """The grid of one query: its `k` nearest gallery images in the protocol's order."""
    gallery = evaluation.splits.gallery
    row = evaluation.distances[entry.index].numpy()
    ranked = top_k(row, k)
    kinds = match_kinds(entry.pid, entry.camid, [gallery[i].pid for i in ranked], [gallery[i].camid for i in ranked])
    captions, rank = [], 0
    for i, kind in zip(ranked, kinds):
        # The rank the protocol gives: the query's own-camera images of its identity are left out of the count.
        rank += kind != SAME_CAMERA
        place = "-" if kind == SAME_CAMERA else f"#{rank}"
        captions.append(f"{place} id{gallery[i].pid} c{gallery[i].camid}")
    figures = "no match in the gallery" if entry.ap is None else \
        f"AP {entry.ap:.4f} | first match at rank {entry.first_match}"
    title = f"query {entry.index}: pid {entry.pid}, camera {entry.camid} | {figures} | {entry.num_positives} positives"
    return draw_retrieval_grid(open_tile(entry.path), [open_tile(gallery[i].path) for i in ranked], kinds, captions,
                               title, query_caption=f"id{entry.pid} c{entry.camid}", layout=layout)


def summary_html(evaluation: Evaluation) -> str:
    metrics = evaluation.metrics
    cells = "".join(f"<th>{html.escape(name)}</th>" for name in metrics)
    values = "".join(f"<td>{value:.4f}</td>" for value in metrics.values())
    settings = evaluation.settings
    return (f"<p>{html.escape(str(evaluation.trained.path))} on {html.escape(evaluation.splits.name)} "
            f"({html.escape(str(evaluation.splits.root))}): {evaluation.num_query} queries, "
            f"{len(evaluation.splits.gallery)} gallery images; distance={settings['distance']}, "
            f"flip={str(settings['flip']).lower()}, rerank={str(settings['rerank']['enabled']).lower()}</p>"
            f'<table border="1" cellpadding="4"><tr>{cells}</tr><tr>{values}</tr></table>'
            f'<p><a href="{EVALUATION_TXT}">{EVALUATION_TXT}</a> | <a href="{EVALUATION_JSON}">{EVALUATION_JSON}</a> | '
            f'<a href="{EVALUATION_CSV}">{EVALUATION_CSV}</a></p>'
            f'<p><img src="{CMC_PNG}" alt="CMC curve"> <img src="{AP_HISTOGRAM_PNG}" alt="AP histogram"></p>'
            "<p>Borders: green match, red wrong identity or distractor, grey ignored by the protocol "
            "(same identity in the query's camera, junk).</p>")


def visualize(cfg: DictConfig, out_dir: str | Path) -> Evaluation:
    """Evaluate `cfg.model` and draw the grids, pages and plots into `out_dir`."""
    check_visualize_options(cfg)
    evaluation = run_evaluation(cfg)
    out_dir = Path(out_dir)
    (out_dir / GRIDS).mkdir(parents=True, exist_ok=True)
    write_evaluation(evaluation, out_dir)
    layout = GridLayout(tile_height=cfg.tile_height, tile_width=cfg.tile_width)
    open_tile = _opener(layout)
    shown = worst_first(query_entries(evaluation))[:cfg.max_queries]
    for entry in shown:
        draw_query(evaluation, entry, cfg.top_k, layout, open_tile).save(out_dir / entry.grid)
    per_query = evaluation.result.per_query
    mAP = evaluation.metrics["mAP"]
    plot_cmc(evaluation.result.cmc, out_dir / CMC_PNG, title=f"CMC ({evaluation.splits.name}, mAP {mAP:.4f})")
    plot_ap_histogram(per_query.ap, out_dir / AP_HISTOGRAM_PNG,
                      title=f"AP of {evaluation.result.num_valid_queries} queries ({evaluation.splits.name})")
    pages = write_pages(shown, out_dir, summary_html(evaluation), per_page=cfg.per_page,
                        title=f"{evaluation.trained.path.name} on {evaluation.splits.name}")
    print("  ".join(f"{name} {value:.4f}" for name, value in evaluation.metrics.items()))
    print(f"Wrote {len(shown)} retrieval grids and {len(pages)} pages: {pages[0]}")
    return evaluation


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="visualize")
def main(cfg: DictConfig) -> float:
    return hydra_main(cfg, PROGRAM, visualize)


if __name__ == "__main__":
    main()
