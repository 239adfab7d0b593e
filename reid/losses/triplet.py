"""Batch-hard triplet loss: for each anchor, its farthest positive against its nearest negative in the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """Euclidean distances with a floor, so the gradient of sqrt stays finite at zero distance."""
    squared = features.pow(2).sum(dim=1, keepdim=True)
    distances = squared + squared.t() - 2.0 * features @ features.t()
    return distances.clamp(min=1e-12).sqrt()


def batch_hard_triplet_loss(
    features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3, soft_margin: bool = False
) -> torch.Tensor:
    """Mean over anchors of max(0, d(a, hardest p) - d(a, hardest n) + margin), or its soft-margin form.

    Anchors without a positive or a negative in the batch are skipped; a batch with none left gives 0.
    """
    distances = pairwise_euclidean(features.float())
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives = same & ~eye
    negatives = ~same
    valid = positives.any(dim=1) & negatives.any(dim=1)
    if not valid.any():
        return features.sum() * 0.0
    hardest_positive = torch.where(positives, distances, torch.full_like(distances, -1.0)).amax(dim=1)
    hardest_negative = torch.where(negatives, distances, torch.full_like(distances, float("inf"))).amin(dim=1)
    gap = hardest_positive[valid] - hardest_negative[valid]
    if soft_margin:
        return F.softplus(gap).mean()
    return F.relu(gap + margin).mean()
