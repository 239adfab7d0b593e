"""The hooks every run uses: early stopping on the monitored metric, checkpoint saving, and console progress."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch

from reid.checkpoint import BEST_MODEL, FINAL_MODEL, LAST_CHECKPOINT, save_model_file, save_training_checkpoint
from reid.engine.evaluator import CLASSIFICATION_METRICS
from reid.engine.hooks import EpochResult, Hook, StepInfo
from reid.engine.stopping import DIVERGED, StopReason

if TYPE_CHECKING:
    from reid.engine.trainer import Trainer

log = logging.getLogger("reid")


class EarlyStopping(Hook):
    """Stop once `patience` epochs have passed since the best value of the monitored metric (0 disables)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        state = trainer.state
        if self.patience <= 0 or result.metrics is None or state.best_value is None:
            return
        waited = result.epoch - state.best_epoch
        if waited >= self.patience:
            state.stop = StopReason.early_stopping(waited, self.patience, state.monitor)


class CheckpointSaver(Hook):
    """best_model.pth on each new best of the monitored metric, the resumable last checkpoint every epoch (and on a
    signal), model_final.pth at the end. After an error the last checkpoint stays the last complete epoch's."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.config = config

    def _meta(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "metrics": trainer.state.best_metrics if epoch == trainer.state.best_epoch else None,
            "config": self.config,
        }

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        if result.improved:
            save_model_file(self.run_dir / BEST_MODEL, trainer.model, trainer.model.architecture,
                            self._meta(trainer, result.epoch))
        save_training_checkpoint(self.run_dir / LAST_CHECKPOINT, trainer.checkpoint(self.config))

    def after_train(self, trainer: Trainer) -> None:
        stop = trainer.state.stop
        if trainer.state.global_step == 0:
            return
        if trainer.stop_signal is not None:
            # Stopped by a signal between two steps: the state is consistent, so save it mid-epoch.
            save_training_checkpoint(self.run_dir / LAST_CHECKPOINT, trainer.checkpoint(self.config))
        if stop is not None and stop.kind == DIVERGED:
            finite = all(torch.isfinite(p).all() for p in trainer.model.parameters())
            if not finite:
                log.warning("not writing %s: the weights are no longer finite after divergence", FINAL_MODEL)
                return
        save_model_file(self.run_dir / FINAL_MODEL, trainer.model, trainer.model.architecture,
                        self._meta(trainer, trainer.state.epoch))


def format_losses(losses: dict[str, float]) -> str:
    parts = [f"{key}={value:.3f}" for key, value in losses.items() if key != "total"]
    text = f"loss={losses.get('total', float('nan')):.3f}"
    return f"{text} ({' '.join(parts)})" if parts else text


def epoch_line(result: EpochResult, max_epochs: int, monitor: str = "mAP") -> str:
    """`[Epoch 3/60] lr=3.50e-04 | loss=4.12 (ce=3.90 tri=0.22) | mAP=0.412 R1=0.633 | 41.2s`

    The classifier's figures follow where the evaluation has them (`val_loss=0.712 val_top1=0.812 val_top5=0.950`),
    then the monitored metric if not shown yet; `*` marks a new best of the monitored metric.
    """
    text = f"[Epoch {result.epoch}/{max_epochs}] lr={result.lr:.2e} | {format_losses(result.losses)}"
    if result.metrics is not None:
        metrics = result.metrics
        shown = [key for key in ("mAP", "rank1") if metrics.get(key) is not None]
        text += " |" + "".join(f" {'R1' if key == 'rank1' else key}={metrics[key]:.3f}" for key in shown)
        extra = [key for key in CLASSIFICATION_METRICS if key in metrics]
        if monitor not in (*shown, *extra):
            extra.append(monitor)
        text += "".join(f" {key}={metrics[key]:.3f}" for key in extra)
        if result.improved:
            text += " *"
    return text + f" | {result.epoch_time:.1f}s"


class ProgressLogger(Hook):
    """A progress bar within each epoch (plain lines when not on a terminal), and one line per epoch."""

    def __init__(self, log_every: int, stream: TextIO | None = None) -> None:
        self.log_every = log_every
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.epoch_started = time.perf_counter()

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        self.epoch_started = time.perf_counter()

    def after_step(self, trainer: Trainer, info: StepInfo) -> None:
        elapsed = time.perf_counter() - self.epoch_started
        remaining = elapsed / info.step * (info.steps_per_epoch - info.step)
        if self.interactive:
            filled = int(30 * info.step / max(1, info.steps_per_epoch))
            bar = "#" * filled + "-" * (30 - filled)
            self.stream.write(
                f"\rEpoch {info.epoch} [{bar}] {info.step}/{info.steps_per_epoch} "
                f"loss={info.losses['total']:.3f} eta {remaining:.0f}s "
            )
            if info.step == info.steps_per_epoch:
                self.stream.write("\r" + " " * 90 + "\r")
            self.stream.flush()
        elif info.step % self.log_every == 0 or info.step == info.steps_per_epoch:
            log.info("epoch %d step %d/%d %s", info.epoch, info.step, info.steps_per_epoch,
                     format_losses(info.losses))

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        log.info(epoch_line(result, trainer.max_epochs, trainer.state.monitor))

    def after_train(self, trainer: Trainer) -> None:
        stop = trainer.state.stop
        best = trainer.state.best_value
        finite = best is not None and math.isfinite(best)
        best_text = f"{best:.4f} at epoch {trainer.state.best_epoch}" if finite else "none"
        log.info("stopped: %s | best %s %s", stop.message if stop else "unknown", trainer.state.monitor, best_text)
