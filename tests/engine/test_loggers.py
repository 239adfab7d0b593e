"""The `logger` group: TensorBoard event files read back against metrics.csv, per sweep trial, and on resume."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams.metadata import SESSION_START_INFO_TAG
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from reid.engine.hooks import EpochResult
from reid.engine.loggers import TensorBoardLogger, scalar_tag
from reid.engine.resume import config_changes
from reid.engine.trainer import TrainState

LEARNING_RATES = [3.5e-4, 7e-4]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, data_dir) -> Iterator[Path]:
    """A two-trial sweep (Hydra's basic launcher) of smoke runs with the TensorBoard logger."""
    root = tmp_path_factory.mktemp("loggers")
    result = run_train(["--multirun", "experiment=smoke", "logger=[csv,tensorboard]",
                        f"optimizer.lr={','.join(map(str, LEARNING_RATES))}", f"hydra.sweep.dir={root}/sweep"],
                       root, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    yield root / "sweep"
    shutil.rmtree(root, ignore_errors=True)


def events(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return accumulator


def hparams_records(log_dir: Path) -> list[HParamsPluginData]:
    """Every session-start (hyperparameters) record in the directory's event files."""
    found = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == SESSION_START_INFO_TAG:
                    found.append(HParamsPluginData.FromString(value.metadata.plugin_data.content))
    return found


def test_each_trial_logs_every_metrics_csv_column_per_epoch(sweep_dir):
    trials = sorted(path for path in sweep_dir.iterdir() if path.is_dir())
    assert [path.name for path in trials] == ["0", "1"]
    for trial in trials:
        rows = list(csv.DictReader((trial / "metrics.csv").open()))
        assert [row["epoch"] for row in rows] == ["1", "2"]
        accumulator = events(trial / "tensorboard")
        tags = set(accumulator.Tags()["scalars"])
        assert {"train/loss", "train/loss_ce", "train/loss_tri", "train/lr", "train/train_top1", "eval/mAP",
                "eval/rank1", "eval/mINP", "time/epoch_time", "hparams/best_mAP"} <= tags
        for column in rows[0]:
            if column == "epoch":
                continue
            scalars = accumulator.Scalars(scalar_tag(column))
            assert [s.step for s in scalars] == [1, 2], column
            assert [s.value for s in scalars] == pytest.approx([float(row[column]) for row in rows], rel=1e-6), column


def test_each_trial_has_one_hparams_record_with_its_best_map(sweep_dir):
    for trial, lr in zip(sorted(path for path in sweep_dir.iterdir() if path.is_dir()), LEARNING_RATES):
        info = json.loads((trial / "model_info.json").read_text())
        (record,) = hparams_records(trial / "tensorboard")
        hparams = record.session_start_info.hparams
        assert hparams["optimizer.lr"].number_value == pytest.approx(lr)
        assert hparams["data.p"].number_value == 4 and hparams["backbone.model_name"].string_value == "resnet18"
        assert hparams["experiment"].string_value == "smoke"
        assert "logger" not in hparams
        accumulator = events(trial / "tensorboard")
        # no experiment summary of one run: TensorBoard compares the union of all runs' hyperparameters
        assert list(accumulator.PluginTagToContent("hparams")) == [SESSION_START_INFO_TAG]
        best = accumulator.Scalars("hparams/best_mAP")
        history = json.loads((trial / "training_history.json").read_text())["epochs"]
        assert [s.step for s in best] == [1, 2]
        assert [s.value for s in best] == pytest.approx([max(row["mAP"] for row in history[:n]) for n in (1, 2)],
                                                        rel=1e-6)
        assert best[-1].value == pytest.approx(info["best_map"], rel=1e-6)


def epoch(number: int, loss: float, mean_ap: float) -> EpochResult:
    metrics = {"mAP": mean_ap, "rank1": 0.5, "rank5": 0.6, "rank10": 0.7, "mINP": mean_ap / 2}
    return EpochResult(epoch=number, lr=1e-3, losses={"total": loss, "ce": loss, "tri": 0.0}, train_top1=0.5,
                       metrics=metrics, epoch_time=1.0)


def train_epochs(logger: TensorBoardLogger, trainer: SimpleNamespace, results: list[EpochResult]) -> None:
    """What Trainer.fit does around the hook for each epoch: the history row, the best epoch, then the hooks."""
    for result in results:
        state = trainer.state
        state.epoch = result.epoch
        state.history.append(result.row())
        if state.best_value is None or result.metrics[state.monitor] > state.best_value:
            state.best_epoch, state.best_metrics = result.epoch, dict(result.metrics)
        logger.after_epoch(trainer, result)


def test_a_resumed_run_shows_each_epoch_once_with_the_resumed_values(tmp_path):
    config = {"optimizer": {"lr": 1e-3}, "trainer": {"monitor": "mINP"}}
    first = TensorBoardLogger(tmp_path, config, ["optimizer.lr=1e-3"], hparams=["optimizer.lr"])
    killed = SimpleNamespace(state=TrainState(monitor="mINP"))
    first.before_train(killed)
    train_epochs(first, killed, [epoch(1, 4.0, 0.2), epoch(2, 3.0, 0.3)])  # then killed: epoch 2 not checkpointed

    resumed = SimpleNamespace(state=TrainState(monitor="mINP", epoch=1, best_epoch=1,
                                               best_metrics=epoch(1, 4.0, 0.2).metrics,
                                               history=[epoch(1, 4.0, 0.2).row()]))
    second = TensorBoardLogger(tmp_path, config, ["optimizer.lr=1e-3"], hparams=["optimizer.lr"])
    second.before_train(resumed)
    train_epochs(second, resumed, [epoch(2, 3.5, 0.1), epoch(3, 2.5, 0.4)])
    second.after_train(resumed)

    log_dir = tmp_path / "tensorboard"
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2
    accumulator = events(log_dir)
    assert [(s.step, s.value) for s in accumulator.Scalars("train/loss")] == [(1, 4.0), (2, 3.5), (3, 2.5)]
    assert [s.value for s in accumulator.Scalars("hparams/best_mINP")] == pytest.approx([0.1, 0.1, 0.2])
    assert [s.value for s in accumulator.Scalars("hparams/best_mAP")] == pytest.approx([0.2, 0.2, 0.4])
    (record,) = hparams_records(log_dir)
    assert record.session_start_info.hparams["optimizer.lr"].number_value == pytest.approx(1e-3)


def test_the_default_is_the_run_record_alone_and_loggers_compose(compose_config):
    assert compose_config().logger == {} and compose_config().callbacks == {}
    assert list(compose_config("logger=[csv,tensorboard]").logger) == ["tensorboard"]
    assert compose_config("logger=tensorboard").logger == compose_config("logger=[csv,tensorboard]").logger


def test_resuming_with_another_logger_is_no_config_change(compose_config):
    from reid.config import as_plain_dict

    saved = as_plain_dict(compose_config("experiment=smoke"))
    del saved["logger"], saved["callbacks"]  # a checkpoint written before the logger and callbacks groups
    assert config_changes(saved, as_plain_dict(compose_config("experiment=smoke", "logger=tensorboard"))) == {}
    changes = config_changes(saved, as_plain_dict(compose_config("experiment=smoke", "callbacks=save_every_n")))
    assert list(changes) == ["callbacks.save_every_n._target_", "callbacks.save_every_n.every"]
