"""Reading run records for selection: complete, running, partial and corrupt records, and Optuna studies.

`write_run` fabricates a run directory as `reid.train` writes it; the other selection tests import it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest

from reid.selection.records import (
    DamagedRecord,
    RunSummary,
    SelectionError,
    load_run_dirs,
    load_study,
    read_run_dir,
)


def history_rows(epochs: int, maps: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """Plausible per-epoch rows; `maps` gives mAP at the evaluated epochs (default: every epoch, rising)."""
    maps = maps if maps is not None else {e: round(0.1 * e, 4) for e in range(1, epochs + 1)}
    rows = []
    for epoch in range(1, epochs + 1):
        value = maps.get(epoch)
        rows.append({"epoch": epoch, "lr": 3.5e-4, "loss": 5.0 - 0.1 * epoch, "loss_ce": 4.5 - 0.1 * epoch,
                     "loss_tri": 0.5, "train_top1": 0.1 * epoch, "mAP": value,
                     "rank1": None if value is None else min(1.0, value + 0.1), "rank5": None, "rank10": None,
                     "mINP": None, "epoch_time": 1.0})
    return rows


def write_run(run_dir: Path, *, best_map: Any = 0.5, rank1: float | None = 0.6, rank5: float | None = 0.8,
              minp: float | None = 0.3, best_epoch: int | None = 3, epochs: int = 4, max_epochs: int = 4,
              status: str = "finished", kind: str | None = "completed", message: str | None = None,
              overrides: list[str] | None = None, history: list[dict[str, Any]] | None = None,
              seconds: float = 12.0, best_model: bool = True, **extra: Any) -> Path:
    """A run directory with model_info.json, training_history.json and (optionally) best_model.pth."""
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "status": status,
        "run_dir": str(run_dir),
        "experiment_name": "smoke",
        "stage": "full",
        "overrides": overrides if overrides is not None else ["experiment=smoke"],
        "best_map": best_map,
        "best_epoch": best_epoch,
        "best_rank1": rank1,
        "best_metrics": None if best_map is None else {"mAP": best_map, "rank1": rank1, "rank5": rank5,
                                                       "rank10": 0.9, "mINP": minp},
        "epochs_trained": epochs,
        "max_epochs": max_epochs,
        "stopping_reason": None if kind is None else {"kind": kind, "message": message or f"{kind} message",
                                                      "details": {}},
        "num_classes": 8,
        "hyperparameters": {"optimizer": {"lr": 3.5e-4}, "trainer": {"max_epochs": max_epochs}},
        "timings": {"started": "t0", "ended": None, "total_seconds": seconds, "mean_epoch_seconds": 1.0},
        **extra,
    }
    (run_dir / "model_info.json").write_text(json.dumps(info, indent=2))
    rows = history if history is not None else history_rows(epochs)
    (run_dir / "training_history.json").write_text(json.dumps({"epochs": rows}))
    if best_model:
        (run_dir / "best_model.pth").write_bytes(b"weights")
    return run_dir


def test_complete_record_is_read_with_its_own_figures(tmp_path):
    run = read_run_dir(write_run(tmp_path / "run", best_map=0.625, rank1=0.75, overrides=["experiment=smoke",
                                                                                          "optimizer.lr=0.001"]))
    assert isinstance(run, RunSummary)
    assert (run.label, run.status, run.best_map, run.best_epoch, run.epochs_trained) == ("run", "finished", 0.625, 3, 4)
    assert run.best_metrics == {"mAP": 0.625, "rank1": 0.75, "rank5": 0.8, "rank10": 0.9, "mINP": 0.3}
    assert (run.stop_kind, run.stop_message, run.training_seconds) == ("completed", "completed message", 12.0)
    assert run.overrides == ["experiment=smoke", "optimizer.lr=0.001"]
    assert run.best_model == tmp_path / "run" / "best_model.pth"
    assert run.evaluations() == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    assert run.notes == []


def test_running_record_uses_what_exists_so_far(tmp_path):
    rows = history_rows(3, maps={2: 0.2})
    run = read_run_dir(write_run(tmp_path / "run", status="running", kind=None, best_map=0.2, best_epoch=2,
                                 epochs=3, max_epochs=10, history=rows))
    assert run.in_progress and run.stop_kind is None and run.epochs_trained == 3
    assert run.still_improving is True  # no still_improving key yet: the best is at the last evaluation
    assert run.evaluations() == [(2, 0.2)]


def test_non_finite_strings_parse_as_floats(tmp_path):
    run = read_run_dir(write_run(tmp_path / "run", best_map="nan", rank1="inf", kind="diverged"))
    assert math.isnan(run.best_map) and run.metric("rank1") == math.inf and run.stop_kind == "diverged"


def test_damaged_records_are_listed_with_what_is_wrong(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "good")
    (root / "truncated").mkdir(parents=True)
    (root / "truncated" / "model_info.json").write_text('{"status": "finished", "best_map": 0.')
    write_run(root / "bad_value", best_map="abc")
    write_run(root / "bad_epoch", best_epoch="three")
    (root / "a_list").mkdir()
    (root / "a_list" / "model_info.json").write_text("[1, 2]")
    (root / "no_best").mkdir()
    (root / "no_best" / "model_info.json").write_text('{"status": "running"}')
    (root / "history_only").mkdir()
    (root / "history_only" / "training_history.json").write_text('{"epochs": []}')
    (root / "empty").mkdir()
    (root / "empty" / "model_info.json").write_text("")

    collection = load_run_dirs([root])

    assert [run.label for run in collection.runs] == ["good"]
    problems = {record.label: record.problems[0] for record in collection.damaged}
    assert problems == {
        "a_list": "model_info.json holds a JSON list, expected an object",
        "bad_epoch": "model_info.json: best_epoch='three' is not a whole number",
        "bad_value": "model_info.json: best_map='abc' is not a number",
        "empty": "model_info.json is empty",
        "history_only": "model_info.json is missing",
        "no_best": "model_info.json has no 'best_map' key",
        "truncated": "model_info.json is not valid JSON (Expecting ',' delimiter at line 1, column 37)",
    }
    assert all(isinstance(record, DamagedRecord) and record.path.is_dir() for record in collection.damaged)


def test_history_problems_are_notes_not_failures(tmp_path):
    run_dir = write_run(tmp_path / "run", best_model=False)
    (run_dir / "training_history.json").write_text('{"epochs": [{"epoch": 1, "mAP": 0.1}, {"mAP": 0.2}')
    run = read_run_dir(run_dir)
    assert isinstance(run, RunSummary) and run.best_map == 0.5 and run.history == []
    assert run.notes == [
        "training_history.json is not valid JSON (Expecting ',' delimiter at line 1, column 51): no mAP curve",
        "best_model.pth is missing",
    ]
    (run_dir / "training_history.json").write_text('{"epochs": [{"epoch": 1, "mAP": 0.1}, {"mAP": 0.2}, 5]}')
    run = read_run_dir(run_dir)
    assert run.evaluations() == [(1, 0.1)]
    assert run.notes[:2] == ["training_history.json epochs[1] has no 'epoch'; row skipped",
                             "training_history.json epochs[2] is a int, expected an object; row skipped"]


def test_labels_are_unique_below_several_directories(tmp_path):
    write_run(tmp_path / "a" / "multiruns" / "d1" / "0")
    write_run(tmp_path / "b" / "multiruns" / "d2" / "0")
    collection = load_run_dirs([tmp_path / "a", tmp_path / "b"])
    assert sorted(run.label for run in collection.runs) == ["a/multiruns/d1/0", "b/multiruns/d2/0"]


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SelectionError, match=r"nowhere: no such directory"):
        load_run_dirs([tmp_path / "nowhere"])
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SelectionError, match=r"file.txt: not a directory"):
        load_run_dirs([tmp_path / "file.txt"])


def _fill_study(storage: Any, tmp_path: Path, name: str = "plateau") -> None:
    """Trials as the reid sweeper leaves them: a complete run, a pruned one, one known by value only, a failure,
    a stale attempt (retried elsewhere) and a sampled trial."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    lr = {"optimizer.lr": FloatDistribution(1e-5, 1e-2, log=True)}
    done = write_run(tmp_path / "runs" / "0", best_map=0.61, overrides=["experiment=smoke", "optimizer.lr=0.001"])
    pruned = write_run(tmp_path / "runs" / "1", best_map=0.70, status="running", kind=None)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.add_trial(create_trial(value=0.61, params={"optimizer.lr": 1e-3}, distributions=lr,
                                 user_attrs={"run_dir": str(done), "variant": "lr_x3"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"optimizer.lr": 1e-4}, distributions=lr,
                                 user_attrs={"run_dir": str(pruned), "variant": "lr_x0.3",
                                             "stopping_reason": "pruned at epoch 2"}))
    study.add_trial(create_trial(value=0.42, params={"optimizer.lr": 3e-3}, distributions=lr))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"optimizer.lr": 1e-2}, distributions=lr,
                                 user_attrs={"fail_reason": "out_of_memory: OutOfMemoryError: CUDA out of memory"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"stale": True, "fail_reason": "process died"}))
    study.add_trial(create_trial(value=0.3, user_attrs={"variant": "sampled", "overrides": [
        "optimizer.lr=0.002", "sweep_trial.trial_number=5"]}))


