"""The training objective: weighted identity cross-entropy plus weighted batch-hard triplet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError
from reid.losses.triplet import batch_hard_triplet_loss
from reid.models.heads import HeadOutput


class ReidLoss(nn.Module):
    """`ce_weight * CE(logits) + triplet_weight * triplet(features)`; a zero weight skips its term entirely.

    Returns a dict with `total` and each active term (`ce`, `tri`), so logs and records can show the parts.
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        triplet_weight: float = 1.0,
        label_smoothing: float = 0.1,
        margin: float = 0.3,
        soft_margin: bool = False,
    ) -> None:
        super().__init__()
        if ce_weight < 0 or triplet_weight < 0 or ce_weight + triplet_weight == 0:
            raise ConfigError(
                f"loss.ce_weight={ce_weight}, loss.triplet_weight={triplet_weight}: expected non-negative weights, "
                "at least one of them positive"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing={label_smoothing}: expected a value in [0, 1)")
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight
        self.label_smoothing = label_smoothing
        self.margin = margin
        self.soft_margin = soft_margin

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
        return {"total": total, **parts}
