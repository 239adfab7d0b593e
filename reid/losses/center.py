"""Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition", ECCV 2016):
pulls each feature towards a learnt centre of its class.

The centres are parameters of the loss, not of the model, and are trained as in BoT (Luo et al., CVPRW 2019, and
its code): by their own plain SGD at a constant LR (0.5), with their gradient divided by the loss weight, so
their update does not depend on that weight (5e-4) while the features still receive the weighted gradient.
"""

from __future__ import annotations

import torch
from torch import nn


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `factor` on the way back."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


class CenterLoss(nn.Module):
    """Mean over the batch of the squared Euclidean distance between each feature and its class's centre.

    That is the form BoT's code computes (the papers write half the sum over the batch); the centres start from a
    standard normal, as in BoT's code.
    `weight` is the factor the caller applies to this term: the centres' gradient is divided by it.
    """

    def __init__(self, num_classes: int, feature_dim: int, weight: float = 1.0) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"center loss weight={weight}: expected > 0")
        self.centers = nn.Parameter(torch.randn(num_classes, feature_dim))
        self.weight = weight

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        centers = _ScaleGradient.apply(self.centers, 1.0 / self.weight)
        return (features.float() - centers[labels]).pow(2).sum(dim=1).mean()
