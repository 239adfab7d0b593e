"""Trials on several processes (`hydra.sweeper.processes_per_trial`): the job is the app under torchrun (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState
from sweep_helpers import load, run_sweep

from hydra_plugins.reid_optuna_sweeper import SweepConfigError
from hydra_plugins.reid_optuna_sweeper._storage import open_storage
from hydra_plugins.reid_optuna_sweeper._torchrun import (
    RETURN_FILE,
    TAIL_LINES,
    ReturnValueFile,
    failure_tail,
    split_command_line,
    torchrun_command,
)

ALLREDUCE = Path(__file__).resolve().parent / "apps" / "allreduce.py"
CALLBACK = "++hydra.callbacks.reid_optuna_return._target_=hydra_plugins.reid_optuna_sweeper._torchrun.ReturnValueFile"


def run_allreduce(args: list[str], sweep_dir: Path) -> subprocess.CompletedProcess:
    """`python -Werror allreduce.py --multirun <args>`: 3 grid trials on 2 processes each (conf/allreduce.yaml)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-Werror", str(ALLREDUCE), "--multirun", *args, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, cwd=sweep_dir, capture_output=True, text=True, timeout=300)


def test_a_trial_runs_the_sweeps_program_with_its_config_flags_and_overrides(tmp_path: Path) -> None:
    argv = ["python", "-W", "error", "-X", "dev", "app.py", "--multirun", "-cn", "other", "x=choice(1,2)",
            "--config-dir=extra", "hydra.sweeper.n_workers=1"]
    assert torchrun_command(argv, 2, ["x=2", "hydra.sweep.subdir=trial_0003"], tmp_path) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
        sys.executable, "-u", "-W", "error", "-X", "dev", "app.py", "-cn", "other", "--config-dir=extra",
        "x=2", "hydra.sweep.subdir=trial_0003", CALLBACK, f"hydra.run.dir={tmp_path.resolve()}"]


@pytest.mark.parametrize(("argv", "program", "args"), [
    (["python", "-m", "reid.train", "-m", "x=1"], ["-m", "reid.train"], ["-m", "x=1"]),
    (["python", "-Werror", "-c", "code", "--multirun"], ["-Werror", "-c", "code"], ["--multirun"]),
    (["/venv/bin/python", "/venv/bin/reid-train", "--multirun"], ["/venv/bin/reid-train"], ["--multirun"]),
])
def test_the_program_is_a_script_a_module_or_code(argv: list[str], program: list[str], args: list[str]) -> None:
    assert split_command_line(argv) == (program, args)


def test_a_command_line_without_a_program_is_refused() -> None:
    with pytest.raises(SweepConfigError, match=r"processes_per_trial: cannot tell the app's program"):
        split_command_line(["python", "-W", "error"])


def test_a_failures_tail_ends_where_torchruns_own_report_begins() -> None:
    app = [f"line {n}\n" for n in range(40)]
    report = ["Traceback (most recent call last):\n", '  File "<frozen runpy>", line 198\n',
              '  File "/venv/torch/distributed/run.py", line 1142, in <module>\n', "ChildFailedError:\n", "=====\n"]
    assert failure_tail(app + report) == "".join(app[-TAIL_LINES:])
    assert failure_tail(report[:1] + app) == "".join((report[:1] + app)[-TAIL_LINES:])


@pytest.mark.parametrize(("rank", "status", "value", "written"), [
    ("0", JobStatus.COMPLETED, (np.float32(0.5), np.arange(2)), {"status": "completed", "value": [0.5, [0.0, 1.0]]}),
    (None, JobStatus.COMPLETED, float("nan"), {"status": "completed", "value": float("nan")}),
    ("0", JobStatus.FAILED, optuna.TrialPruned("at step 2"), {"status": "pruned", "error": "at step 2"}),
    ("0", JobStatus.FAILED, ValueError("bad x"), {"status": "failed", "error": "ValueError: bad x"}),
    ("0", JobStatus.COMPLETED, {"x": object}, {"status": "failed", "error": "TypeError: the job returned <class "
                                                                          "'object'>, which is neither a number nor "
                                                                          "a sequence of numbers"}),
    ("1", JobStatus.COMPLETED, 1.0, None),
])
def test_rank_0_alone_writes_its_tasks_outcome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank: str | None,
                                               status: JobStatus, value: object, written: dict | None) -> None:
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    ReturnValueFile().on_job_end(config, JobReturn(status=status, _return_value=value))
    path = tmp_path / RETURN_FILE
    if written is None:
        assert not path.exists()
        return
    outcome = json.loads(path.read_text())
    if written.get("value") != written.get("value"):  # NaN is written as NaN and read back as NaN
        assert np.isnan(outcome.pop("value")) and written.pop("value") is not None
    assert outcome == written


