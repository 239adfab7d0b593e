"""The Pareto front of multi-objective runs: exact domination, the reports' front and PARETO_FRONT.png."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from PIL import Image
from test_records import write_run

from reid.select import main as select_main
from reid.selection import rank_runs
from reid.selection.pareto import non_dominated, pareto_front
from reid.selection.records import load_study

DIRECTIONS = {"mAP": "maximize", "latency_ms": "minimize"}


def test_non_dominated_respects_each_direction_and_keeps_equal_points():
    points = [(0.50, 10.0), (0.60, 20.0), (0.55, 25.0), (0.40, 5.0), (0.60, 20.0), (0.30, 8.0), (0.70, 40.0)]
    assert non_dominated(points, ["maximize", "minimize"]) == [0, 1, 3, 4, 6]
    assert non_dominated(points, ["maximize", "maximize"]) == [6]
    assert non_dominated(points, ["minimize", "minimize"]) == [3, 5]


def _objectives(map_value: float, latency: float) -> dict:
    return {"names": ["mAP", "latency_ms"], "directions": DIRECTIONS,
            "latency": {"device": "cpu", "height": 64, "width": 32, "batch_size": 64, "warmup": 1, "repeats": 3,
                        "precision": "32", "channels_last": True},
            "values": {"mAP": map_value, "latency_ms": latency}}


def test_select_reports_the_front_of_hand_made_runs(tmp_path: Path, capsys) -> None:
    root = tmp_path / "sweep"
    # fast is fastest, accurate most accurate, balanced between; slow_and_worse and twin_worse are dominated.
    figures = {"fast": (0.40, 5.0), "balanced": (0.55, 12.0), "accurate": (0.70, 30.0), "slow_and_worse": (0.50, 20.0),
               "twin_worse": (0.55, 13.0)}
    for name, (map_value, latency) in figures.items():
        write_run(root / name, best_map=map_value, objectives=_objectives(map_value, latency),
                  hyperparameters={"backbone": {"model_name": "resnet18"}, "data": {"height": 128, "width": 64}})
    # A diverged run would dominate everything, but failed runs never take part.
    write_run(root / "diverged", best_map="nan", kind="diverged", status="diverged", objectives=_objectives(0.9, 1.0))
    assert select_main([str(root)]) == 0
    printed = capsys.readouterr().out
    front_lines = printed[printed.index("Pareto front:"):].splitlines()
    assert front_lines[0].startswith("Pareto front: 3 of 5 run(s)")
    assert [line.split()[0] for line in front_lines[3:6]] == ["accurate", "balanced", "fast"]
    assert front_lines[3].split()[-4:] == ["0.7000", "30.00", "resnet18", "128x64"]
    assert front_lines[6] == ""
    frame = pd.read_csv(root / "BEST_MODEL_SELECTION.csv")
    on_front = dict(zip(frame["run"], frame["pareto_front"]))
    assert on_front == {"accurate": True, "balanced": True, "fast": True, "slow_and_worse": False,
                        "twin_worse": False, "diverged": False}
    assert dict(zip(frame["run"], frame["latency_ms"]))["balanced"] == 12.0
    markdown = (root / "BEST_MODEL_SELECTION.md").read_text()
    section = markdown[markdown.index("## Pareto front"):].split("\n## ")[0]
    assert [row.split(" | ")[0] for row in section.splitlines() if row.startswith("| ")][2:] == [
        "| accurate", "| balanced", "| fast"]
    assert "![Pareto front](PARETO_FRONT.png)" in section
    with Image.open(root / "PARETO_FRONT.png") as image:
        assert image.format == "PNG" and image.size == (880, 605)


def test_single_objective_runs_get_no_front(tmp_path: Path, capsys) -> None:
    write_run(tmp_path / "a", best_map=0.5)
    write_run(tmp_path / "b", best_map=0.6)
    assert select_main([str(tmp_path)]) == 0
    assert "Pareto front" not in capsys.readouterr().out
    assert not (tmp_path / "PARETO_FRONT.png").exists()
    assert "pareto_front" not in pd.read_csv(tmp_path / "BEST_MODEL_SELECTION.csv").columns


def test_a_study_without_run_dirs_gives_its_front_from_the_trial_values(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="pareto", directions=["maximize", "minimize"])
    for values in ([0.4, 5.0], [0.6, 9.0], [0.5, 9.5]):
        study.add_trial(optuna.trial.create_trial(values=values, params={}, distributions={},
                                                  user_attrs={"overrides": ["trainer.objectives=[mAP,latency_ms]"]}))
    runs = load_study(storage, None).runs
    assert [run.objectives for run in runs] == [{"mAP": 0.4, "latency_ms": 5.0}, {"mAP": 0.6, "latency_ms": 9.0},
                                                {"mAP": 0.5, "latency_ms": 9.5}]
    assert [run.best_map for run in runs] == [0.4, 0.6, 0.5]
    front = pareto_front(rank_runs(load_study(storage, None)).ranked)
    assert front is not None and [run.label for run in front.front] == ["trial 1", "trial 0"]
    assert front.directions == ["maximize", "minimize"]
