"""Evaluation during training: embed query and gallery, rank by distance, score with the Market-1501 protocol.

On a closed-set split (query/gallery images of training identities, labelled with their training classes) the
classifier is scored on the same held-out images too: `val_loss`, `val_top1`, `val_top5`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from reid.engine.precision import Precision
from reid.metrics import RankResult, compute_distance_matrix, evaluate_rank

RANKING_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")
CLASSIFICATION_METRICS = ("val_loss", "val_top1", "val_top5")
# The metrics `trainer.monitor` can name to pick best_model.pth; every one of them is better when higher.
RANKING_MONITORS = ("mAP", "rank1", "mINP")
CLASSIFICATION_MONITORS = ("val_top1",)


def valid_monitors(classification: bool) -> tuple[str, ...]:
    """What `trainer.monitor` may be: the ranking metrics, plus val_top1 where the classifier is scored."""
    return RANKING_MONITORS + (CLASSIFICATION_MONITORS if classification else ())


BatchTransform = Callable[[Any, torch.device], torch.Tensor]


def _on_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device, non_blocking=True)


def embed(model: nn.Module, images: torch.Tensor, flip: bool = False,
          camids: torch.Tensor | None = None) -> torch.Tensor:
    """The eval-mode embedding of a batch; with `flip`, the mean of the image's and its mirror image's embedding
    (horizontal-flip test-time augmentation). `camids` reach a model with a camera embedding."""
    embedding = model(images, camids=camids)
    if flip:
        embedding = (embedding + model(images.flip(-1), camids=camids)) / 2
    return embedding


@torch.no_grad()
def extract_features(model: nn.Module, loader: DataLoader, device: torch.device, precision: Precision,
                     memory_format: torch.memory_format = torch.contiguous_format,
                     batch_transform: BatchTransform = _on_device,
                     flip: bool = False) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Embeddings (float32, on CPU), pids and camids of every image the loader yields, in order; computed in the
    training step's precision and memory format. Each batch's images reach the model through
    `batch_transform(images, device)` (the GPU pipeline normalizes there); `flip` is flip test-time augmentation."""
    was_training = model.training
    model.eval()
    features, pids, camids = [], [], []
    try:
        for images, batch_pids, batch_camids, _ in loader:
            images = batch_transform(images, device).to(device, memory_format=memory_format, non_blocking=True)
            with precision.autocast():
                embedding = embed(model, images, flip, batch_camids.to(device))
            features.append(embedding.float().cpu())
            pids.append(batch_pids.numpy())
            camids.append(batch_camids.numpy())
    finally:
        model.train(was_training)
    return torch.cat(features), np.concatenate(pids), np.concatenate(camids)


def ranking_metrics(result: RankResult, ranks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """mAP, rank-k for each of `ranks` and mINP, by the names the run record uses; a gallery shorter than k
    (whose CMC stops early) gives its last rank's accuracy."""
    metrics = {"mAP": float(result.mAP)}
    for k in ranks:
        metrics[f"rank{k}"] = float(result.cmc[min(k, len(result.cmc)) - 1])
    metrics["mINP"] = float(result.mINP)
    return metrics


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean cross-entropy and top-1/top-5 accuracy of class logits (N x C) against integer labels (N).

    The CE is plain, without the training loss's label smoothing, so it reads the same whatever the loss config.
    With fewer than 5 classes, top-5 counts every image as a hit.
    """
    logits, labels = logits.float(), labels.long()
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    count = len(labels)
    return {
        "val_loss": float(F.cross_entropy(logits, labels)),
        "val_top1": int(hits[:, 0].sum()) / count,
        "val_top5": int(hits.any(dim=1).sum()) / count,
    }


@torch.no_grad()
def class_logits(model: nn.Module, embeddings: torch.Tensor, device: torch.device,
                 batch_size: int) -> torch.Tensor:
    """The classifier's logits (float32, on CPU) for eval-mode embeddings, in chunks of `batch_size`."""
    return torch.cat([model.classify(chunk.to(device)).float().cpu() for chunk in embeddings.split(batch_size)])


class Evaluator:
    """Callable that scores a model: mAP, rank-1/5/10 and mINP; with `classification`, also the classifier's
    val_loss, val_top1 and val_top5 on the query + gallery images (whose pids must be training labels)."""

    def __init__(self, loader: DataLoader, num_query: int, device: torch.device, precision: Precision, distance: str,
                 classification: bool = False, memory_format: torch.memory_format = torch.contiguous_format,
                 batch_transform: BatchTransform = _on_device) -> None:
        self.loader = loader
        self.num_query = num_query
        self.device = device
        self.precision = precision
        self.memory_format = memory_format
        self.distance = distance
        self.classification = classification
        self.batch_transform = batch_transform

    @property
    def monitors(self) -> tuple[str, ...]:
        return valid_monitors(self.classification)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        features, pids, camids = extract_features(model, self.loader, self.device, self.precision,
                                                  self.memory_format, self.batch_transform)
        q = self.num_query
        distances = compute_distance_matrix(features[:q], features[q:], metric=self.distance)
        result = evaluate_rank(distances, pids[:q], pids[q:], camids[:q], camids[q:], max_rank=10)
        metrics = ranking_metrics(result)
        if self.classification:
            logits = class_logits(model, features, self.device, self.loader.batch_size or len(features))
            metrics.update(classification_metrics(logits, torch.from_numpy(pids)))
        return metrics
