"""Losses: identity cross-entropy, batch-hard triplet, center loss, and their weighted sum."""

from reid.losses.center import CenterLoss
from reid.losses.reid_loss import ReidLoss
from reid.losses.triplet import batch_hard_triplet_loss

__all__ = ["CenterLoss", "ReidLoss", "batch_hard_triplet_loss"]
