"""Stale RUNNING trials: found by pid on this host and by heartbeat age on other hosts, then failed and retried."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hydra_plugins.reid_optuna_sweeper._liveness import (
    HEARTBEAT_ATTR,
    WORKER_ATTR,
    Heartbeat,
    fail_stale_trials,
    stale_reason,
    this_worker,
)
from hydra_plugins.reid_optuna_sweeper._storage import open_storage

GRACE = 600.0


def study_with_running(tmp_path: Path, worker: dict, heartbeat: float | None) -> optuna.Study:
    study = optuna.create_study(storage=open_storage(str(tmp_path / "study.journal")), study_name="live",
                                direction="maximize")
    trial = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    trial.set_user_attr("variant", "higher_lr")
    trial.set_user_attr(WORKER_ATTR, worker)
    if heartbeat is not None:
        trial.set_user_attr(HEARTBEAT_ATTR, heartbeat)
    return study


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_silent_worker_on_another_host_is_failed_and_its_work_enqueued_again(tmp_path: Path) -> None:
    study = study_with_running(tmp_path, {"host": "gpu-node-7", "pid": 4242}, heartbeat=time.time() - 3600)
    assert fail_stale_trials(study, GRACE) == [0]
    failed, retry = study.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL and failed.user_attrs["stale"] is True
    assert failed.user_attrs["fail_reason"].startswith("sweep process 4242 on gpu-node-7 sent no heartbeat for 36")
    assert "(grace period 600 s); retried" in failed.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING
    assert retry.user_attrs == {"variant": "higher_lr", "retry_of": 0}
    assert retry.system_attrs["fixed_params"] == failed.params


@pytest.mark.parametrize("age", [0.0, GRACE - 30])
def test_a_recent_heartbeat_from_another_host_keeps_the_trial(tmp_path: Path, age: float) -> None:
    study = study_with_running(tmp_path, {"host": "gpu-node-7", "pid": 4242}, heartbeat=time.time() - age)
    assert fail_stale_trials(study, GRACE) == []
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]


def test_without_a_heartbeat_the_trial_start_is_the_last_sign_of_life(tmp_path: Path) -> None:
    study = study_with_running(tmp_path, {"host": "gpu-node-7", "pid": 4242}, heartbeat=None)
    started = study.trials[0].datetime_start.timestamp()
    assert stale_reason(study.trials[0], GRACE, now=started + GRACE - 1) is None
    assert stale_reason(study.trials[0], GRACE, now=started + GRACE + 60) == (
        "sweep process 4242 on gpu-node-7 sent no heartbeat since the trial started for 660 s (grace period 600 s)")


def test_a_trial_no_process_claimed_is_failed_after_the_grace_period(tmp_path: Path) -> None:
    """A sweep killed between asking for a trial and claiming it leaves a RUNNING trial with no worker."""
    study = optuna.create_study(storage=open_storage(str(tmp_path / "study.journal")), study_name="live",
                                direction="maximize")
    study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    started = study.trials[0].datetime_start.timestamp()
    assert stale_reason(study.trials[0], GRACE, now=started + 5) is None
    assert stale_reason(study.trials[0], GRACE, now=started + 2 * GRACE) == (
        "no sweep process claimed it for 1200 s (grace period 600 s)")
    assert fail_stale_trials(study, grace_period=0.0) == [0]
    failed, retry = study.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"].startswith("no sweep process claimed")
    assert retry.state == TrialState.WAITING and retry.system_attrs["fixed_params"] == failed.params


def test_on_this_host_the_pid_decides_not_the_heartbeat(tmp_path: Path) -> None:
    host = this_worker()["host"]
    alive = study_with_running(tmp_path / "a", this_worker(), heartbeat=time.time() - 3600)
    assert stale_reason(alive.trials[0], GRACE) is None
    pid = dead_pid()
    dead = study_with_running(tmp_path / "b", {"host": host, "pid": pid}, heartbeat=time.time())
    assert stale_reason(dead.trials[0], GRACE) == f"sweep process {pid} on {host} died"


def test_heartbeat_stamps_while_open_and_stops_when_closed(tmp_path: Path) -> None:
    study = study_with_running(tmp_path, this_worker(), heartbeat=None)
    trial = optuna.Trial(study, study.trials[0]._trial_id)
    stamps = []
    with Heartbeat([trial], interval=0.05):
        stamps.append(study.trials[0].user_attrs[HEARTBEAT_ATTR])  # the first beat is immediate
        deadline = time.monotonic() + 30
        while study.trials[0].user_attrs[HEARTBEAT_ATTR] == stamps[0]:
            assert time.monotonic() < deadline, "no second heartbeat"
            time.sleep(0.02)
    closed = study.trials[0].user_attrs[HEARTBEAT_ATTR]
    assert closed > stamps[0]
    study.tell(0, 0.5)  # a finished trial takes no more beats, and none arrive
    time.sleep(0.2)
    assert study.trials[0].user_attrs[HEARTBEAT_ATTR] == closed
