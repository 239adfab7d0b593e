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
    the job's process, which is what makes pruning work under any launcher. A job requeued into its trial's
    directory continues the run and keeps reporting to the same trial: each epoch is reported once, and epochs
    its checkpoint holds that the killed job had not reported yet are reported when it starts.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.reported: set[int] = set()

    def _report(self, value: float | None, epoch: int) -> bool:
        if epoch in self.reported or value is None or not math.isfinite(value):
            return False
        self.trial.report(float(value), epoch)
        self.reported.add(epoch)
        return True

    def before_train(self, trainer: Trainer) -> None:
        frozen = next(t for t in self.trial.study.get_trials(deepcopy=False) if t.number == self.trial.number)
        self.reported = set(frozen.intermediate_values)
        monitor = trainer.state.monitor
        for row in trainer.state.history:
            self._report(row.get(monitor), row["epoch"])

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        monitor = trainer.state.monitor
        if result.metrics is None or not self._report(result.metrics[monitor], result.epoch):
            return
        if trainer.state.stop is None and self.trial.should_prune():
            log.info("trial %d of study %s pruned at epoch %d (%s %.4f)", self.trial.number,
                     self.trial.study.study_name, result.epoch, monitor, result.metrics[monitor])
            trainer.state.stop = StopReason.pruned(result.epoch)