def test_optuna_sqlite_study_uses_run_dirs_and_trial_values(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "study.db"
    _fill_study(f"sqlite:///{db}", tmp_path)

    collection = load_study(f"sqlite:///{db}", None)

    runs = {run.label: run for run in collection.runs}
    assert sorted(runs) == ["trial 0", "trial 1", "trial 2", "trial 3", "trial 5"] and collection.damaged == []
    assert (runs["trial 0"].best_map, runs["trial 0"].variant, runs["trial 0"].path) == (0.61, "lr_x3",
                                                                                       tmp_path / "runs" / "0")
    assert (runs["trial 1"].stop_kind, runs["trial 1"].stop_message, runs["trial 1"].variant) == (
        "pruned", "pruned at epoch 2", "lr_x0.3")
    assert (runs["trial 2"].best_map, runs["trial 2"].path, runs["trial 2"].overrides) == (
        0.42, None, ["optimizer.lr=0.003"])
    assert (runs["trial 3"].stop_kind, runs["trial 3"].stop_message) == (
        "out_of_memory", "out_of_memory: OutOfMemoryError: CUDA out of memory")
    assert (runs["trial 5"].variant, runs["trial 5"].overrides) == ("sampled", ["optimizer.lr=0.002"])
    assert collection.sources == [f"Optuna study 'plateau' in sqlite:///{db}"]
    assert load_study(str(db), "plateau").runs[0].best_map == 0.61  # a bare .db path works too


def test_optuna_journal_file_and_clear_errors(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = tmp_path / "sweep.log"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    _fill_study(storage, tmp_path, name="first")
    optuna.create_study(storage=storage, study_name="second")

    assert len(load_study(str(journal), "first").runs) == 5
    with pytest.raises(SelectionError, match=r"holds 2 studies \(first, second\); name one with --study"):
        load_study(str(journal), None)
    with pytest.raises(SelectionError, match=r"--study 'third' is not in .*sweep.log; its studies: first, second"):
        load_study(str(journal), "third")
    with pytest.raises(SelectionError, match=r"--storage .*missing.journal: no such file"):
        load_study(str(tmp_path / "missing.journal"), None)
    with pytest.raises(SelectionError, match=r"the database file .*missing.db does not exist"):
        load_study(f"sqlite:///{tmp_path / 'missing.db'}", None)
    assert not (tmp_path / "missing.db").exists()


def test_sweep_jobs_found_as_directories_get_their_trial_variant(tmp_path):
    """Older records hold the trial link in their config's `sweep_trial` node, current ones in model_info.json."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = tmp_path / "outputs" / "optuna" / "plateau.journal"
    journal.parent.mkdir(parents=True)
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(journal))), study_name="plateau")
    study.add_trial(create_trial(value=0.5, user_attrs={"variant": "higher_lr"}))
    sweep = tmp_path / "outputs" / "multiruns" / "d"
    for number, storage in ((0, str(journal)), (1, str(tmp_path / "gone.journal"))):
        link = {"storage": storage, "study_name": "plateau", "trial_number": number}
        write_run(sweep / f"trial_{number:04d}", overrides=["experiment=demo", "optimizer.lr=0.001",
                                                             f"sweep_trial.trial_number={number}"],
                  hyperparameters={"sweep_trial": link})

    # Current jobs record the link in model_info.json (no config node, no override).
    study.add_trial(create_trial(value=0.6, user_attrs={"variant": "sampled"}))
    write_run(sweep / "trial_0002", overrides=["experiment=demo", "optimizer.lr=0.002"],
              sweep_trial={"storage": str(journal), "study_name": "plateau", "trial_number": 1})

    runs = {run.label: run for run in load_run_dirs([sweep]).runs}

    assert (runs["trial_0000"].variant, runs["trial_0000"].trial_number) == ("higher_lr", 0)
    assert runs["trial_0000"].overrides == ["experiment=demo", "optimizer.lr=0.001"]
    assert (runs["trial_0002"].variant, runs["trial_0002"].trial_number) == ("sampled", 1)
    assert runs["trial_0001"].variant is None
    assert runs["trial_0001"].notes == [
        f"variant name unknown: its sweep's study storage {tmp_path / 'gone.journal'} no longer exists"]
