"""The sweep loop's settings: values that cannot reach the training jobs are refused up front."""

from __future__ import annotations

import optuna
import pytest

from reid.errors import ConfigError
from reid.sweep.driver import SweepSettings
from reid.sweep.space import SearchSpace


def _settings(**changes: str) -> SweepSettings:
    values = {"storage": "/tmp/study.journal", "study_name": "plateau_demo-plateau", **changes}
    return SweepSettings(direction="maximize", n_trials=2, n_jobs=1, max_failure_rate=0.0,
                         sampler=optuna.samplers.RandomSampler(), pruner_spec={},
                         space=SearchSpace(distributions={}, fixed=[]), variants=[], heartbeat_interval=1.0,
                         grace_period=1.0, **values)


def test_settings_without_quotes_are_accepted() -> None:
    assert _settings().study_name == "plateau_demo-plateau"


@pytest.mark.parametrize("key, value", [("storage", "/tmp/it's.journal"), ("study_name", "bob's sweep")])
def test_a_quote_in_storage_or_study_name_is_refused_with_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        _settings(**{key: value})
    assert str(error.value).startswith(f"hydra.sweeper.{key}={value!r}: a quote character (') cannot be passed")
