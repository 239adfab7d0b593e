"""The sweep loop's settings and a job's values: what cannot reach the jobs is refused, bad values named."""

from __future__ import annotations

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.reid_optuna_sweeper import SweepConfigError
from hydra_plugins.reid_optuna_sweeper._driver import SweepSettings, objective_values, record_outcome
from hydra_plugins.reid_optuna_sweeper._space import SearchSpace


def _settings(**changes: str) -> SweepSettings:
    values = {"storage": "/tmp/study.journal", "study_name": "plateau_demo-plateau", **changes}
    return SweepSettings(directions=["maximize"], n_trials=2, n_jobs=1, max_failure_rate=0.0,
                         sampler=optuna.samplers.RandomSampler(), pruner_spec={},
                         space=SearchSpace(distributions={}, fixed=[]), variants=[], heartbeat_interval=1.0,
                         grace_period=1.0, **values)


def test_settings_without_quotes_are_accepted() -> None:
    assert _settings().study_name == "plateau_demo-plateau"


@pytest.mark.parametrize("key, value", [("storage", "/tmp/it's.journal"), ("study_name", "bob's sweep")])
def test_a_quote_in_storage_or_study_name_is_refused_with_the_key(key: str, value: str) -> None:
    with pytest.raises(SweepConfigError) as error:
        _settings(**{key: value})
    assert str(error.value).startswith(f"hydra.sweeper.{key}={value!r}: a quote character (') cannot be passed")


@pytest.mark.parametrize("value, n, expected", [
    (0.5, 1, [0.5]), ((1, 2.5), 2, [1.0, 2.5]),
    (float("nan"), 1, "the job returned nan, which is not finite"),
    ((1.0, float("inf")), 2, "the job returned (1.0, inf), which is not finite"),
    ((1.0, 2.0), 1, "the job returned (1.0, 2.0); expected a number"),
    ([1.0], 2, "the job returned 1 values ([1.0]); expected 2, one per direction"),
    (3.0, 2, "the job returned 3.0; expected a sequence of 2 numbers"),
    (None, 1, "the job returned None; expected a number"),
])
def test_objective_values_are_finite_and_one_per_direction(value, n: int, expected) -> None:
    assert objective_values(value, n) == expected


def test_a_trial_ended_elsewhere_keeps_its_ending(tmp_path, caplog) -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # another sweep process judged it abandoned
    result = JobReturn()
    result.status, result.return_value = JobStatus.COMPLETED, 0.7
    with caplog.at_level("WARNING"):
        assert record_outcome(study, trial, result, tmp_path) == optuna.trial.TrialState.FAIL
    assert study.trials[0].state == optuna.trial.TrialState.FAIL and study.trials[0].value is None
    assert "trial 0 was already FAIL when its job ended" in caplog.text
