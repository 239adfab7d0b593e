"""The accuracy/latency sweep (sweeps/pareto.yaml) end to end: two tiny trials, their front, reid.select's report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sweep_helpers import load, run_sweep

from reid.engine.objectives import DIRECTIONS
from reid.select import main as select_main


def test_pareto_sweep_returns_both_objectives_and_select_draws_the_front(tmp_path: Path, data_dir: Path) -> None:
    journal = tmp_path / "study.journal"
    # resnet18 at the smoke size only (~input_size drops the searched size), one epoch: both trials take seconds.
    result = run_sweep(["sweep=pareto", "experiment=smoke", "hydra.sweeper.n_trials=2", "backbone=resnet18",
                        "~input_size", "trainer.max_epochs=1", "hydra.sweeper.sampler.seed=0",
                        f"hydra.sweeper.storage={journal}", "hydra.sweeper.study_name=pareto",
                        f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(journal, "pareto")
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        info = json.loads((Path(trial.user_attrs["run_dir"]) / "model_info.json").read_text())
        assert info["objectives"]["names"] == ["mAP", "latency_ms"]
        assert trial.values == [info["best_metrics"]["mAP"], info["objectives"]["values"]["latency_ms"]]
        assert trial.values[1] > 0
        assert trial.intermediate_values == {}  # multi-objective studies are not pruned, so nothing is reported
    sweep_dir = tmp_path / "sweep"
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    solutions = {Path(solution["run_dir"]).name for solution in results["solutions"]}
    assert solutions == {Path(t.user_attrs["run_dir"]).name for t in study.best_trials}
    assert select_main([str(sweep_dir), "--quiet"]) == 0
    frame = pd.read_csv(sweep_dir / "BEST_MODEL_SELECTION.csv")
    assert set(frame.loc[frame["pareto_front"], "run"]) == solutions
    assert (sweep_dir / "PARETO_FRONT.png").stat().st_size > 0


def test_the_preset_pairs_each_objective_with_its_direction() -> None:
    preset = yaml.safe_load((Path(__file__).resolve().parents[2] / "sweeps" / "pareto.yaml").read_text())
    sweeper = preset["hydra"]["sweeper"]
    names = sweeper["params"]["trainer.objectives"].strip("[]").split(",")
    assert names == ["mAP", "latency_ms"]
    assert sweeper["direction"] == [DIRECTIONS[name] for name in names] == ["maximize", "minimize"]
