"""Why a run stopped, in plain words, with what to do next. Every stop path builds one of these."""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

# Kinds of stop. A sweeper ranks `diverged` last and never sees NaN.
COMPLETED = "completed"
EARLY_STOPPING = "early_stopping"
INTERRUPTED = "interrupted"
OUT_OF_MEMORY = "out_of_memory"
DIVERGED = "diverged"
ERROR = "error"
PRUNED = "pruned"

DIVERGED_SCORE = -1.0

# Signals that stop a run after the current step with its checkpoint saved: Ctrl+C, and a scheduler's SIGTERM
# (preemption) or SIGUSR2 (SLURM's `--signal=USR2@<seconds>` before the time limit, submitit's requeue signal).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; raised from the step so nothing else runs on broken weights."""

    def __init__(self, loss: float, epoch: int, step: int) -> None:
        super().__init__(f"loss={loss} at epoch {epoch}, step {step}")
        self.loss, self.epoch, self.step = loss, epoch, step


class RunInterrupted(KeyboardInterrupt):
    """A stop requested by one of STOP_SIGNALS, raised between two steps."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StopReason:
    kind: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def completed(cls, max_epochs: int) -> StopReason:
        return cls(COMPLETED, f"all {max_epochs} epochs completed", {"max_epochs": max_epochs})

    @classmethod
    def early_stopping(cls, epochs_without_improvement: int, patience: int, monitor: str = "mAP") -> StopReason:
        return cls(
            EARLY_STOPPING,
            f"no {monitor} improvement for {epochs_without_improvement} epochs (early-stopping patience {patience})",
            {"epochs_without_improvement": epochs_without_improvement, "patience": patience, "monitor": monitor},
        )

    @classmethod
    def interrupted(cls, signum: int = signal.SIGINT) -> StopReason:
        if signum == signal.SIGTERM:
            return cls(INTERRUPTED, "terminated by SIGTERM", {"signal": "SIGTERM"})
        if signum == signal.SIGUSR2:
            return cls(INTERRUPTED, "stopped by SIGUSR2 (the job scheduler's preemption or time-limit signal)",
                       {"signal": "SIGUSR2"})
        return cls(INTERRUPTED, "interrupted by the user (Ctrl+C)", {"signal": "SIGINT"})

    @classmethod
    def pruned(cls, epoch: int) -> StopReason:
        return cls(PRUNED, f"pruned by the sweep at epoch {epoch}", {"epoch": epoch})

    @classmethod
    def out_of_memory(cls, batch_size: int) -> StopReason:
        return cls(OUT_OF_MEMORY, f"out of memory at batch size {batch_size}", {"batch_size": batch_size})

    @classmethod
    def diverged(cls, error: TrainingDiverged) -> StopReason:
        return cls(
            DIVERGED,
            f"diverged: loss={error.loss} at epoch {error.epoch}, step {error.step}",
            {"loss": str(error.loss), "epoch": error.epoch, "step": error.step},
        )

    @classmethod
    def error(cls, exc: BaseException) -> StopReason:
        text = str(exc).strip() or repr(exc)
        return cls(ERROR, f"error: {type(exc).__name__}: {text}", {"type": type(exc).__name__})


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def reason_for_exception(exc: BaseException, batch_size: int) -> StopReason:
    """Map whatever ended the loop to the reason a person reads."""
    if isinstance(exc, RunInterrupted):
        return StopReason.interrupted(exc.signum)
    if isinstance(exc, KeyboardInterrupt):
        return StopReason.interrupted()
    if isinstance(exc, TrainingDiverged):
        return StopReason.diverged(exc)
    if is_out_of_memory(exc):
        return StopReason.out_of_memory(batch_size)
    return StopReason.error(exc)


def pass_on_signal(signum: int) -> None:
    """Deliver a stop signal again, now that the run's checkpoint is saved, to the handler the process had before
    the run: one a job runner installed (submitit's SIGUSR2 handler requeues the job, and exits) runs now.

    Default, ignoring and Python's own Ctrl+C handlers are left alone; the caller then exits with 128 + signum.
    """
    handler = signal.getsignal(signum)
    if callable(handler) and handler is not signal.default_int_handler:
        signal.raise_signal(signum)
