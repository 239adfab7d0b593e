"""Loggers (the `logger` group, conf/logger/): hooks that send a run's figures somewhere besides its run record.

The run record (reid.engine.record: metrics.csv, training_history.json, model_info.json) is always written; it is
the `csv` option. `logger=tensorboard` adds TensorBoard event files in the run directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from reid.config import flatten_config
from reid.engine.evaluator import CLASSIFICATION_METRICS, RANKING_METRICS
from reid.engine.hooks import EpochResult, Hook

if TYPE_CHECKING:
    from reid.engine.trainer import Trainer

EVENT_FILES = "events.out.tfevents.*"
# Overrides that say how a run is logged, resumed or launched, not what it trains: no hyperparameters.
NOT_HYPERPARAMETERS = ("hydra.", "logger", "callbacks", "trainer.resume")


def scalar_tag(column: str) -> str:
    """The TensorBoard tag of a metrics.csv column: `eval/mAP`, `train/loss_ce`, `train/lr`, `time/epoch_time`."""
    if column in RANKING_METRICS or column in CLASSIFICATION_METRICS:
        return f"eval/{column}"
    if column == "epoch_time":
        return f"time/{column}"
    return f"train/{column}"


def best_tags(monitor: str) -> dict[str, str]:
    """The HParams dashboard's metrics, {tag: metric}: the best epoch's mAP, and its `trainer.monitor` value."""
    return {f"hparams/best_{metric}": metric for metric in dict.fromkeys(("mAP", monitor))}


def _hparam_value(value: Any) -> float | int | str:
    """What the HParams dashboard can show: numbers as they are, anything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value
    return json.dumps(value)


def run_hyperparameters(config: dict[str, Any], overrides: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """The settings that tell runs apart: the config values of `keys` (dotted, where the config has them), then
    every key the run's overrides set, with its resolved value; a group choice (`backbone=resnet50`) keeps the
    option's name. Logging, resume and launcher overrides are left out, as are unset (null) values."""
    flat = flatten_config(config)
    chosen = {key: flat[key] for key in keys if key in flat}
    for item in overrides:
        if item.startswith("~"):
            continue
        key, _, text = item.partition("=")
        key = key.lstrip("+")
        if not key.startswith(NOT_HYPERPARAMETERS):
            chosen[key] = flat.get(key, text)
    return {key: _hparam_value(value) for key, value in chosen.items() if value is not None}


class TensorBoardLogger(Hook):
    """Each epoch's metrics.csv row as scalars at global step = epoch (tags from `scalar_tag`), and the run's
    hyperparameters (`run_hyperparameters`) for the HParams dashboard with its best mAP and best `trainer.monitor`
    so far (`best_tags`, written at every evaluated epoch), in `<run dir>/<log_dir>`.

    A continued run (trainer.resume, a requeued job) adds an event file to the same directory that purges every
    step from its history's first epoch on and writes that history again: TensorBoard shows each epoch once, with
    the values of metrics.csv, however the previous process ended. The hyperparameters are written once per run.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], overrides: Sequence[str], log_dir: str = "tensorboard",
                 hparams: Sequence[str] = ()) -> None:
        self.log_dir = Path(run_dir) / log_dir
        self.hyperparameters = run_hyperparameters(config, overrides, list(hparams))
        self.writer: SummaryWriter | None = None
        self.monitor = "mAP"
        self.tags: dict[str, str] = {}

    def before_train(self, trainer: Trainer) -> None:
        state = trainer.state
        self.monitor = state.monitor
        self.tags = best_tags(state.monitor)
        fresh = not any(self.log_dir.glob(EVENT_FILES))
        first_epoch = state.history[0]["epoch"] if state.history else state.epoch + 1
        self.writer = SummaryWriter(str(self.log_dir), purge_step=None if fresh else first_epoch)
        if fresh:
            # The session start alone, no experiment summary: the HParams dashboard then takes the union of every
            # run's hyperparameters (sweep trials may set different keys) and offers every scalar as a metric.
            _, session_start, _ = hparams_summaries(self.hyperparameters, {})
            self.writer.file_writer.add_summary(session_start)
        best: dict[str, Any] | None = None
        for row in state.history:
            value = row.get(self.monitor)
            if value is not None and (best is None or value > best[self.monitor]):
                best = row  # the epoch the trainer picked: the first of the highest values
            self._write(row, best)
        self.writer.flush()

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        self._write(result.row(), trainer.state.best_metrics)
        self.writer.flush()

    def _write(self, row: dict[str, Any], best: dict[str, Any] | None) -> None:
        assert self.writer is not None
        epoch = row["epoch"]
        for column, value in row.items():
            if column != "epoch" and value is not None:
                self.writer.add_scalar(scalar_tag(column), value, epoch)
        if best is not None and row.get(self.monitor) is not None:
            for tag, metric in self.tags.items():
                self.writer.add_scalar(tag, best[metric], epoch)

    def after_train(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
