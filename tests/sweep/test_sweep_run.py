"""Real sweeps on the smoke config: pruning, variants, results files, failures and resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import train_env
from optuna.trial import TrialState
from sweep_helpers import TINY, load, run_sweep, sweep_command

from hydra_plugins.reid_optuna_sweeper._liveness import HEARTBEAT_ATTR

# Whole sweeps in their own processes, killed and resumed: `nox -s multiprocess`.
pytestmark = pytest.mark.multiprocess

PLATEAU = ["higher_lr", "cosine_annealing", "heavy_triplet", "aggressive_lr_drop", "smaller_batch_higher_lr"]


@pytest.fixture(scope="module")
def pruned_sweep(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[Path, Path]]:
    """One plateau sweep of 8 trials with the median pruner; shared by the tests that read its results."""
    root = tmp_path_factory.mktemp("pruned")
    journal = root / "study.journal"
    result = run_sweep([*TINY, "hydra.sweeper.n_trials=8", f"hydra.sweeper.storage={journal}",
                        "hydra.sweeper.study_name=tiny", "hydra.sweeper.pruner.n_startup_trials=3",
                        "hydra.sweeper.pruner.n_warmup_steps=0", f"hydra.sweep.dir={root}/sweep"], root, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    yield journal, root / "sweep"
    shutil.rmtree(root, ignore_errors=True)


def test_pruned_sweep_records_variants_pruning_and_results(pruned_sweep: tuple[Path, Path]) -> None:
    journal, sweep_dir = pruned_sweep
    trials = load(journal, "tiny").get_trials()
    assert len(trials) == 8
    assert [t.user_attrs["variant"] for t in trials[:5]] == PLATEAU
    assert all(t.user_attrs["variant"] == "sampled" for t in trials[5:])
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.state, t.intermediate_values) for t in trials]
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == sweep_dir.resolve() and run_dir.name == f"trial_{trial.number:04d}"
        assert (run_dir / "model_info.json").is_file()
        assert trial.intermediate_values and all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())
        assert trial.user_attrs["epochs_trained"] == max(trial.intermediate_values)
        # The job learned its trial from the environment, not its config, and recorded the link for reid.select.
        info = json.loads((run_dir / "model_info.json").read_text())
        assert info["sweep_trial"] == {"storage": str(journal), "study_name": "tiny", "trial_number": trial.number}
        assert "sweep_trial" not in info["hyperparameters"]
    for trial in pruned:
        epoch = max(trial.intermediate_values)
        assert trial.user_attrs["stopping_reason"] == f"pruned by the sweep at epoch {epoch}"
        text = (Path(trial.user_attrs["run_dir"]) / "STOPPING_REASON.txt").read_text()
        assert f"pruned by the sweep at epoch {epoch}" in text
    # The variants' values come from the base config: higher_lr doubles smoke's 3.5e-4.
    assert "optimizer.lr=0.0007" in trials[0].user_attrs["overrides"]
    assert trials[4].params["data.p"] == 2 and "data.k=4" in trials[4].user_attrs["overrides"]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert results["best_value"] == pytest.approx(best.value) and results["best_trial"] == best.number
    assert results["best_params"] == best.params and results["best_variant"] == best.user_attrs["variant"]
    assert results["trials"] == {"COMPLETE": len(complete), "PRUNED": len(pruned)}
    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == list(range(8))
    assert [r["user_attrs_variant"] for r in rows[:5]] == PLATEAU


def test_faulty_trials_fail_and_the_sweep_goes_on(tmp_path: Path, data_dir: Path) -> None:
    journal = tmp_path / "faults.journal"
    args = ["sweep=plateau", "experiment=smoke", "hydra.sweeper.variants=null", "hydra/sweeper/sampler=grid",
            "hydra.sweeper.params=null", "loss._target_=choice(faults.NanLoss,faults.OutOfMemoryLoss)",
            "+loss.after_steps=choice(1,1000)", "trainer.max_epochs=1", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.max_failure_rate=0.5", f"hydra.sweeper.storage={journal}", "hydra.sweeper.study_name=f"]
    result = run_sweep(args, tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(journal, "f").get_trials()
    assert len(trials) == 4
    failed = {(t.params["loss._target_"], t.params["+loss.after_steps"]): t.user_attrs["fail_reason"]
              for t in trials if t.state == TrialState.FAIL}
    assert set(failed) == {("faults.NanLoss", 1), ("faults.OutOfMemoryLoss", 1)}
    assert failed[("faults.NanLoss", 1)].startswith("diverged: diverged: loss=nan")
    assert failed[("faults.OutOfMemoryLoss", 1)].startswith("out_of_memory: OutOfMemoryError")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2

    # Past max_failure_rate the sweep stops, listing the failed trials.
    stopped = run_sweep([*args[:-3], "hydra.sweeper.max_failure_rate=0.25", f"hydra.sweeper.storage={journal}",
                         "hydra.sweeper.study_name=g"], tmp_path, data_dir)
    assert stopped.returncode != 0
    assert "failed trials exceed hydra.sweeper.max_failure_rate=0.25 of n_trials=4" in stopped.stderr
    assert "(sampled): diverged" in stopped.stderr and "(sampled): out_of_memory" in stopped.stderr


def _states(journal: Path, name: str) -> list[TrialState]:
    try:
        return [t.state for t in load(journal, name).get_trials()]
    except KeyError:
        return []


def _training_second_trial(journal: Path, name: str) -> bool:
    """Trial 0 is done and trial 1 is claimed and training (its first heartbeat is stamped right before launch)."""
    try:
        trials = load(journal, name).get_trials()
    except KeyError:
        return False
    return ([t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING]
            and HEARTBEAT_ATTR in trials[1].user_attrs)


def test_killed_sweep_resumes_without_redoing_finished_trials(tmp_path: Path, data_dir: Path) -> None:
    journal = tmp_path / "resume.journal"
    args = [*TINY, "hydra.sweeper.variants=null", "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=none",
            "hydra.sweeper.n_trials=3", "trainer.max_epochs=1", "loss._target_=faults.SlowLoss",
            "+loss.sleep_seconds=0.3", f"hydra.sweeper.storage={journal}", "hydra.sweeper.study_name=r"]
    process = subprocess.Popen(sweep_command(args), cwd=tmp_path, env=train_env(data_dir), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while not _training_second_trial(journal, "r"):
        assert process.poll() is None and time.monotonic() < deadline, _states(journal, "r")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first = load(journal, "r").get_trials()[0]

    result = run_sweep(args, tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(journal, "r").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    assert trials[0].datetime_complete == first.datetime_complete and trials[0].value == first.value
    assert trials[1].user_attrs["stale"] is True and "died; retried" in trials[1].user_attrs["fail_reason"]
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params
    assert re.search(r"trial 1: sweep process \d+ on \S+ died; marked failed and enqueued again",
                     result.stdout + result.stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_dashboard_lists_the_study_and_its_trials(pruned_sweep: tuple[Path, Path]) -> None:
    journal, _ = pruned_sweep
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which(
        "optuna-dashboard")
    assert dashboard, "optuna-dashboard is a test dependency (setup.cfg extras: test)"
    port = _free_port()
    server = subprocess.Popen([dashboard, str(journal), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()[-2000:]
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["tiny"]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        trials = detail["trials"]
        expected = load(journal, "tiny").get_trials()
        assert [t["number"] for t in trials] == [t.number for t in expected]
        assert [t["state"] for t in trials] == [t.state.name.capitalize() for t in expected]
        assert "Pruned" in {t["state"] for t in trials}
        assert all(t["intermediate_values"] for t in trials)
        variants = [next(a["value"] for a in t["user_attrs"] if a["key"] == "variant") for t in trials]
        assert variants[:5] == PLATEAU
    finally:
        server.terminate()
        server.wait(timeout=10)
