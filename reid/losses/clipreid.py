"""CLIP-ReID's objectives: the prompt stage's image<->text supervised contrastive loss, and the finetune stage's
CE on two classifiers + triplet on two features + image-to-text CE against the frozen text features.

Similarities are cosines times CLIP's logit scale (exp of its frozen `logit_scale`, 100 for OpenAI's weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError
from reid.losses.reid_loss import ReidLoss
from reid.losses.triplet import batch_hard_triplet_loss
from reid.models.clipreid import ClipReidOutput


def supervised_contrastive(anchors: torch.Tensor, candidates: torch.Tensor, anchor_labels: torch.Tensor,
                           candidate_labels: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Mean over anchors of -mean log softmax(scale * cos) over the candidates sharing the anchor's label
    (SupCon, Khosla et al. 2020, as CLIP-ReID uses it between image and text features of one batch)."""
    logits = scale * F.normalize(anchors.float(), dim=1) @ F.normalize(candidates.float(), dim=1).t()
    positives = (anchor_labels[:, None] == candidate_labels[None, :]).float()
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    return -((positives * log_prob).sum(dim=1) / positives.sum(dim=1).clamp(min=1)).mean()


@dataclass
class PromptOutput:
    """The prompt stage's batch: cached image features, the text features of their identities, CLIP's scale."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor


class PromptContrastiveLoss(nn.Module):
    """Image-to-text plus text-to-image supervised contrastive loss; same-identity pairs are the positives."""

    def __init__(self, i2t_weight: float = 1.0, t2i_weight: float = 1.0) -> None:
        super().__init__()
        if i2t_weight < 0 or t2i_weight < 0 or i2t_weight + t2i_weight == 0:
            raise ConfigError(f"loss.i2t_weight={i2t_weight}, loss.t2i_weight={t2i_weight}: expected non-negative "
                              "weights, at least one of them positive")
        self.i2t_weight = i2t_weight
        self.t2i_weight = t2i_weight

    def forward(self, output: PromptOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        scale = output.logit_scale.exp()
        i2t = supervised_contrastive(output.image_features, output.text_features, labels, labels, scale)
        t2i = supervised_contrastive(output.text_features, output.image_features, labels, labels, scale)
        return {"total": self.i2t_weight * i2t + self.t2i_weight * t2i, "i2t": i2t, "t2i": t2i}


class ClipReidLoss(ReidLoss):
    """`ce_weight` × (CE of both classifiers) + `triplet_weight` × (batch-hard triplet on both features)
    + `i2t_weight` × CE of the image-to-text logits (label smoothing on every CE); the parts are `ce`, `tri`, `i2t`."""

    def __init__(self, ce_weight: float = 0.25, triplet_weight: float = 1.0, i2t_weight: float = 1.0,
                 label_smoothing: float = 0.1, margin: float = 0.3, soft_margin: bool = False) -> None:
        super().__init__(ce_weight, triplet_weight, label_smoothing, margin, soft_margin)
        if i2t_weight < 0:
            raise ConfigError(f"loss.i2t_weight={i2t_weight}: expected a non-negative weight")
        self.i2t_weight = i2t_weight

    def forward(self, output: ClipReidOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(output, ClipReidOutput):
            raise ConfigError("loss=clipreid needs head=clipreid (the image-to-text logits and the projected "
                              f"features), got the output of another head ({type(output).__name__})")
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=labels.device)
        if self.ce_weight > 0:
            parts["ce"] = sum(F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
                              for logits in (output.logits, output.projected_logits))
            total = total + self.ce_weight * parts["ce"]
        if self.triplet_weight > 0:
            parts["tri"] = sum(batch_hard_triplet_loss(features, labels, self.margin, self.soft_margin)
                               for features in (output.metric_features, output.projected_features))
            total = total + self.triplet_weight * parts["tri"]
        if self.i2t_weight > 0:
            parts["i2t"] = F.cross_entropy(output.text_logits.float(), labels, label_smoothing=self.label_smoothing)
            total = total + self.i2t_weight * parts["i2t"]
        return {"total": total, **parts}
