"""Loss values against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from reid.losses import ReidLoss, batch_hard_triplet_loss
from reid.models import HeadOutput


def test_batch_hard_triplet_by_hand():
    # 1-D points: ids 0 at {0, 1}, id 1 at {3, 5}.
    features = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # hardest pos / neg: a0: 1 / 3, a1: 1 / 2, a2: 2 / 2, a3: 2 / 4
    expected = (max(0, 1 - 3 + 0.3) + max(0, 1 - 2 + 0.3) + max(0, 2 - 2 + 0.3) + max(0, 2 - 4 + 0.3)) / 4
    assert batch_hard_triplet_loss(features, labels, margin=0.3).item() == pytest.approx(expected, abs=1e-5)
    soft = sum(math.log1p(math.exp(g)) for g in (1 - 3, 1 - 2, 2 - 2, 2 - 4)) / 4
    assert batch_hard_triplet_loss(features, labels, soft_margin=True).item() == pytest.approx(soft, abs=1e-5)


def test_triplet_without_positives_is_zero_and_differentiable():
    features = torch.randn(3, 4, requires_grad=True)
    loss = batch_hard_triplet_loss(features, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0


def test_reid_loss_weights_and_parts():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    features = torch.tensor([[0.0], [1.0]])
    labels = torch.tensor([0, 1])
    out = HeadOutput(logits=logits, metric_features=features)
    ce = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1).item()
    losses = ReidLoss(ce_weight=0.3, triplet_weight=2.0)(out, labels)
    assert set(losses) == {"total", "ce", "tri"}
    assert losses["ce"].item() == pytest.approx(ce)
    assert losses["total"].item() == pytest.approx(0.3 * ce + 2.0 * losses["tri"].item())
    only_ce = ReidLoss(ce_weight=1.0, triplet_weight=0.0)(out, labels)
    assert set(only_ce) == {"total", "ce"}


def test_reid_loss_rejects_bad_weights():
    with pytest.raises(ValueError, match="loss.ce_weight=0.0, loss.triplet_weight=0.0"):
        ReidLoss(ce_weight=0.0, triplet_weight=0.0)
