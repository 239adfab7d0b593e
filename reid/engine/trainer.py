"""The training loop. Everything optional (records, checkpoints, early stopping, logging) lives in hooks."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from reid.engine.hooks import EpochResult, Hook, HookList, StepInfo
from reid.engine.stopping import StopReason, TrainingDiverged, reason_for_exception
from reid.utils.seed import seed_everything


@dataclass
class TrainState:
    """Progress that hooks read and the checkpoint saves: enough to continue a run exactly."""

    epoch: int = 0
    global_step: int = 0
    best_map: float | None = None
    best_epoch: int = 0
    best_metrics: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stop: StopReason | None = None


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: torch.utils.data.DataLoader,
        evaluate: Callable[[nn.Module], dict[str, float]],
        hooks: list[Hook],
        *,
        max_epochs: int,
        eval_every: int,
        device: torch.device,
        amp: bool,
        seed: int,
    ) -> None:
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.evaluate = evaluate
        self.hooks = HookList(hooks)
        self.max_epochs = max_epochs
        self.eval_every = eval_every
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.seed = seed
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = TrainState()

    @property
    def batch_size(self) -> int:
        return int(self.train_loader.batch_size or 0)

    def fit(self) -> TrainState:
        """Train until done or stopped; hooks' `after_train` always runs, then errors propagate.

        Divergence is a stop, not an error: the run's record explains it and the caller gets the state.
        """
        state = self.state
        try:
            self.hooks.before_train(self)
            for epoch in range(state.epoch + 1, self.max_epochs + 1):
                result = self.run_epoch(epoch)
                state.epoch = epoch
                state.history.append(result.row())
                self.hooks.after_epoch(self, result)
                if state.stop is not None:
                    break
            else:
                state.stop = StopReason.completed(self.max_epochs)
        except BaseException as exc:
            state.stop = reason_for_exception(exc, self.batch_size)
            self.hooks.after_train(self)
            if isinstance(exc, TrainingDiverged):
                return state
            raise
        self.hooks.after_train(self)
        return state

    def run_epoch(self, epoch: int) -> EpochResult:
        # Every epoch's randomness (sampling, augmentation) derives from (seed, epoch) alone, so a resumed
        # run replays exactly the epochs an uninterrupted one would.
        seed_everything(self.seed * 100_003 + epoch)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.hooks.before_epoch(self, epoch)
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        sums: dict[str, float] = {}
        correct = seen = 0
        steps = len(self.train_loader)
        self.model.train()
        for step, (images, pids, _camids, _indices) in enumerate(self.train_loader, start=1):
            losses, batch_correct = self.train_step(images, pids, epoch, step)
            self.state.global_step += 1
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            correct += batch_correct
            seen += len(pids)
            self.hooks.after_step(self, StepInfo(epoch, step, steps, losses))
        self.scheduler.step()
        metrics = None
        if epoch % self.eval_every == 0 or epoch == self.max_epochs:
            metrics = self.evaluate(self.model)
        result = EpochResult(
            epoch=epoch,
            lr=lr,
            losses={key: value / max(1, steps) for key, value in sums.items()},
            train_top1=correct / max(1, seen),
            metrics=metrics,
            epoch_time=time.perf_counter() - started,
        )
        self._track_best(result)
        return result

    def train_step(self, images: torch.Tensor, pids: torch.Tensor, epoch: int, step: int) -> tuple[dict[str, float], int]:
        images = images.to(self.device, non_blocking=True)
        pids = pids.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            output = self.model(images, pids)
            losses = self.criterion(output, pids)
        total = losses["total"]
        value = float(total.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(value, epoch, step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        correct = int((output.logits.detach().argmax(dim=1) == pids).sum())
        return {key: float(v.detach()) for key, v in losses.items()}, correct

    def _track_best(self, result: EpochResult) -> None:
        if result.metrics is None:
            return
        mean_ap = result.metrics["mAP"]
        if self.state.best_map is None or mean_ap > self.state.best_map:
            self.state.best_map = mean_ap
            self.state.best_epoch = result.epoch
            self.state.best_metrics = dict(result.metrics)
            result.improved = True
