"""Asynchronous workers (`hydra.sweeper.n_workers`): no barrier, one study, exact counts, GPUs per worker."""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from hydra_plugins.reid_optuna_sweeper import SweepConfigError
from hydra_plugins.reid_optuna_sweeper._database import StorageUnreachable, mask_url, with_retries
from hydra_plugins.reid_optuna_sweeper._storage import open_storage
from hydra_plugins.reid_optuna_sweeper._workers import (
    busy_fractions,
    visible_devices,
    worker_command,
    worker_environments,
    worker_of,
)

SLEEPER = Path(__file__).resolve().parent / "apps" / "sleeper.py"


def run_sleeper(args: list[str], sweep_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -Werror sleeper.py --multirun <args>`: two workers on 8 trials by default (conf/sleeper.yaml)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-Werror", str(SLEEPER), "--multirun", *args, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, cwd=sweep_dir, capture_output=True, text=True, timeout=timeout)


def sleeper_trials(storage: str | Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="sleeper", storage=open_storage(str(storage))).get_trials()


def test_four_devices_two_per_trial_give_two_disjoint_pairs() -> None:
    assert worker_environments(2, 2, ["0", "1", "2", "3"], cores=16) == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                                                         {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert worker_environments(3, 1, ["4", "6", "7"], cores=16) == [{"CUDA_VISIBLE_DEVICES": d} for d in "467"]


def test_too_few_devices_name_the_keys_and_the_devices() -> None:
    with pytest.raises(SweepConfigError, match=r"n_workers=3 with hydra.sweeper.gpus_per_trial=2 needs 6 GPUs, but "
                                               r"4 are visible \(0,1,2,3\)"):
        worker_environments(3, 2, ["0", "1", "2", "3"], cores=16)


def test_without_gpus_workers_share_the_cores() -> None:
    assert worker_environments(2, 1, [], cores=5) == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}] * 2
    assert worker_environments(4, 0, ["0"], cores=2) == [{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}] * 4


def test_visible_devices_follow_cuda_visible_devices() -> None:
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2, 5,7"}) == ["2", "5", "7"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_a_worker_reruns_the_command_alone_with_the_basic_launcher(tmp_path: Path) -> None:
    argv = ["python", "-m", "app", "--multirun", "x=1", "hydra.sweeper.n_workers=4", "hydra/launcher=submitit_slurm",
            "hydra.launcher.partition=gpu", "hydra.sweep.dir=multirun/${now:%H}"]
    assert worker_command(argv, tmp_path) == [sys.executable, "-m", "app", "--multirun", "x=1",
                                              "hydra.sweeper.n_workers=1", "hydra/launcher=basic",
                                              f"hydra.sweep.dir={tmp_path.resolve()}"]


@pytest.fixture(scope="module")
def async_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """Two workers on 8 trials: trial 0 (variant `long`) lasts 4 s, every other one 0.1 s."""
    sweep_dir = tmp_path_factory.mktemp("async")
    return sweep_dir, run_sleeper([], sweep_dir)


@pytest.mark.multiprocess
def test_two_workers_split_the_study_with_no_barrier(async_sweep: tuple[Path, subprocess.CompletedProcess]) -> None:
    sweep_dir, result = async_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    trials = sleeper_trials(sweep_dir / "sleeper.journal")
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert Counter(t.user_attrs["variant"] for t in trials) == Counter(long=1, short=1, sampled=6)
    assert {t.user_attrs["worker"]["slot"] for t in trials} == {0, 1}
    long = next(t for t in trials if t.user_attrs["variant"] == "long")
    others = [t for t in trials if t is not long]
    # While one worker trains the long trial, the other takes trial after trial: with a barrier (n_jobs=2)
    # it would wait for the long one after its first.
    during = [t for t in others if long.datetime_start < t.datetime_start < long.datetime_complete]
    assert len(during) >= 3
    assert {worker_of(t) for t in during} == {worker_of(others[0])} != {worker_of(long)}
    # Each worker's next trial starts after its previous one ended: one trial at a time per worker.
    for worker in {worker_of(t) for t in trials}:
        own = sorted((t for t in trials if worker_of(t) == worker), key=lambda t: t.datetime_start)
        assert all(a.datetime_complete <= b.datetime_start for a, b in zip(own, own[1:]))
    # Every worker's run dirs are trial dirs of this sweep; the results name the best of the 8.
    assert {Path(t.user_attrs["run_dir"]).parent for t in trials} == {sweep_dir.resolve()}
    assert "best_value: 0.0" in (sweep_dir / "optimization_results.yaml").read_text()
    assert len((sweep_dir / "trials.csv").read_text().splitlines()) == 9
    assert result.stdout.count("threads=1 ") == 8


def _ran(number: int, slot: int, start: float, end: float | None) -> optuna.trial.FrozenTrial:
    """A trial worker `slot` ran from `start` to `end` seconds (None: still running)."""
    at = [None if t is None else datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=t) for t in (start, end)]
    return optuna.trial.FrozenTrial(number=number, state=TrialState.COMPLETE if end else TrialState.RUNNING,
                                    value=None, values=[0.0] if end else None, datetime_start=at[0],
                                    datetime_complete=at[1], params={}, distributions={},
                                    user_attrs={"worker": {"host": "h", "pid": slot, "slot": slot}},
                                    system_attrs={}, intermediate_values={}, trial_id=number)


def test_busy_fractions_count_each_workers_trials_until_the_last_start() -> None:
    # Worker 0: a long trial, then the last one from 7.5 s; worker 1 idles 1 s twice. The window ends at 7.5 s.
    trials = [_ran(0, 0, 0, 7), _ran(1, 1, 0, 2), _ran(2, 1, 3, 5), _ran(3, 1, 6, None), _ran(4, 0, 7.5, None)]
    assert busy_fractions(trials) == {"worker 0 h:0": pytest.approx(7 / 7.5), "worker 1 h:1": pytest.approx(5.5 / 7.5)}


@pytest.mark.multiprocess
def test_submitit_local_runs_the_workers_as_its_jobs(tmp_path: Path) -> None:
    result = run_sleeper(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "long_seconds=0.1",
                          "hydra.sweeper.n_trials=4"], tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = sleeper_trials(tmp_path / "sleeper.journal")
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE and t.value is not None for t in trials)
    assert all(t.intermediate_values == {1: t.value, 2: 2 * t.value} for t in trials)
    assert {t.user_attrs["worker"]["slot"] for t in trials} <= {0, 1}
    assert sorted(p.name for p in tmp_path.glob("worker_*")) == ["worker_0", "worker_1"]
    assert "best_value:" in (tmp_path / "optimization_results.yaml").read_text()


def _unreachable() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))


def test_a_transient_database_error_is_retried_until_the_call_succeeds() -> None:
    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise optuna.exceptions.StorageInternalError("commit failed") from _unreachable()
        return "stored"

    assert with_retries(flaky, "postgresql://u:pw@host/db", budget=10, what="tell") == "stored"
    assert len(calls) == 3


def test_past_the_retry_budget_the_error_names_the_storage_without_its_password() -> None:
    def down() -> None:
        raise _unreachable()

    with pytest.raises(StorageUnreachable, match=r"postgresql\+psycopg2://reid:\*\*\*@db:5432/reid unreachable: "
                                                 r"tell failed \d+ times within 1 s"):
        with_retries(down, "postgresql+psycopg2://reid:secret@db:5432/reid", budget=1, what="tell")
    assert mask_url("postgresql://reid@db/reid") == "postgresql://reid@db/reid"


def test_other_errors_are_not_retried() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("bad value")

    with pytest.raises(ValueError):
        with_retries(broken, "postgresql://db/reid", budget=10, what="tell")
    assert calls == [1]


def test_an_unreachable_database_stops_the_sweep_with_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"postgresql+psycopg2://reid:secret@127.0.0.1:{port}/reid"
    result = run_sleeper([f"hydra.sweeper.storage={url}", "hydra.sweeper.storage_retry_s=1",
                          "hydra.sweeper.n_workers=1"], tmp_path)
    assert result.returncode != 0
    assert f"study storage postgresql+psycopg2://reid:***@127.0.0.1:{port}/reid unreachable" in result.stderr
    assert "secret" not in result.stdout + result.stderr
