"""The training job's side of a sweep trial: report each evaluated epoch's monitored metric; stop when pruned."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from reid.engine.hooks import EpochResult, Hook
from reid.engine.stopping import StopReason

if TYPE_CHECKING:
    import optuna

    from reid.engine.trainer import Trainer

log = logging.getLogger("reid")


class TrialPruningHook(Hook):
    """Reports the monitored metric (trainer.monitor) as the trial's intermediate value per epoch, so the pruner
    and the dashboard see the curve.

    The trial is the job's own (`current_trial()` of the sweeper plugin), opened from the study's storage in
    the job's process, which is what makes pruning work under any launcher.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        monitor = trainer.state.monitor
        if result.metrics is None or not math.isfinite(result.metrics[monitor]):
            return
        self.trial.report(float(result.metrics[monitor]), result.epoch)
        if trainer.state.stop is None and self.trial.should_prune():
            log.info("trial %d of study %s pruned at epoch %d (%s %.4f)", self.trial.number,
                     self.trial.study.study_name, result.epoch, monitor, result.metrics[monitor])
            trainer.state.stop = StopReason.pruned(result.epoch)
