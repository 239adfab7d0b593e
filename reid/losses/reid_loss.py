"""The training objective: weighted identity cross-entropy, batch-hard triplet and center loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError
from reid.losses.center import CenterLoss
from reid.losses.triplet import batch_hard_triplet_loss
from reid.models.heads import HeadOutput


class ReidLoss(nn.Module):
    """`ce_weight * CE(logits) + triplet_weight * triplet(features) + center_weight * center(features)`; a zero
    weight skips its term entirely. The metric terms see the head's `metric_features` (the BN neck's input).

    Returns a dict with `total` and each active term (`ce`, `tri`, `center`), so logs and records can show the parts.
    `num_classes` and `feature_dim` are passed by reid (the center loss keeps one centre per training identity).
    The centres train with their own optimizer (`make_optimizer`), see reid.losses.center.
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        triplet_weight: float = 1.0,
        label_smoothing: float = 0.1,
        margin: float = 0.3,
        soft_margin: bool = False,
        center_weight: float = 0.0,
        center_lr: float = 0.5,
        num_classes: int | None = None,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        if ce_weight < 0 or triplet_weight < 0 or ce_weight + triplet_weight == 0:
            raise ConfigError(
                f"loss.ce_weight={ce_weight}, loss.triplet_weight={triplet_weight}: expected non-negative weights, "
                "at least one of them positive"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing={label_smoothing}: expected a value in [0, 1)")
        if center_weight < 0 or center_lr <= 0:
            raise ConfigError(f"loss.center_weight={center_weight}, loss.center_lr={center_lr}: expected a weight "
                              ">= 0 (0: no center loss) and an LR > 0")
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight
        self.label_smoothing = label_smoothing
        self.margin = margin
        self.soft_margin = soft_margin
        self.center_weight = center_weight
        self.center_lr = center_lr
        self.center = None
        if center_weight > 0:
            if num_classes is None or feature_dim is None:
                raise ValueError("loss.center_weight > 0 needs num_classes and feature_dim (reid passes them)")
            self.center = CenterLoss(num_classes, feature_dim, weight=center_weight)

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer of the loss's own parameters, the centres; None without a center loss.

        Plain SGD at a constant `center_lr`, outside the LR schedule (no warm-up, no steps), as BoT's code trains
        them. It is a second optimizer, not a parameter group of the model's: the model's (Adam) would normalise
        away the 1/weight gradient scaling and move every centre by about the LR each step.
        """
        if self.center is None:
            return None
        return torch.optim.SGD(self.center.parameters(), lr=self.center_lr)

    def check_batch(self, p: int, k: int) -> None:
        """Refuse a P x K batch in which the triplet term can never act: it needs a positive and a negative."""
        if self.triplet_weight <= 0:
            return
        needs = f"loss.triplet_weight={self.triplet_weight} (batch-hard triplet) needs"
        if k < 2:
            raise ConfigError(f"data.k={k}: {needs} at least 2 images of each identity in a batch, or no anchor "
                              "has a positive; set data.k >= 2, or use loss=ce")
        if p < 2:
            raise ConfigError(f"data.p={p}: {needs} at least 2 identities in a batch, or no anchor has a negative; "
                              "set data.p >= 2, or use loss=ce")

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=labels.device)
        if self.ce_weight > 0:
            parts["ce"] = F.cross_entropy(output.logits.float(), labels, label_smoothing=self.label_smoothing)
            total = total + self.ce_weight * parts["ce"]
        if self.triplet_weight > 0:
            parts["tri"] = batch_hard_triplet_loss(output.metric_features, labels, self.margin, self.soft_margin)
            total = total + self.triplet_weight * parts["tri"]
        if self.center is not None:
            parts["center"] = self.center(output.metric_features, labels)
            total = total + self.center_weight * parts["center"]
        return {"total": total, **parts}
