"""Query-gallery distance matrices for retrieval evaluation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor

METRICS = ("euclidean", "cosine")


def _as_features(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_images, feature_dim), got shape {tuple(x.shape)}")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
    return x.detach().float()


def compute_distance_matrix(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    metric: str = "euclidean",
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Distances from every query to every gallery item, shape (num_query, num_gallery).

    ``euclidean`` is the *squared* L2 distance via ``|q|^2 + |g|^2 - 2 q.g`` (one matmul
    instead of a pairwise difference tensor; clamped at 0 against rounding). ``cosine`` is
    ``1 - cos`` on L2-normalised features. Computed in float32 on the query features'
    device, ``chunk_size`` query rows at a time so temporaries stay small; the ranking
    metrics in :mod:`reid.metrics.rank` only need the order, which both preserve.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; valid metrics are {', '.join(METRICS)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    q = _as_features(query_features, "query_features")
    g = _as_features(gallery_features, "gallery_features").to(q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"feature dimensions differ: query_features has {q.shape[1]}, "
            f"gallery_features has {g.shape[1]}"
        )

    if metric == "cosine":
        q = F.normalize(q, dim=1)
        g = F.normalize(g, dim=1)
    else:
        q_sq = q.pow(2).sum(1, keepdim=True)
        g_sq = g.pow(2).sum(1)[None, :]
    out = torch.empty((q.shape[0], g.shape[0]), dtype=torch.float32, device=q.device)
    g_t = g.t()
    for begin in range(0, q.shape[0], int(chunk_size)):
        block = out[begin : begin + int(chunk_size)]
        rows = q[begin : begin + int(chunk_size)]
        if metric == "cosine":
            torch.matmul(rows, g_t, out=block)
            block.neg_().add_(1.0)
        else:
            torch.addmm(g_sq, rows, g_t, beta=1.0, alpha=-2.0, out=block)
            block.add_(q_sq[begin : begin + int(chunk_size)]).clamp_(min=0.0)
    return out
