"""The training job's side of a sweep trial: report each evaluated epoch's monitored metric; stop when pruned."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from reid.engine.hooks import EpochResult, Hook
from reid.engine.stopping import StopReason
from reid.sweep.storage import open_trial

if TYPE_CHECKING:
    import optuna

    from reid.engine.trainer import Trainer

log = logging.getLogger("reid")


class TrialPruningHook(Hook):
    """Reports the monitored metric (trainer.monitor) as the trial's intermediate value per epoch, so the pruner
    and the dashboard see the curve.

    The study is opened from the storage string in the job itself, which is what makes pruning work for
    jobs in the sweep's process and in launcher subprocesses alike.
    """

    def __init__(self, storage: str, study_name: str, trial_number: int) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_number = trial_number
        self.trial: optuna.Trial | None = None

    def before_train(self, trainer: Trainer) -> None:
        self.trial = open_trial(self.storage, self.study_name, self.trial_number)

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        monitor = trainer.state.monitor
        if result.metrics is None or self.trial is None or not math.isfinite(result.metrics[monitor]):
            return
        self.trial.report(float(result.metrics[monitor]), result.epoch)
        if trainer.state.stop is None and self.trial.should_prune():
            log.info("trial %d of study %s pruned at epoch %d (%s %.4f)", self.trial_number, self.study_name,
                     result.epoch, monitor, result.metrics[monitor])
            trainer.state.stop = StopReason.pruned(result.epoch)
