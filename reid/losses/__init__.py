"""Losses: identity cross-entropy, batch-hard triplet, and their weighted sum."""

from reid.losses.reid_loss import ReidLoss
from reid.losses.triplet import batch_hard_triplet_loss

__all__ = ["ReidLoss", "batch_hard_triplet_loss"]
