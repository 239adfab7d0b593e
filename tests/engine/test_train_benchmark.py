"""The training-loop benchmark: its arithmetic, and one tiny run of the real command (no timing is asserted)."""

from __future__ import annotations

import pytest

from reid.engine.benchmark import Figures, main, steady_rate


def test_rates_leave_the_warm_up_out_and_overhead_is_against_the_slower_half():
    # 4 batches of 8 done at t = 10 (warm-up), 11, 12, 14: 3 batches in 4 s after the warm-up.
    assert steady_rate([10.0, 11.0, 12.0, 14.0], warmup=1, batch=8) == pytest.approx(6.0)
    figures = Figures(loader=200.0, step=50.0, loop=45.0)
    assert figures.overhead == pytest.approx(0.1)


def test_a_tiny_benchmark_prints_one_row_per_configuration(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["--backbones", "resnet18", "--precisions", "32", "--p", "2", "--k", "2", "--height", "64",
          "--width", "32", "--workers", "0", "--steps", "2", "--warmup", "1", "--train-ids", "4",
          "--pipelines", "cpu,gpu", "--data-dir", str(data_dir)])
    lines = capsys.readouterr().out.splitlines()
    assert " CPUs (" in lines[0] and "threads; load average" in lines[0]  # the machine the figures belong to
    assert lines[1] == "batch 2x2 at 64x32, 0 workers, 1 warm-up + 2 timed batches; images/s"
    rows = [line.split() for line in lines[3:-1]]
    assert [row[:5] for row in rows] == [["resnet18", "32", "on", "off", "cpu"], ["resnet18", "32", "on", "off", "gpu"]]
    loader, step, loop = map(float, rows[0][5:8])
    assert min(loader, step, loop) > 0
    # The rates are printed to 0.1 image/s: the overhead and ratio columns agree with them to that rounding.
    slower = min(loader, step)
    bounds = sorted(100 * (1 - (loop + d) / (slower - e)) for d in (-0.05, 0.05) for e in (-0.05, 0.05))
    assert bounds[0] - 0.05 <= float(rows[0][8].rstrip("%")) <= bounds[-1] + 0.05
    assert float(rows[0][9].rstrip("x")) == pytest.approx(loader / step, rel=0.05)
    assert lines[-1].startswith("after: load average")
