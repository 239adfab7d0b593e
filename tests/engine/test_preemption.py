"""A preempted sweep trial's job (SIGUSR2), started again in its directory, continues its run and its trial."""

from __future__ import annotations

import json
import signal
import warnings
from pathlib import Path

import optuna
import pytest
from conftest import run_train
from optuna.trial import TrialState
from test_resilience import RUN, history, start_until

from hydra_plugins.reid_optuna_sweeper import TrialLink, current_trial
from hydra_plugins.reid_optuna_sweeper._storage import open_storage
from reid.checkpoint import LAST_CHECKPOINT, load_training_checkpoint
from reid.engine.stopping import pass_on_signal
from reid.engine.trainer import TrainState
from reid.errors import ConfigError
from reid.sweep.pruning import TrialPruningHook
from reid.train import train

STUDY = "preempt"


def open_study(storage: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=open_storage(str(storage)))


@pytest.fixture
def running_trial(tmp_path) -> Path:
    """The storage of a journal study with a RUNNING trial 0."""
    storage = tmp_path / "study.journal"
    study = optuna.create_study(storage=open_storage(str(storage)), study_name=STUDY, direction="maximize")
    assert study.ask().number == 0
    return storage


def link_to_trial(monkeypatch: pytest.MonkeyPatch, storage: Path) -> None:
    """From now on, this process and the ones it starts are trial 0's job, linked as the sweeper links its jobs."""
    for name, value in TrialLink(str(storage), STUDY, 0).env().items():
        monkeypatch.setenv(name, value)


@pytest.mark.multiprocess
def test_a_trial_job_stopped_by_sigusr2_continues_in_its_directory_and_trial(tmp_path, data_dir, compose_config,
                                                                             running_trial, monkeypatch):
    assert train(compose_config(*RUN), run_dir=tmp_path / "uninterrupted") > 0
    uninterrupted = history(tmp_path / "uninterrupted")
    link_to_trial(monkeypatch, running_trial)
    run_dir = tmp_path / "sweep" / "trial_0000"
    job = [*RUN, f"hydra.run.dir={run_dir}"]  # the requeued job: same overrides, same directory, same trial
    process = start_until(tmp_path, data_dir, job, "epoch 2 step 1/4")
    process.send_signal(signal.SIGUSR2)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + signal.SIGUSR2, output[-3000:]
    checkpoint = load_training_checkpoint(run_dir / LAST_CHECKPOINT)
    assert checkpoint["epoch"] == 1 and checkpoint["epoch_progress"]["step"] in (1, 2, 3)
    info = json.loads((run_dir / "model_info.json").read_text())
    assert info["status"] == "interrupted" and info["sweep_trial"]["trial_number"] == 0
    assert (run_dir / "STOPPING_REASON.txt").read_text().startswith(
        "Training stopped: stopped by SIGUSR2 (the job scheduler's preemption or time-limit signal)")
    (trial,) = open_study(running_trial).get_trials()
    assert trial.state == TrialState.RUNNING and trial.intermediate_values == {1: uninterrupted[0]["mAP"]}

    # Another config is never trained on top of the checkpoint; the refusal names the key and touches nothing.
    saved = (run_dir / LAST_CHECKPOINT).read_bytes()
    with pytest.raises(ConfigError) as changed:
        train(compose_config(*RUN, "optimizer.lr=1e-3"), run_dir=run_dir)
    assert str(changed.value).startswith(f"cannot resume {run_dir.resolve()}: the config differs from the "
                                         "checkpoint's in 1 key(s): optimizer.lr: 0.00035 -> 0.001.")
    assert "This directory already holds that run" in str(changed.value)
    assert (run_dir / LAST_CHECKPOINT).read_bytes() == saved

    result = run_train(job, tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    step = checkpoint["epoch_progress"]["step"]
    log_text = (run_dir / "log.txt").read_text()
    assert f"continuing the interrupted run in {run_dir.resolve()} from epoch 2 step {step}" in log_text
    assert history(run_dir) == uninterrupted  # bit for bit, so the same final mAP
    info = json.loads((run_dir / "model_info.json").read_text())
    assert info["status"] == "finished" and len(info["resumes"]) == 1
    assert info["best_map"] == max(row["mAP"] for row in uninterrupted)
    assert log_text.count("[Epoch 1/3]") == 1
    # One trial, still RUNNING (its sweeper tells it), with each epoch's mAP reported once.
    (trial,) = open_study(running_trial).get_trials()
    assert trial.number == 0 and trial.state == TrialState.RUNNING
    assert trial.intermediate_values == {row["epoch"]: row["mAP"] for row in uninterrupted}

    # The finished run is never trained over, by the same job or any other.
    before = (run_dir / "model_info.json").read_bytes()
    with pytest.raises(ConfigError) as ended:
        train(compose_config(*RUN), run_dir=run_dir)
    assert str(ended.value) == (
        f"{run_dir} already holds a run that ended (finished: all 3 epochs completed); reid.train does not train "
        "over it. Give the new run a directory of its own (hydra.run.dir, or hydra.sweep.dir for a sweep), or "
        f"continue this one on purpose with trainer.resume={run_dir.resolve()}")
    assert (run_dir / "model_info.json").read_bytes() == before


def test_a_continued_trial_reports_the_epochs_its_killed_job_had_not(running_trial, monkeypatch):
    """Killed between saving epoch 3's checkpoint and reporting it: the next job reports epoch 3, and 1 only once."""
    link_to_trial(monkeypatch, running_trial)
    trial = current_trial()
    trial.report(0.25, 1)
    hook = TrialPruningHook(trial)
    trainer = type("RestoredTrainer", (), {"state": TrainState(epoch=2, history=[
        {"epoch": 1, "mAP": 0.25}, {"epoch": 2, "mAP": None}, {"epoch": 3, "mAP": 0.5}])})()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns about a step reported twice
        hook.before_train(trainer)
    (frozen,) = open_study(running_trial).get_trials()
    assert frozen.intermediate_values == {1: 0.25, 3: 0.5}
    assert hook.reported == {1, 3}


def test_a_job_whose_trial_has_finished_is_refused(running_trial, monkeypatch):
    link_to_trial(monkeypatch, running_trial)
    study = open_study(running_trial)
    study.tell(0, state=TrialState.FAIL)
    with pytest.raises(ValueError, match=r"trial 0 of study 'preempt' \(the job's trial link\) is already FAIL; "
                                         r"this job has no trial to report to"):
        current_trial()


def test_the_stop_signal_reaches_a_job_runners_own_handler_after_the_run():
    """submitit's SIGUSR2 handler (checkpoint the job, requeue it) runs once the run has saved its checkpoint;
    Python's Ctrl+C handler (KeyboardInterrupt) and default actions are left to the caller's exit status."""
    received = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        pass_on_signal(signal.SIGUSR2)
        pass_on_signal(signal.SIGINT)  # raising it again would be a KeyboardInterrupt here
    finally:
        signal.signal(signal.SIGUSR2, previous)
        signal.signal(signal.SIGINT, previous_int)
    assert received == [signal.SIGUSR2]
