"""The BEST_MODEL_SELECTION files on a fabricated sweep: exact table rows, CSV contents, the plot, atomic reruns."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_records import write_run

from reid.selection import load_run_dirs, rank_runs, write_reports
from reid.selection import report as report_module
from reid.selection.report import deployment_snippet, format_duration, next_commands

CRIMSON = (220, 20, 60)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two finished runs, one diverged (NaN mAP), one corrupt record."""
    root = tmp_path / "sweep"
    write_run(root / "0", best_map=0.61, rank1=0.75, rank5=0.8, overrides=["experiment=smoke", "optimizer.lr=0.001"])
    write_run(root / "1", best_map=0.72, rank1=0.8, rank5=0.9, best_epoch=4, seconds=75,
              overrides=["experiment=smoke", "optimizer.lr=0.01"], still_improving=True)
    write_run(root / "2", best_map="nan", kind="diverged", status="diverged",
              message="diverged: loss=nan at epoch 2, step 1", overrides=["experiment=smoke", "optimizer.lr=1.0"])
    (root / "3").mkdir()
    (root / "3" / "model_info.json").write_text("{")
    return root


def _crimson_pixels(image: Image.Image) -> int:
    return int((np.asarray(image) == CRIMSON).all(axis=-1).sum())


def _report(root: Path) -> dict[str, Path]:
    return write_reports(rank_runs(load_run_dirs([root])), root)


def test_text_report_names_the_winner_and_tabulates_every_run(sweep):
    text = _report(sweep)["txt"].read_text()
    lines = text.splitlines()
    assert "WINNER: 1" in lines
    assert "  It has the highest best mAP (0.7200; runner-up 0.6100) of the 2 ranked runs." in lines
    start = lines.index("Comparison")
    assert lines[start + 1:start + 5] == [
        "  rank  run  variant                mAP      R1      R5  best epoch  epochs  stopping reason   time",
        "  ----  ---  ------------------  ------  ------  ------  ----------  ------  ---------------  -----",
        "     1  1    optimizer.lr=0.01   0.7200  0.8000  0.9000           4     4/4  completed        1m15s",
        "     2  0    optimizer.lr=0.001  0.6100  0.7500  0.8000           3     4/4  completed        12.0s",
    ]
    assert ("  Ahead of the runner-up (0) by 0.1100 mAP (0.7200 vs 0.6100, 18.0% relative). Also: rank-1 0.8000 vs "
            "0.7500 (+0.0500), rank-5 0.9000 vs 0.8000 (+0.1000).") in lines
    assert lines[lines.index("Still improving when it stopped?") + 1].startswith("  Yes: its best mAP came at its last")
    assert f"  Best model: {sweep / '1' / 'best_model.pth'}" in lines
    best = sweep / "1" / "best_model.pth"
    start = lines.index(f"  Best model: {best}")
    assert lines[start + 1:start + 8] == [
        "  Score it, look at it, export it:", *(f"    {line}" for line in next_commands(best)),
        "  Embed an image in Python (loaded with weights_only=True: no pickled code runs):",
        *(f"    {line}" for line in deployment_snippet(best))]
    assert next_commands(best)[0].startswith(f"python -m reid.evaluate model={best} ")
    assert "  2    optimizer.lr=1.0  diverged  -                diverged: loss=nan at epoch 2, step 1" in lines
    assert (f"  3 ({sweep / '3'}): model_info.json is not valid JSON (Expecting property name enclosed in double "
            "quotes at line 1, column 2)") in lines


def test_markdown_report_has_the_same_table(sweep):
    lines = _report(sweep)["md"].read_text().splitlines()
    assert "## Winner: `1`" in lines
    start = lines.index("## Comparison")
    assert lines[start + 2:start + 6] == [
        "| rank | run | variant | mAP | R1 | R5 | best epoch | epochs | stopping reason | time |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        "| 1 | 1 | optimizer.lr=0.01 | 0.7200 | 0.8000 | 0.9000 | 4 | 4/4 | completed | 1m15s |",
        "| 2 | 0 | optimizer.lr=0.001 | 0.6100 | 0.7500 | 0.8000 | 3 | 4/4 | completed | 12.0s |",
    ]
    assert "| 2 | optimizer.lr=1.0 | diverged | - | diverged: loss=nan at epoch 2, step 1 |" in lines
    assert "```python" in lines and deployment_snippet(sweep / "1" / "best_model.pth")[1] in lines


