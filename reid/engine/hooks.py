"""The trainer's extension points. Early stopping, checkpoints, the run record and logging are hooks,
so the loop in `trainer.py` stays readable top to bottom.

A hook overrides any of the five callbacks; each receives the trainer, whose `state` holds the progress.
Hooks run in list order; a hook asks the loop to stop by setting `trainer.state.stop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reid.engine.evaluator import RANKING_METRICS

if TYPE_CHECKING:
    from reid.engine.trainer import Trainer


@dataclass
class StepInfo:
    epoch: int
    step: int
    steps_per_epoch: int
    losses: dict[str, float]


@dataclass
class EpochResult:
    """One epoch's figures: the row of metrics.csv and training_history.json (the classifier's val_loss, val_top1
    and val_top5 after the ranking metrics, where the evaluation gives them; a stage step's own metrics, such as
    CLIP-ReID's i2t_top1, leave the ranking ones empty)."""

    epoch: int
    lr: float
    losses: dict[str, float]
    train_top1: float
    metrics: dict[str, float] | None
    epoch_time: float
    improved: bool = False

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": self.epoch, "lr": self.lr}
        row.update({("loss" if k == "total" else f"loss_{k}"): v for k, v in self.losses.items()})
        row["train_top1"] = self.train_top1
        for key in RANKING_METRICS:
            row[key] = None if self.metrics is None else self.metrics.get(key)
        row.update({key: value for key, value in (self.metrics or {}).items() if key not in row})
        row["epoch_time"] = self.epoch_time
        return row


class Hook:
    """Base class: every callback is a no-op."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        pass

    def after_step(self, trainer: Trainer, info: StepInfo) -> None:
        pass

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        """Runs on every stop, including errors and interruptions, with `trainer.state.stop` set."""


class HookList(Hook):
    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)

    def before_train(self, trainer: Trainer) -> None:
        for hook in self.hooks:
            hook.before_train(trainer)

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        for hook in self.hooks:
            hook.before_epoch(trainer, epoch)

    def after_step(self, trainer: Trainer, info: StepInfo) -> None:
        for hook in self.hooks:
            hook.after_step(trainer, info)

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        for hook in self.hooks:
            hook.after_epoch(trainer, result)

    def after_train(self, trainer: Trainer) -> None:
        # Every hook gets its chance to save, even if an earlier one fails.
        errors = []
        for hook in self.hooks:
            try:
                hook.after_train(trainer)
            except Exception as exc:  # noqa: BLE001 - reported below, after the others ran
                errors.append(exc)
        if errors:
            raise errors[0]
