"""Per-epoch LR schedules with linear warm-up. Each is a LambdaLR, so its state_dict resumes exactly.

The factor for epoch e (0-based, e = epochs already completed) multiplies every parameter group's base LR.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from reid.errors import ConfigError


def _warmup_factor(epoch: int, warmup_epochs: int, warmup_factor: float) -> float:
    if epoch >= warmup_epochs:
        return 1.0
    return warmup_factor + (1.0 - warmup_factor) * epoch / warmup_epochs


class WarmupMultiStepLR(LambdaLR):
    """Warm up linearly from `warmup_factor * lr`, then multiply by `gamma` once the epoch passes each milestone."""

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[int] = (40, 70),
        gamma: float = 0.1,
        warmup_epochs: int = 10,
        warmup_factor: float = 0.01,
    ) -> None:
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ConfigError(f"scheduler.milestones={milestones}: expected increasing epochs")
        self.milestones, self.gamma = milestones, gamma
        self.warmup_epochs, self.warmup_factor = warmup_epochs, warmup_factor
        super().__init__(optimizer, self.factor)

    def factor(self, epoch: int) -> float:
        decay = self.gamma ** bisect_right(self.milestones, epoch)
        return _warmup_factor(epoch, self.warmup_epochs, self.warmup_factor) * decay


class WarmupCosineLR(LambdaLR):
    """Warm up linearly, then follow a half cosine from the base LR down to `min_lr_factor * lr` at `max_epochs`."""

    def __init__(
        self,
        optimizer: Optimizer,
        max_epochs: int,
        warmup_epochs: int = 5,
        warmup_factor: float = 0.01,
        min_lr_factor: float = 0.01,
    ) -> None:
        self.max_epochs, self.warmup_epochs = max_epochs, warmup_epochs
        self.warmup_factor, self.min_lr_factor = warmup_factor, min_lr_factor
        super().__init__(optimizer, self.factor)

    def factor(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return _warmup_factor(epoch, self.warmup_epochs, self.warmup_factor)
        span = max(1, self.max_epochs - self.warmup_epochs)
        progress = min(1.0, (epoch - self.warmup_epochs) / span)
        return self.min_lr_factor + (1.0 - self.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ConstantLR(LambdaLR):
    """The base LR for every epoch."""

    def __init__(self, optimizer: Optimizer) -> None:
        super().__init__(optimizer, self.factor)

    def factor(self, epoch: int) -> float:
        return 1.0
