"""Backbones: timm models and open_clip image encoders, each exposing pooled features and `feature_dim`.

A backbone gets its weights from one of three places: none (random init), the library's pretrained
weights (`pretrained=true`, needs network access or a warm cache), or a local file (`weights=/path`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError, PretrainedWeightsUnavailable
from reid.models.clip_text import ClipTextEncoder
from reid.models.weights import load_backbone_weights

log = logging.getLogger(__name__)


@contextlib.contextmanager
def hub_offline_when_unreachable() -> Iterator[None]:
    """Switch the model hub to offline mode when its host does not resolve.

    Cached weights still load; missing ones fail at once instead of after a minute of retries.
    """
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    previous = constants.HF_HUB_OFFLINE
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _offline_error(what: str, exc: BaseException) -> PretrainedWeightsUnavailable:
    return PretrainedWeightsUnavailable(
        f"backbone.pretrained=true could not fetch the pretrained weights for {what} ({type(exc).__name__}: {exc}). "
        "This machine may have no network access. Either set backbone.weights=/path/to/weights.pth to load a "
        "local file, or set backbone.pretrained=false to start from random weights."
    )


class TimmBackbone(nn.Module):
    """Any timm model as a globally pooled feature extractor (`model_name` takes any timm name)."""

    def __init__(self, model_name: str, pretrained: bool = False, weights: str | None = None) -> None:
        super().__init__()
        import timm

        if not timm.is_model(model_name):
            close = timm.list_models(f"*{model_name.split('_')[0]}*")[:10]
            raise ConfigError(
                f"backbone.model_name={model_name!r} is not a timm model; similar names: {', '.join(close) or 'none'}"
            )
        try:
            with hub_offline_when_unreachable():
                self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
        except (OSError, RuntimeError, ConnectionError) as exc:
            if pretrained:
                raise _offline_error(f"timm model {model_name!r}", exc) from exc
            raise
        self.feature_dim = int(self.model.num_features)
        self.model_name = model_name
        if weights:
            load_backbone_weights(self.model, weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def _resize_grid_embedding(embedding: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """Interpolate a [1 + H*W, C] (class token first) position embedding to a new H×W grid."""
    class_token, grid = embedding[:1], embedding[1:]
    old_side = int(math.isqrt(grid.shape[0]))
    if old_side * old_side != grid.shape[0]:
        raise ConfigError(f"cannot interpolate a position embedding of {grid.shape[0]} tokens: not a square grid")
    if (old_side, old_side) == tuple(new_grid):
        return embedding
    grid = grid.reshape(1, old_side, old_side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(embedding.dtype)
    return torch.cat([class_token, grid], dim=0)


OPEN_CLIP_FEATURES = ("projected", "pre_and_post")


class OpenClipBackbone(nn.Module):
    """The image encoder of an open_clip model at a ReID input size such as 256×128.

    The position embeddings (ViT patch grid, or ModifiedResNet attention pool) are interpolated from the
    square pretraining grid to the ReID grid, so pretrained weights stay meaningful at the new aspect ratio.

    `features`: `projected` (CLIP's image embedding) or `pre_and_post` (the feature before the projection — ViT's
    class token after ln_post, ModifiedResNet's average-pooled last stage — concatenated with the projected one;
    `feature_dims` gives the two sizes), as CLIP-ReID's head uses them. `text_tower` keeps CLIP's text encoder
    (`text`, frozen) for a head that needs it; ordinary runs drop it.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: bool = False,
        pretrained_tag: str = "openai",
        weights: str | None = None,
        image_size: tuple[int, int] | list[int] = (256, 128),
        features: str = "projected",
        text_tower: bool = False,
    ) -> None:
        super().__init__()
        import open_clip

        if features not in OPEN_CLIP_FEATURES:
            raise ConfigError(f"backbone.features={features!r}: expected one of {', '.join(OPEN_CLIP_FEATURES)}")

        if model_name not in open_clip.list_models():
            raise ConfigError(
                f"backbone.model_name={model_name!r} is not an open_clip model; "
                f"valid names include: {', '.join(open_clip.list_models()[:20])}, ..."
            )
        height, width = int(image_size[0]), int(image_size[1])
        try:
            with hub_offline_when_unreachable():
                clip = open_clip.create_model(model_name, pretrained=pretrained_tag if pretrained else None)
        except (OSError, RuntimeError, ConnectionError) as exc:
            if pretrained:
                raise _offline_error(f"open_clip {model_name!r} ({pretrained_tag})", exc) from exc
            raise
        self.visual = clip.visual
        self.text: ClipTextEncoder | None = ClipTextEncoder(clip, model_name) if text_tower else None
        del clip
        self.model_name = model_name
        self.features = features
        projected = int(self.visual.output_dim)
        self.feature_dims = (projected,) if features == "projected" else (self._pre_projection_dim(), projected)
        self.feature_dim = sum(self.feature_dims)
        self._set_input_size(height, width)
        if weights:
            load_backbone_weights(self.visual, weights, adapt=self._adapt_state_dict)
            if self.text is not None:
                load_backbone_weights(self.text, weights)

    def take_text_tower(self) -> ClipTextEncoder:
        """Hand the text encoder over to a head that owns it from now on (its weights then live there)."""
        if self.text is None:
            raise ConfigError(f"this head needs CLIP's text encoder: set backbone.text_tower=true (an open_clip "
                              f"backbone; {self.model_name} has it off)")
        text, self.text = self.text, None
        return text

    def _pre_projection_dim(self) -> int:
        if hasattr(self.visual, "attnpool"):
            return int(self.visual.attnpool.k_proj.in_features)
        return int(self.visual.ln_post.normalized_shape[0])

    def _pooling(self) -> tuple[nn.Module, int]:
        """The module that owns the position embedding, and the encoder's total stride."""
        if hasattr(self.visual, "attnpool"):
            return self.visual.attnpool, 32
        patch = self.visual.conv1.kernel_size[0]
        return self.visual, patch

    def _set_input_size(self, height: int, width: int) -> None:
        owner, stride = self._pooling()
        if height % stride or width % stride:
            raise ConfigError(
                f"data.height={height}, data.width={width}: {self.model_name} needs multiples of {stride}"
            )
        self.grid = (height // stride, width // stride)
        with torch.no_grad():
            resized = _resize_grid_embedding(owner.positional_embedding.data, self.grid)
        owner.positional_embedding = nn.Parameter(resized)
        if hasattr(self.visual, "grid_size"):
            self.visual.grid_size = self.grid
            self.visual.image_size = (height, width)

    def _adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resize position embeddings of a local weight file to this model's grid."""
        for key, value in list(state.items()):
            if key.endswith("positional_embedding") and value.ndim == 2:
                expected = self.grid[0] * self.grid[1] + 1
                if value.shape[0] != expected:
                    state[key] = _resize_grid_embedding(value, self.grid)
        return state

    def _pre_and_post(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image feature before CLIP's final projection (attention pool or `proj`), and after it."""
        visual = self.visual
        if hasattr(visual, "attnpool"):
            x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
            return x.mean(dim=(2, 3)), visual.attnpool(x)
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        x = visual.ln_pre(visual.patch_dropout(x + visual.positional_embedding.to(x.dtype)))
        pre = visual.ln_post(visual.transformer(x))[:, 0]
        return pre, pre @ visual.proj

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.features == "pre_and_post":
            return torch.cat(self._pre_and_post(images), dim=1)
        features = self.visual(images)
        return features[0] if isinstance(features, tuple) else features