@pytest.fixture(scope="module")
def allreduce_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """Grid x in (2, 1, 4) with y=1: 5 and 2 complete, 17 (above both) is pruned at step 2 by the median pruner."""
    sweep_dir = tmp_path_factory.mktemp("allreduce")
    return sweep_dir, run_allreduce([], sweep_dir)


@pytest.mark.multiprocess
def test_each_trial_runs_on_two_processes_and_the_study_gets_rank_0s_value(
        allreduce_sweep: tuple[Path, subprocess.CompletedProcess]) -> None:
    sweep_dir, result = allreduce_sweep
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = optuna.load_study(study_name="allreduce",
                               storage=open_storage(str(sweep_dir / "allreduce.journal"))).get_trials()
    assert [(t.params["x"], t.state, t.value) for t in trials] == [(2, TrialState.COMPLETE, 5.0),
                                                                   (1, TrialState.COMPLETE, 2.0),
                                                                   (4, TrialState.PRUNED, 17.0)]
    assert [t.intermediate_values for t in trials] == [{1: 5.0, 2: 5.0, 3: 5.0}, {1: 2.0, 2: 2.0, 3: 2.0},
                                                       {1: 17.0, 2: 17.0}]
    assert [t.user_attrs["world_size"] for t in trials] == [2, 2, 2]
    # Both ranks of a finished trial got the sum; rank 0's prune reached rank 1, so neither finished trial 2.
    for x, value in ((2, 5.0), (1, 2.0)):
        # (A rank's line may be interleaved with the other's: both write to one pipe.)
        assert all(f"JOB rank={rank} world=2 x={x} value={value}" in result.stdout for rank in (0, 1))
    assert "x=4 value" not in result.stdout
    # The sweep process (which ran the app's file to launch the trials) never imported torch.
    assert result.stdout.splitlines()[-1] == "IMPORTED []"
    assert json.loads((sweep_dir / "trial_0001" / RETURN_FILE).read_text()) == {"status": "completed", "value": 2.0}


@pytest.mark.multiprocess
def test_a_torchrun_job_without_a_return_value_is_a_failed_trial_with_its_status_and_output(tmp_path: Path) -> None:
    result = run_allreduce(["x=1", "fail_rank=1"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [trial] = optuna.load_study(study_name="allreduce",
                                storage=open_storage(str(tmp_path / "allreduce.journal"))).get_trials()
    assert trial.state == TrialState.FAIL
    reason = trial.user_attrs["fail_reason"]
    assert reason.startswith("error: TrialJobFailed: torchrun (2 processes) exited with status 1 and rank 0 left no "
                             f"return value ({tmp_path / 'trial_0000' / RETURN_FILE} is missing); the last lines "
                             "of its output:\n")
    assert "RuntimeError: rank 1 cannot compute its share" in reason
    assert not (tmp_path / "trial_0000" / RETURN_FILE).exists()


@pytest.mark.multiprocess
def test_a_reid_trial_on_two_processes_reports_each_epoch_and_stops_both_when_pruned(tmp_path: Path,
                                                                                      data_dir: Path) -> None:
    """A finished trial with a mAP no run reaches sits in the study, so the median pruner stops the trial at epoch 2
    of 3: rank 0 decides, and rank 1 stops with it (else it would wait for rank 0 in epoch 3 until killed)."""
    journal = tmp_path / "study.journal"
    study = optuna.create_study(storage=open_storage(str(journal)), study_name="ddp", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=2.0, intermediate_values={1: 2.0, 2: 2.0, 3: 2.0}))
    result = run_sweep(["sweep=plateau", "experiment=smoke", "trainer.device=cpu", "trainer.max_epochs=3",
                        "hydra.sweeper.n_trials=2", "hydra.sweeper.processes_per_trial=2",
                        f"hydra.sweeper.storage={journal}", "hydra.sweeper.study_name=ddp",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, data_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trial = load(journal, "ddp").get_trials()[1]
    assert (trial.state, trial.user_attrs["variant"], sorted(trial.intermediate_values)) == (
        TrialState.PRUNED, "higher_lr", [1, 2])
    run_dir = tmp_path / "sweep" / "trial_0001"
    info = json.loads((run_dir / "model_info.json").read_text())
    assert (info["processes"], info["epochs_trained"]) == (2, 2)
    assert info["sweep_trial"]["trial_number"] == 1
    assert trial.user_attrs["stopping_reason"] == "pruned by the sweep at epoch 2"
    assert json.loads((run_dir / RETURN_FILE).read_text())["status"] == "completed"
