"""Heads: a neck that turns pooled backbone features into the embedding, and an identity classifier.

Every head returns a `HeadOutput` in training and the retrieval embedding in eval mode. `neck` and
`classifier` are separate modules so freezing can tell them apart, and `classifier` applied to the eval-mode
embedding gives the class logits (ArcFace: without its margin), which closed-set validation scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError


@dataclass
class HeadOutput:
    """What the losses see: class logits and the features the metric (triplet) loss pulls together."""

    logits: torch.Tensor
    metric_features: torch.Tensor


class BNNeckHead(nn.Module):
    """BN neck: triplet on the pooled feature, CE through a bias-free classifier on its batch-normalised copy."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.neck = nn.BatchNorm1d(in_features)
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_features, num_classes, bias=False)
        nn.init.constant_(self.neck.weight, 1.0)
        nn.init.constant_(self.neck.bias, 0.0)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> HeadOutput | torch.Tensor:
        embedding = self.neck(features)
        if not self.training:
            return embedding
        return HeadOutput(logits=self.classifier(embedding), metric_features=features)


class LinearHead(nn.Module):
    """A linear classifier with bias directly on the pooled feature, which is also the embedding."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.neck = nn.Identity()
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> HeadOutput | torch.Tensor:
        if not self.training:
            return features
        return HeadOutput(logits=self.classifier(features), metric_features=features)


class ArcFaceClassifier(nn.Module):
    """Cosine classifier with an additive angular margin on the target class (ArcFace)."""

    def __init__(self, in_features: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale
        self.margin = margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = F.linear(F.normalize(features), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        if labels is None:
            return cosine * self.scale
        theta = torch.acos(cosine)
        target = torch.cos(theta + self.margin)
        # Past pi - margin the angle would wrap around; fall back to CosFace-style subtraction there.
        target = torch.where(theta + self.margin < math.pi, target, cosine - self.margin * math.sin(self.margin))
        one_hot = F.one_hot(labels, num_classes=cosine.shape[1]).to(cosine.dtype)
        return self.scale * (one_hot * target + (1.0 - one_hot) * cosine)


class ArcFaceHead(nn.Module):
    """BN neck followed by an ArcFace classifier; the L2-normalised BN feature is the embedding."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.5) -> None:
        super().__init__()
        if scale <= 0 or not 0 <= margin < math.pi / 2:
            raise ConfigError(f"head.scale={scale}, head.margin={margin}: expected scale > 0 and 0 <= margin < pi/2")
        self.neck = nn.BatchNorm1d(in_features)
        self.classifier = ArcFaceClassifier(in_features, num_classes, scale, margin)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> HeadOutput | torch.Tensor:
        embedding = self.neck(features)
        if not self.training:
            return F.normalize(embedding)
        return HeadOutput(logits=self.classifier(embedding, labels), metric_features=features)
