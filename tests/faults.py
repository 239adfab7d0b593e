"""Loss classes that inject faults, selected in tests through the normal `loss._target_` mechanism."""

from __future__ import annotations

import time

import torch

from reid.losses import ReidLoss


class _CountingLoss(ReidLoss):
    def __init__(self, after_steps: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.after_steps = after_steps
        self.calls = 0

    def forward(self, output, labels):
        self.calls += 1
        losses = super().forward(output, labels)
        return self.fault(losses) if self.calls > self.after_steps else losses


class NanLoss(_CountingLoss):
    """Turns the loss into NaN after `after_steps` steps."""

    def fault(self, losses):
        return {**losses, "total": losses["total"] * float("nan")}


class OutOfMemoryLoss(_CountingLoss):
    """Raises the error CUDA raises when memory runs out, after `after_steps` steps."""

    def fault(self, losses):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class SlowLoss(ReidLoss):
    """Sleeps in every step, so a test can signal a run in the middle of an epoch."""

    def __init__(self, sleep_seconds: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sleep_seconds = sleep_seconds

    def forward(self, output, labels):
        time.sleep(self.sleep_seconds)
        return super().forward(output, labels)


class RecordingLoss(ReidLoss):
    """Appends every step's total loss, at full precision, to `record_to` + `.rank<R>` (R: this process's rank)."""

    def __init__(self, record_to: str = "losses", **kwargs) -> None:
        super().__init__(**kwargs)
        self.record_to = record_to

    def forward(self, output, labels):
        losses = super().forward(output, labels)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        with open(f"{self.record_to}.rank{rank}", "a") as stream:
            stream.write(f"{float(losses['total'].detach())!r}\n")
        return losses
