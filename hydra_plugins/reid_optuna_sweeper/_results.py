"""The sweep directory's summary: optimization_results.yaml (the winner) and trials.csv (one row per trial)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

RESULTS_YAML = "optimization_results.yaml"
TRIALS_CSV = "trials.csv"


def _solution(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "params": dict(trial.params), "values": list(trial.values),
            "variant": trial.user_attrs.get("variant"), "run_dir": trial.user_attrs.get("run_dir")}


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Trial counts by state and the winner: the best trial's params, value, variant, overrides and run dir, or
    for several objectives the Pareto front's trials (`solutions`, each with params and values)."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    directions = [direction.name.lower() for direction in study.directions]
    summary: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                               "direction": directions[0] if len(directions) == 1 else directions,
                               "trials": {k: v for k, v in counts.items() if v}}
    if len(directions) > 1:
        summary["solutions"] = [_solution(trial) for trial in study.best_trials]
        return summary
    if not any(t.state == TrialState.COMPLETE for t in trials):
        summary.update(best_params=None, best_value=None)
        return summary
    best = study.best_trial
    summary.update(best_params=dict(best.params), best_value=best.value, best_trial=best.number,
                   best_variant=best.user_attrs.get("variant"), best_overrides=best.user_attrs.get("overrides"),
                   best_run_dir=best.user_attrs.get("run_dir"))
    return summary


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(summarize(study)), sweep_dir / RESULTS_YAML)
    frame = study.trials_dataframe(attrs=("number", "state", "value", "datetime_start", "datetime_complete",
                                          "duration", "params", "user_attrs"))
    frame.to_csv(sweep_dir / TRIALS_CSV, index=False)