def test_csv_has_one_row_per_run(sweep):
    frame = pd.read_csv(_report(sweep)["csv"])
    assert list(frame["run"].astype(str)) == ["1", "0", "2", "3"]
    assert list(frame["group"]) == ["ranked", "ranked", "diverged", "damaged"]
    assert list(frame["rank"].iloc[:2]) == [1, 2] and frame["rank"].iloc[2:].isna().all()
    assert list(frame["mAP"].iloc[:2]) == [0.72, 0.61] and pd.isna(frame["mAP"].iloc[2])
    assert list(frame["winner"]) == [True, False, False, False]
    assert frame["best_model"].iloc[0] == str(sweep / "1" / "best_model.pth")
    assert frame["stopping_reason"].iloc[2] == "diverged"
    assert frame["stopping_message"].iloc[2] == "diverged: loss=nan at epoch 2, step 1"
    assert frame["problems"].iloc[3].startswith("model_info.json is not valid JSON")
    assert list(frame["training_seconds"].iloc[:2]) == [75.0, 12.0]


def test_png_plots_every_curve_and_highlights_the_winner(sweep):
    image = Image.open(_report(sweep)["png"]).convert("RGB")
    assert image.size == (990, 605)
    assert _crimson_pixels(image) > 300
    for name in ("0", "1"):
        write_run(sweep / name, best_map="nan", kind="diverged", status="diverged")
    image = Image.open(_report(sweep)["png"]).convert("RGB")
    assert _crimson_pixels(image) == 0  # no winner: nothing highlighted


def test_rerun_replaces_every_file_and_a_failed_render_keeps_the_old_ones(sweep, monkeypatch):
    paths = _report(sweep)
    write_run(sweep / "0", best_map=0.95, rank1=0.9, overrides=["experiment=smoke", "optimizer.lr=0.001"])
    paths = _report(sweep)
    assert "WINNER: 0" in paths["txt"].read_text()
    assert pd.read_csv(paths["csv"])["run"].astype(str).iloc[0] == "0"
    assert sorted(p.name for p in sweep.iterdir() if p.is_file()) == [f"BEST_MODEL_SELECTION.{s}"
                                                                      for s in ("csv", "md", "png", "txt")]
    before = {name: path.read_bytes() for name, path in paths.items()}
    write_run(sweep / "1", best_map=0.99, overrides=["experiment=smoke", "optimizer.lr=0.01"])

    def broken(_ranking):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(report_module, "render_plot", broken)
    with pytest.raises(RuntimeError, match="renderer failed"):
        _report(sweep)
    assert {name: path.read_bytes() for name, path in paths.items()} == before


def test_the_deployment_snippet_embeds_an_image_with_the_winners_model(untrained_model_file, tmp_path, monkeypatch):
    from PIL import Image

    best = untrained_model_file() / "best_model.pth"
    Image.new("RGB", (40, 90), (200, 30, 30)).save(tmp_path / "person.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(deployment_snippet(best)), "<snippet>", "exec"), namespace)
    embedding = namespace["embedding"]
    assert embedding.shape == (1, 512)  # experiment=smoke: ResNet-18
    assert float(embedding.norm()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("seconds, text", [(None, "-"), (6.26, "6.3s"), (75, "1m15s"), (3725, "1h02m")])
def test_durations_read_naturally(seconds, text):
    assert format_duration(seconds) == text


def test_png_bytes_are_a_png(sweep):
    data = report_module.render_plot(rank_runs(load_run_dirs([sweep])))
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(data)).format == "PNG"
