"""Generalized-mean (GeM) pooling of a convolutional feature map, the pooling `backbone.gem_p` selects.

GeM (Radenović et al., "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018) is
`(mean(x^p))^(1/p)` over the spatial positions of each channel: p = 1 is average pooling, large p approaches
max pooling. With `learnable` the exponent is a trained parameter (one for all channels).
"""

from __future__ import annotations

import torch
from torch import nn


class GeneralizedMeanPooling(nn.Module):
    """(N, C, H, W) -> (N, C); values are clamped to `eps` first, so fractional powers stay defined."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p={p}: expected p > 0")
        exponent = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(exponent)
        else:
            self.register_buffer("p", exponent)
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4:
            raise ValueError(f"GeM pools an (N, C, H, W) feature map, got shape {tuple(features.shape)}")
        # In float32 whatever the autocast dtype: x^p overflows float16 for p = 3 and activations above ~40.
        p = self.p.float()
        pooled = features.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
        return pooled.to(features.dtype)

    def extra_repr(self) -> str:
        kind = "learnable" if isinstance(self.p, nn.Parameter) else "fixed"
        return f"p={self.p.item():.4g} ({kind}), eps={self.eps}"
