"""The training loop. Everything optional (records, checkpoints, early stopping, logging) lives in hooks."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reid.engine import distributed
from reid.engine.acceleration import is_compilation_failure, log_compilation_failure
from reid.engine.hooks import EpochResult, Hook, HookList, StepInfo
from reid.engine.precision import Precision
from reid.engine.stopping import STOP_SIGNALS, RunInterrupted, StopReason, TrainingDiverged, reason_for_exception
from reid.utils.seed import capture_rng_state, restore_rng_state, seed_everything

# One batch (images or what the stage trains on, labels) -> (losses with a `total`, correctly classified count).
# (inputs, pids, camids) -> (the losses by name, with `total`; the count of correctly classified inputs)
BatchLosses = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[dict[str, torch.Tensor], torch.Tensor]]


@dataclass
class TrainState:
    """Progress that hooks read and the checkpoint saves: enough to continue a run exactly.

    `monitor` (trainer.monitor) is the metric that picks the best epoch; `best_metrics` are every metric of that
    epoch, i.e. of best_model.pth, and the best figures derive from them.
    """

    epoch: int = 0
    global_step: int = 0
    monitor: str = "mAP"
    best_epoch: int = 0
    best_metrics: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stop: StopReason | None = None
    # trainer.objectives of best_model.pth, set after a finished run (reid.engine.objectives); not checkpointed.
    objectives: dict[str, float] | None = None

    @property
    def best_value(self) -> float | None:
        """The monitored metric of the best epoch (None before the first evaluation)."""
        return None if self.best_metrics is None else self.best_metrics.get(self.monitor)

    @property
    def best_map(self) -> float | None:
        """The mAP of the best epoch: the best mAP when `monitor` is mAP."""
        return None if self.best_metrics is None else self.best_metrics.get("mAP")


@dataclass
class EpochProgress:
    """The running totals of the epoch in progress; saved when a run is interrupted between steps."""

    epoch: int
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    correct: int = 0
    seen: int = 0
    elapsed: float = 0.0


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
        precision: Precision,
        seed: int,
        memory_format: torch.memory_format = torch.contiguous_format,
        compile: bool = False,
        grad_clip: float | None = None,
        limit_train_batches: int | None = None,
        monitor: str = "mAP",
        batch_transform: Callable[[Any, torch.device], torch.Tensor] | None = None,
        loss_optimizer: torch.optim.Optimizer | None = None,
        batch_losses: BatchLosses | None = None,
    ) -> None:
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        # The loss's own parameters (center loss centres) step with it, outside the LR schedule. Every rank computes
        # the loss of the whole global batch, so their gradient is the same on every rank without a reduction.
        self.loss_optimizer = loss_optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.evaluate = evaluate
        self.hooks = HookList(hooks)
        self.max_epochs = max_epochs
        self.eval_every = eval_every
        self.device = device
        self.precision = precision
        self.memory_format = memory_format
        self.seed = seed
        self.grad_clip = grad_clip
        self.limit_train_batches = limit_train_batches
        # What the loader's batches go through on the device before the step (the GPU pipeline's augmentations).
        self.batch_transform = batch_transform or (lambda images, device: images)
        # A batch's losses and correct count: the model's forward and the criterion, unless the stage trains on
        # something else (stage.step, e.g. CLIP-ReID's prompt stage on cached image features).
        self.batch_losses: BatchLosses = batch_losses or self.model_losses
        self.scaler = precision.grad_scaler()
        # trainer.compile: whether the step runs the compiled replica; a failed compilation turns it off for good.
        self.compile = compile
        self.compile_failure: str | None = None
        self.state = TrainState(monitor=monitor)
        self.progress: EpochProgress | None = None
        self.stop_signal: int | None = None
        # What the training step calls: the model itself, or its DDP wrapper (made on first use, see `replica`).
        self._replica: nn.Module | None = None

    @property
    def replica(self) -> nn.Module:
        if self._replica is None:
            replica = distributed.replicate(self.model)
            if self.compile:
                try:
                    replica = torch.compile(replica)
                except Exception as exc:  # noqa: BLE001 - any refusal means: train uncompiled
                    self.compile, self.compile_failure = False, log_compilation_failure(exc)
            self._replica = replica
        return self._replica

    def step_settings(self) -> dict[str, Any]:
        """How the training step computes, for the run record (the compile entry says what really happened)."""
        if self.compile_failure is not None:
            compiled = f"failed, running uncompiled: {self.compile_failure}"
        else:
            compiled = "on" if self.compile else "off"
        dtype = self.precision.autocast_dtype
        return {
            "precision": self.precision.name,
            "autocast_dtype": None if dtype is None else str(dtype).removeprefix("torch."),
            "grad_scaler": self.precision.scales_gradients,
            "channels_last": self.memory_format == torch.channels_last,
            "compile": compiled,
            "optimizer_step": next((flag for flag in ("fused", "foreach")
                                    if self.optimizer.param_groups[0].get(flag)), "default"),
        }

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
                # Rank 0's hooks decide (early stopping, pruning); every rank stops after the same epoch.
                state.stop = distributed.broadcast_from_main(state.stop)
                self._agree_on_signal()
                if self.stop_signal is not None:
                    raise RunInterrupted(self.stop_signal)
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
        # Every epoch's randomness derives from (seed, epoch) alone, so a resumed run replays exactly the epochs an
        # uninterrupted one would: the sampler's batches, each image's augmentation (drawn from (seed, epoch, its
        # place in the epoch), see reid.data.transforms) and the global RNGs seeded here, per process.
        seed_everything((self.seed * 100_003 + epoch) * distributed.world_size() + distributed.rank())
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.hooks.before_epoch(self, epoch)
        progress = self.progress if self.progress is not None and self.progress.epoch == epoch else EpochProgress(epoch)
        resume_at = progress.step
        self.progress = progress
        started = time.perf_counter() - progress.elapsed
        lr = self.optimizer.param_groups[0]["lr"]
        steps = len(self.train_loader)
        if self.limit_train_batches is not None:
            steps = min(steps, self.limit_train_batches)
        self.model.train()
        batches = itertools.islice(self.train_loader, steps)
        for step, (images, pids, camids, _indices) in enumerate(batches, start=1):
            if step <= resume_at:
                continue  # already trained before an interruption; loading it replays the same random draws
            images = self.batch_transform(images, self.device)
            losses, batch_correct = self.train_step(images, pids, epoch, step, camids)
            self.state.global_step += 1
            for key, value in losses.items():
                progress.sums[key] = progress.sums.get(key, 0.0) + value
            progress.correct += batch_correct
            progress.seen += len(pids) * distributed.world_size()
            progress.step = step
            progress.elapsed = time.perf_counter() - started
            self.hooks.after_step(self, StepInfo(epoch, step, steps, losses))
            self._agree_on_signal()
            if self.stop_signal is not None:
                raise RunInterrupted(self.stop_signal)
        self.scheduler.step()
        metrics = None
        if epoch % self.eval_every == 0 or epoch == self.max_epochs:
            metrics = self.evaluate(self.model)
        result = EpochResult(
            epoch=epoch,
            lr=lr,
            losses={key: value / max(1, steps) for key, value in progress.sums.items()},
            train_top1=progress.correct / max(1, progress.seen),
            metrics=metrics,
            epoch_time=time.perf_counter() - started,
        )
        self.progress = None
        self._track_best(result)
        return result

    def train_step(self, images: torch.Tensor, pids: torch.Tensor, epoch: int, step: int,
                   camids: torch.Tensor | None = None) -> tuple[dict[str, float], int]:
        """One optimizer step on the global batch; returns its loss figures and correct count (of all ranks).

        `camids` (each image's camera) reach a model with a camera embedding. With trainer.compile, a compilation
        error (at the first step, or at a later recompilation) is logged and the step runs again uncompiled; the
        run goes on uncompiled.
        """
        images = images.to(self.device, memory_format=self.memory_format, non_blocking=True)
        pids = pids.to(self.device, non_blocking=True)
        camids = None if camids is None else camids.to(self.device, non_blocking=True)
        try:
            return self._optimize(images, pids, camids, epoch, step)
        except Exception as exc:
            if not (self.compile and is_compilation_failure(exc)):
                raise
            self.compile, self.compile_failure, self._replica = False, log_compilation_failure(exc), None
            self.optimizer.zero_grad(set_to_none=True)
            return self._optimize(images, pids, camids, epoch, step)

    def _optimize(self, images: torch.Tensor, pids: torch.Tensor, camids: torch.Tensor | None, epoch: int,
                  step: int) -> tuple[dict[str, float], int]:
        with self.precision.autocast():
            losses, correct = self.batch_losses(images, pids, camids)
        total = losses["total"]
        # One device sync per step: the loss parts and the correct count come back together.
        *values, batch_correct = torch.stack([*(v.detach().float() for v in losses.values()), correct.float()]).tolist()
        figures = dict(zip(losses, values))
        if not math.isfinite(figures["total"]):
            raise TrainingDiverged(figures["total"], epoch, step)
        optimizers = [self.optimizer] + ([self.loss_optimizer] if self.loss_optimizer is not None else [])
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        return figures, int(batch_correct)

    def model_losses(self, images: torch.Tensor, pids: torch.Tensor,
                     camids: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The criterion's losses of the model's output for the global batch, and its correctly classified count."""
        output = self.replica(images, pids, camids)
        # Every rank computes the loss of the whole global batch (batch-hard mining sees all of it); the
        # gather's backward and DDP's average then give exactly that loss's gradient.
        output = dataclasses.replace(output, **{field.name: distributed.all_gather(getattr(output, field.name))
                                                for field in dataclasses.fields(output)})
        pids = distributed.all_gather(pids)
        losses = self.criterion(output, pids)
        return losses, (output.logits.detach().argmax(dim=1) == pids).sum()

    def _track_best(self, result: EpochResult) -> None:
        if result.metrics is None:
            return
        value = result.metrics[self.state.monitor]
        if self.state.best_value is None or value > self.state.best_value:
            self.state.best_epoch = result.epoch
            self.state.best_metrics = dict(result.metrics)
            result.improved = True

    def unfreeze_all(self, lr_factor: float) -> None:
        """Make every parameter trainable; the newly trainable ones join the optimizer at `lr_factor` × its LR."""
        known = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        self.model.set_freeze_level(0)
        self._replica = None  # DDP fixed its set of trained parameters when it was made
        new = [p for p in self.model.trainable_parameters() if id(p) not in known]
        if not new:
            return
        base_lr = self.scheduler.base_lrs[0] * lr_factor
        self.optimizer.add_param_group({"params": new, "lr": base_lr * self.scheduler.lr_lambdas[0](
            self.scheduler.last_epoch), "initial_lr": base_lr})
        # The LR schedule drives the new group with the same factor as the first one.
        self.scheduler.base_lrs.append(base_lr)
        self.scheduler.lr_lambdas.append(self.scheduler.lr_lambdas[0])

    def _agree_on_signal(self) -> None:
        self.stop_signal = distributed.first_signal(self.stop_signal)

    def request_stop(self, signum: int, frame: Any = None) -> None:
        """Signal handler: the first signal stops after the current step; a second one exits at once."""
        if self.stop_signal is not None:
            # Files are written atomically, so the last complete checkpoint still stands.
            os._exit(128 + signum)
        self.stop_signal = signum

    def handle_signals(self) -> Callable[[], None]:
        """Install the STOP_SIGNALS handlers for the duration of a run; returns the function that restores them."""
        previous = {sig: signal.signal(sig, self.request_stop) for sig in STOP_SIGNALS}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def checkpoint(self, config: dict[str, Any]) -> dict[str, Any]:
        """Everything needed to continue the run exactly where it stands (weights-only-safe values)."""
        state = self.state
        sampler = getattr(self.train_loader, "sampler", None)
        progress = self.progress
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "architecture": self.model.architecture,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loss": {k: v.detach().cpu() for k, v in self.criterion.state_dict().items()},
            "loss_optimizer": None if self.loss_optimizer is None else self.loss_optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": state.epoch,
            "global_step": state.global_step,
            "monitor": state.monitor,
            "best_map": state.best_map,
            "best_epoch": state.best_epoch,
            "best_metrics": state.best_metrics,
            "epochs_without_improvement": state.epoch - state.best_epoch if state.best_value is not None else 0,
            "history": state.history,
            "epoch_progress": None if progress is None else vars(progress).copy(),
            "freeze_level": self.model.freeze_level,
            "unfrozen_lr_factor": (self.optimizer.param_groups[-1]["initial_lr"] / self.scheduler.base_lrs[0]
                                   if len(self.optimizer.param_groups) > 1 else None),
            "rng": capture_rng_state(),
            "sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else None,
            "config": config,
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Load a checkpoint made by `checkpoint()`; the next `fit()` continues after its last step.

        The best so far is taken from the checkpoint's `best_metrics` under this trainer's monitor, so checkpoints
        written before `trainer.monitor` existed (monitoring mAP) resume as they were.
        """
        if checkpoint["unfrozen_lr_factor"] is not None and len(self.optimizer.param_groups) == 1:
            self.unfreeze_all(checkpoint["unfrozen_lr_factor"])  # the run had passed transfer_epochs
        self.model.set_freeze_level(checkpoint["freeze_level"])
        self._replica = None
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        # Checkpoints from before losses had parameters hold neither; a loss with parameters then refuses to load.
        self.criterion.load_state_dict(checkpoint.get("loss") or {})
        if self.loss_optimizer is not None:
            self.loss_optimizer.load_state_dict(checkpoint["loss_optimizer"])
        if checkpoint["scaler"] or not self.scaler.is_enabled():
            # An empty state comes from a disabled scaler (float32, bf16): a 16-mixed resume starts a new scale.
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = TrainState(
            epoch=checkpoint["epoch"],
            global_step=checkpoint["global_step"],
            monitor=self.state.monitor,
            best_epoch=checkpoint["best_epoch"],
            best_metrics=checkpoint["best_metrics"],
            history=list(checkpoint["history"]),
        )
        progress = checkpoint.get("epoch_progress")
        self.progress = EpochProgress(**progress) if progress else None
        sampler = getattr(self.train_loader, "sampler", None)
        if checkpoint.get("sampler") is not None and hasattr(sampler, "load_state_dict"):
            sampler.load_state_dict(checkpoint["sampler"])
        restore_rng_state(checkpoint["rng"])
