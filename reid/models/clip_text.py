"""The text tower of an open_clip CLIP model, run on token embeddings so a prompt can hold learned tokens.

`OpenClipBackbone(text_tower=true)` keeps it beside the image encoder; CLIP-ReID's head (reid.models.clipreid)
takes it over. Its weights are CLIP's and never train (CLIP-ReID keeps the text encoder frozen in both stages).
"""

from __future__ import annotations

import torch
from torch import nn

from reid.errors import ConfigError


class ClipTextEncoder(nn.Module):
    """Token embeddings -> positional embedding, causal transformer, final LayerNorm, the EOT token's feature,
    text projection: CLIP's `encode_text` from the embedding step on. `logit_scale` is CLIP's (log of 1/temperature).
    """

    def __init__(self, clip: nn.Module, model_name: str) -> None:
        super().__init__()
        import open_clip

        if not hasattr(clip, "token_embedding") or getattr(clip, "text_pool_type", "argmax") != "argmax":
            raise ConfigError(f"backbone.text_tower=true: open_clip {model_name!r} has no CLIP text transformer "
                              "pooled at the EOT token (expected a CLIP model such as ViT-B-16 or RN50)")
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.context_length = int(clip.context_length)
        self.width = int(clip.token_embedding.embedding_dim)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    @property
    def output_dim(self) -> int:
        projection = self.text_projection
        return int(projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1])

    def tokenize(self, text: str) -> torch.Tensor:
        """The token ids of one text, padded to the context length: [context_length]."""
        return self.tokenizer([text])[0].long()

    def forward(self, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """Text features [B, output_dim] of embedded prompts [B, context_length, width]; `eot_positions` [B]."""
        x = embeddings + self.positional_embedding.to(embeddings.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_positions]
        projection = self.text_projection
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection
