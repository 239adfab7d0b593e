"""Heads produce the right outputs; freeze levels stop gradients and keep frozen BatchNorm fixed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reid.models import ArcFaceHead, BNNeckHead, HeadOutput, LinearHead, ReidModel


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.feature_dim = 8

    def forward(self, x):
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def make_model(head: nn.Module) -> ReidModel:
    torch.manual_seed(0)
    return ReidModel(TinyBackbone(), head, {"backbone": "tiny"})


@pytest.mark.parametrize("head", [BNNeckHead(8, 5), LinearHead(8, 5), ArcFaceHead(8, 5)])
def test_heads_train_and_eval_outputs(head):
    model = make_model(head)
    out = model(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == (4, 5) and out.metric_features.shape == (4, 8)
    model.eval()
    assert model(torch.randn(4, 3, 8, 8)).shape == (4, 8)


def test_bnneck_classifier_has_no_bias_and_neck_bias_never_trains():
    head = BNNeckHead(8, 5)
    assert head.classifier.bias is None
    model = make_model(head)
    for level in (2, 0):
        model.set_freeze_level(level)
        assert not model.head.neck.bias.requires_grad


def test_arcface_adds_the_angular_margin_to_the_target_only():
    head = ArcFaceHead(4, 3, scale=10.0, margin=0.5).train()
    features = torch.randn(2, 4)
    labels = torch.tensor([1, 2])
    embedding = head.neck(features)
    plain = head.classifier(embedding)
    margined = head.classifier(embedding, labels)
    cos = plain / 10.0
    expected_target = 10.0 * torch.cos(torch.acos(cos[0, 1].clamp(-1 + 1e-7, 1 - 1e-7)) + 0.5)
    assert torch.allclose(margined[0, 1], expected_target, atol=1e-5)
    assert torch.allclose(margined[0, 0], plain[0, 0]) and torch.allclose(margined[0, 2], plain[0, 2])


def test_arcface_rejects_bad_margin():
    with pytest.raises(ValueError, match="head.margin"):
        ArcFaceHead(4, 3, margin=math.pi)


@pytest.mark.parametrize("level,frozen", [(0, []), (1, ["backbone"]), (2, ["backbone", "head.neck"])])
def test_freeze_levels(level, frozen):
    model = make_model(BNNeckHead(8, 5))
    model.set_freeze_level(level)
    model.train()
    for name, module in [("backbone", model.backbone), ("head.neck", model.head.neck)]:
        is_frozen = name in frozen
        assert all(not p.requires_grad for p in module.parameters()) == is_frozen
        assert module.training == (not is_frozen)
    assert model.head.classifier.weight.requires_grad
    assert f"freeze_level={level}" in model.describe_freezing()


def test_frozen_parts_are_bit_identical_after_steps_and_bn_stats_do_not_drift():
    model = make_model(BNNeckHead(8, 5))
    model.set_freeze_level(1)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    classifier_before = model.head.classifier.weight.clone()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    model.train()
    for _ in range(3):
        out = model(torch.randn(6, 3, 8, 8) * 3 + 1, torch.tensor([0, 0, 1, 1, 2, 2]))
        loss = nn.functional.cross_entropy(out.logits, torch.tensor([0, 0, 1, 1, 2, 2]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.head.classifier.weight, classifier_before)
    assert all(p.grad is None for p in model.backbone.parameters())
