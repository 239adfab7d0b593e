"""A sweep whose study lives in PostgreSQL (the storage for workers on several machines).

`.ci/run` starts a server on loopback and sets REID_TEST_POSTGRES_URL; without a reachable server the test
skips and says why.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState
from sweep_helpers import TINY, load, run_sweep

URL_VARIABLE = "REID_TEST_POSTGRES_URL"


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(URL_VARIABLE)
    if not url:
        pytest.skip(f"no PostgreSQL server: {URL_VARIABLE} is not set (.ci/run starts one on loopback)")
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any connection failure means there is no server to test against
        pytest.skip(f"cannot connect to PostgreSQL at {URL_VARIABLE}={url}: {exc}")
    return url


def test_sweep_on_postgresql(tmp_path: Path, data_dir: Path, postgres_url: str) -> None:
    study_name = f"pg-{uuid.uuid4().hex[:8]}"
    args = [*TINY, "hydra.sweeper.n_trials=2", "hydra.sweeper.variants=null", "trainer.max_epochs=1",
            f"hydra.sweeper.storage={postgres_url}", f"hydra.sweeper.study_name={study_name}"]
    result = run_sweep(args, tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(postgres_url, study_name).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert all(0.0 <= t.value <= 1.0 and t.intermediate_values == {1: t.value} for t in trials)
    assert all(Path(t.user_attrs["run_dir"], "model_info.json").is_file() for t in trials)
    # Rerunning the command resumes the study: nothing to do, nothing redone.
    again = run_sweep(args, tmp_path, data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [t.datetime_complete for t in load(postgres_url, study_name).get_trials()] == [
        t.datetime_complete for t in trials]
