"""A sweep whose study lives in PostgreSQL (the storage for workers on several machines).

`.ci/run` starts a server on loopback and sets REID_TEST_POSTGRES_URL (and REID_TEST_POSTGRES_CTL, the pg_ctl
command that restarts it); without a reachable server the tests skip and say why.
"""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState
from sweep_helpers import TINY, load, run_sweep

# Several cooperating processes: run by `nox -s multiprocess` (docs in noxfile.py).
pytestmark = pytest.mark.multiprocess

SLEEPER = Path(__file__).resolve().parent / "apps" / "sleeper.py"

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


CTL_VARIABLE = "REID_TEST_POSTGRES_CTL"


def test_two_workers_ride_out_a_server_restart(tmp_path: Path, postgres_url: str) -> None:
    """The server restarts while both workers' jobs report: no trial is lost, every value is recorded."""
    ctl = os.environ.get(CTL_VARIABLE)
    if not ctl:
        pytest.skip(f"{CTL_VARIABLE} is not set: the test cannot restart the server (.ci/run sets it)")
    study_name = f"pg-restart-{uuid.uuid4().hex[:8]}"
    args = [f"hydra.sweeper.storage={postgres_url}", f"hydra.sweeper.study_name={study_name}", "seconds=3.0",
            "long_seconds=3.0", "steps=4", "hydra.sweeper.n_trials=6"]
    log = (tmp_path / "sweep.log").open("w")  # a file, not a pipe, which nobody reads while the test waits
    sweep = subprocess.Popen([sys.executable, "-Werror", str(SLEEPER), "--multirun", *args,
                              f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        study = None
        reporting = None
        deadline = time.monotonic() + 90
        # Restart once a trial has finished and another is reporting, mid-way through its steps.
        while time.monotonic() < deadline and sweep.poll() is None and reporting is None:
            try:
                study = study or load(postgres_url, study_name)
                trials = study.get_trials()
                if any(t.state == TrialState.COMPLETE for t in trials):
                    reporting = next((t.number for t in trials if t.state == TrialState.RUNNING
                                      and len(t.intermediate_values) in (1, 2)), None)
            except KeyError:
                pass
            time.sleep(0.05)
        assert sweep.poll() is None and reporting is not None, "no trial was reporting before the sweep ended"
        restart = datetime.datetime.now()
        subprocess.run([*shlex.split(ctl), "restart", "-m", "fast", "-w"], check=True, capture_output=True,
                       timeout=60)
        sweep.wait(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        log.close()
    assert sweep.returncode == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    trials = load(postgres_url, study_name).get_trials()
    assert len(trials) == 6
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(t.intermediate_values == {step: t.value * step for step in range(1, 5)} for t in trials)
    # The trial that was reporting when the server went down finished with every report kept.
    assert trials[reporting].datetime_start < restart < trials[reporting].datetime_complete
