"""Evaluation during training: embed query and gallery, rank by distance, score with the Market-1501 protocol."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reid.metrics import compute_distance_matrix, evaluate_rank


@torch.no_grad()
def extract_features(model: nn.Module, loader: DataLoader, device: torch.device,
                     amp: bool) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Embeddings (float32, on CPU), pids and camids of every image the loader yields, in order."""
    was_training = model.training
    model.eval()
    features, pids, camids = [], [], []
    try:
        for images, batch_pids, batch_camids, _ in loader:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                embedding = model(images.to(device, non_blocking=True))
            features.append(embedding.float().cpu())
            pids.append(batch_pids.numpy())
            camids.append(batch_camids.numpy())
    finally:
        model.train(was_training)
    return torch.cat(features), np.concatenate(pids), np.concatenate(camids)


class Evaluator:
    """Callable that scores a model: mAP, rank-1/5/10 and mINP."""

    def __init__(self, loader: DataLoader, num_query: int, device: torch.device, amp: bool, distance: str) -> None:
        self.loader = loader
        self.num_query = num_query
        self.device = device
        self.amp = amp
        self.distance = distance

    def __call__(self, model: nn.Module) -> dict[str, float]:
        features, pids, camids = extract_features(model, self.loader, self.device, self.amp)
        q = self.num_query
        distances = compute_distance_matrix(features[:q], features[q:], metric=self.distance)
        result = evaluate_rank(distances, pids[:q], pids[q:], camids[:q], camids[q:], max_rank=10)
        return {
            "mAP": float(result.mAP),
            "rank1": float(result.cmc[0]),
            "rank5": float(result.cmc[min(4, len(result.cmc) - 1)]),
            "rank10": float(result.cmc[min(9, len(result.cmc) - 1)]),
            "mINP": float(result.mINP),
        }
