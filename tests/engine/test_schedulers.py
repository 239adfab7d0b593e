"""LR factors per epoch, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from reid.engine.schedulers import ConstantLR, WarmupCosineLR, WarmupMultiStepLR


def lrs(scheduler, epochs: int) -> list[float]:
    values = []
    for _ in range(epochs):
        values.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_multistep():
    values = lrs(WarmupMultiStepLR(optimizer(), milestones=[3, 5], gamma=0.1, warmup_epochs=2, warmup_factor=0.1), 7)
    assert values == pytest.approx([0.1, 0.55, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_warmup_multistep_rejects_unsorted_milestones():
    with pytest.raises(ValueError, match="scheduler.milestones"):
        WarmupMultiStepLR(optimizer(), milestones=[50, 20])


def test_warmup_cosine_ends_at_the_floor():
    values = lrs(WarmupCosineLR(optimizer(), max_epochs=6, warmup_epochs=2, warmup_factor=0.5, min_lr_factor=0.0), 7)
    assert values[:3] == pytest.approx([0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert values[6] == pytest.approx(0.0, abs=1e-12)


def test_constant():
    assert lrs(ConstantLR(optimizer(0.3)), 3) == pytest.approx([0.3, 0.3, 0.3])


def test_state_dict_round_trip_resumes_the_schedule():
    first = WarmupMultiStepLR(optimizer(), milestones=[2], warmup_epochs=1)
    lrs(first, 3)
    second = WarmupMultiStepLR(optimizer(), milestones=[2], warmup_epochs=1)
    second.load_state_dict(first.state_dict())
    assert second.last_epoch == first.last_epoch == 3
