"""Backbones: timm models and open_clip image encoders, each exposing pooled features and `feature_dim`.

A backbone gets its weights from one of three places: none (random init), the library's pretrained
weights (`pretrained=true`, needs network access or a warm cache), or a local file (`weights=/path`).

The options of published ReID recipes live here too: `last_stride=1` (ResNets: a feature map twice as high and
wide, as in BoT), GeM pooling (`gem_p`, timm models), overlapping ViT patches (`patch_stride`) and a camera
embedding added to the ViT tokens (`sie_coefficient`, TransReID/CLIP-ReID). A backbone with a camera embedding
has `num_cameras` set, and its forward takes the camera ids: `forward(images, camids)`.
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
from reid.models.pooling import GeneralizedMeanPooling
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


def remove_first_block_stride(layer: nn.Module, what: str) -> None:
    """Make the first block of a ResNet stage (layer4) keep its input's resolution: "last stride 1".

    Its stride-2 convolutions (timm: the 3x3 conv and the shortcut's 1x1) get stride 1, and its stride-2 average
    pools (CLIP's ModifiedResNet: anti-aliasing pools before the 1x1 conv and in the shortcut) become identities
    (kernel and stride 1); the weights are unchanged, so pretrained ones still apply.
    """
    if not isinstance(layer, nn.Sequential) or len(layer) == 0:
        raise ConfigError(f"backbone.last_stride: {what} has no ResNet stage `layer4`; last_stride applies to "
                          "ResNet-family backbones (timm resnet*/resnext*/seresnet*..., open_clip RN50)")
    changed = 0
    for module in layer[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
            changed += 1
        elif isinstance(module, nn.AvgPool2d) and module.stride in (2, (2, 2)):
            module.kernel_size, module.stride, module.padding = 1, 1, 0
            changed += 1
    if not changed:
        raise ConfigError(f"backbone.last_stride=1: the first block of {what}'s layer4 has no stride-2 "
                          "convolution or pooling to change")


def _check_last_stride(last_stride: int | None) -> None:
    if last_stride not in (None, 1, 2):
        raise ConfigError(f"backbone.last_stride={last_stride}: expected 1 (keep layer4's resolution, as in BoT), "
                          "2 or null (the model's own stride 2)")


class TimmBackbone(nn.Module):
    """Any timm model as a globally pooled feature extractor (`model_name` takes any timm name).

    `last_stride=1` removes the downsampling of a ResNet's last stage; `gem_p` (null: the model's own pooling,
    global average for ResNets) pools the feature map with GeM from that exponent instead, trained if
    `gem_learnable`. Pooling lives here, before the head's neck, because the backbone is what returns pooled
    features; GeM with p = 1 is the average pooling it replaces.
    """

    def __init__(self, model_name: str, pretrained: bool = False, weights: str | None = None,
                 last_stride: int | None = None, gem_p: float | None = None, gem_learnable: bool = True) -> None:
        super().__init__()
        import timm

        _check_last_stride(last_stride)
        if gem_p is not None and gem_p <= 0:
            raise ConfigError(f"backbone.gem_p={gem_p}: expected a GeM exponent > 0 (3 is usual, 1 is average "
                              "pooling), or null for the model's own pooling")
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
        if last_stride == 1:
            remove_first_block_stride(getattr(self.model, "layer4", None), f"timm model {model_name!r}")
        self.pool = None if gem_p is None else GeneralizedMeanPooling(gem_p, learnable=gem_learnable)
        if weights:
            load_backbone_weights(self.model, weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool is None:
            return self.model(images)
        return self.pool(self.model.forward_features(images))


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


SIE_TOKENS = ("cls", "all")
OPEN_CLIP_FEATURES = ("projected", "pre_and_post")


class OpenClipBackbone(nn.Module):
    """The image encoder of an open_clip model at a ReID input size such as 256×128.

    The position embeddings (ViT patch grid, or ModifiedResNet attention pool) are interpolated from the
    square pretraining grid to the ReID grid, so pretrained weights stay meaningful at the new aspect ratio.

    Recipe options: `last_stride=1` (ModifiedResNet only) halves the encoder's total stride to 16; `patch_stride`
    (ViT only; null: the patch size) makes patches overlap, giving a grid of floor((H - patch) / stride) + 1
    tokens per axis (CLIP-ReID and TransReID use 12 with 16-pixel patches); `sie_coefficient` (ViT only; null:
    off) adds a learnt per-camera "side information embedding" times that coefficient to the class token
    (`sie_tokens=cls`, as CLIP-ReID) or to every token (`all`, as TransReID) after the position embedding.
    `num_cameras` (the embedding's rows, one per camera id) is passed by reid from the dataset, like a head's
    `num_classes`.

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
        last_stride: int | None = None,
        patch_stride: int | None = None,
        sie_coefficient: float | None = None,
        sie_tokens: str = "cls",
        num_cameras: int = 1,
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
        # A ModifiedResNet's config lists its stages' depths, a ViT's gives one depth; checked before the slow build.
        self.model_name = model_name
        self.is_vit = not isinstance(open_clip.get_model_config(model_name)["vision_cfg"].get("layers"), (list, tuple))
        self._check_options(last_stride, patch_stride, sie_coefficient, sie_tokens, num_cameras)
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
        self.features = features
        self.last_stride = last_stride or 2
        if last_stride == 1:
            remove_first_block_stride(self.visual.layer4, f"open_clip {model_name!r}")
        if patch_stride is not None:
            self.visual.conv1.stride = (patch_stride, patch_stride)
        projected = int(self.visual.output_dim)
        self.feature_dims = (projected,) if features == "projected" else (self._pre_projection_dim(), projected)
        self.feature_dim = sum(self.feature_dims)
        self._set_input_size(height, width)
        # The side information embedding: one row per camera id, initialised as TransReID and CLIP-ReID do.
        self.num_cameras = None if sie_coefficient is None else int(num_cameras)
        self.sie_coefficient, self.sie_tokens = sie_coefficient, sie_tokens
        self.camera_embedding = None if sie_coefficient is None else nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_cameras, self.visual.conv1.out_channels), std=0.02))
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

    def _check_options(self, last_stride: int | None, patch_stride: int | None, sie_coefficient: float | None,
                       sie_tokens: str, num_cameras: int) -> None:
        _check_last_stride(last_stride)
        if self.is_vit and last_stride is not None:
            raise ConfigError(f"backbone.last_stride={last_stride}: {self.model_name} is a ViT, which has no "
                              "strided last stage; last_stride applies to ResNets (use patch_stride for "
                              "overlapping ViT patches)")
        for key, value in (("patch_stride", patch_stride), ("sie_coefficient", sie_coefficient)):
            if not self.is_vit and value is not None:
                raise ConfigError(f"backbone.{key}={value}: {self.model_name} is a ModifiedResNet; {key} applies "
                                  "to ViT backbones (patch tokens)")
        if patch_stride is not None and patch_stride < 1:
            raise ConfigError(f"backbone.patch_stride={patch_stride}: expected a stride >= 1 in pixels, or null "
                              "for the patch size (no overlap)")
        if sie_tokens not in SIE_TOKENS:
            raise ConfigError(f"backbone.sie_tokens={sie_tokens!r}: expected 'cls' (the class token, as CLIP-ReID) "
                              "or 'all' (every token, as TransReID)")
        if sie_coefficient is not None and num_cameras < 1:
            raise ConfigError(f"backbone.sie_coefficient={sie_coefficient} needs the dataset's cameras, "
                              f"got num_cameras={num_cameras}")

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid the encoder makes of a height×width image."""
        if not self.is_vit:
            stride = 16 * self.last_stride
            if height % stride or width % stride:
                raise ConfigError(
                    f"data.height={height}, data.width={width}: {self.model_name} needs multiples of {stride}"
                )
            return height // stride, width // stride
        patch, step = self.visual.conv1.kernel_size[0], self.visual.conv1.stride[0]
        if step == patch and (height % patch or width % patch):
            raise ConfigError(
                f"data.height={height}, data.width={width}: {self.model_name} needs multiples of {patch}"
            )
        if height < patch or width < patch:
            raise ConfigError(f"data.height={height}, data.width={width}: {self.model_name} needs at least "
                              f"{patch} pixels per side (its patch size)")
        return (height - patch) // step + 1, (width - patch) // step + 1

    def _set_input_size(self, height: int, width: int) -> None:
        owner = self.visual if self.is_vit else self.visual.attnpool
        self.grid = self._grid(height, width)
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

    def _vit_pre_and_post(self, images: torch.Tensor,
                          camids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """open_clip's ViT forward, run here so the camera embedding can go in after the position embedding
        (before ln_pre) and the feature before the projection comes out too: patch conv -> tokens -> class token +
        positions (+ SIE) -> ln_pre -> transformer -> ln_post and pool (the pre-projection feature) -> proj."""
        visual = self.visual
        tokens = visual.conv1(images).flatten(2).transpose(1, 2)
        class_token = visual.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([class_token, tokens], dim=1) + visual.positional_embedding.to(tokens.dtype)
        if self.camera_embedding is not None and camids is not None:
            side = (self.sie_coefficient * self.camera_embedding[camids.to(images.device).long()])
            side = side.to(tokens.dtype)[:, None, :]
            if self.sie_tokens == "cls":
                tokens = torch.cat([tokens[:, :1] + side, tokens[:, 1:]], dim=1)
            else:
                tokens = tokens + side
        tokens = visual.ln_pre(visual.patch_dropout(tokens))
        pooled, _ = visual._pool(visual.transformer(tokens))
        return pooled, pooled if visual.proj is None else pooled @ visual.proj

    def _resnet_pre_and_post(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ModifiedResNet's last stage average-pooled (before the attention pool's projection), and its output."""
        visual = self.visual
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
        return x.mean(dim=(2, 3)), visual.attnpool(x)

    def forward(self, images: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features (`features`: the projected one, or pre- and post-projection concatenated); with a camera
        embedding and `camids`, each image's camera's embedding is added (without camids, as for an image from an
        unknown camera, none is)."""
        with_cameras = self.camera_embedding is not None and camids is not None
        if self.features == "projected" and not with_cameras:
            features = self.visual(images)
            return features[0] if isinstance(features, tuple) else features
        pre, post = self._vit_pre_and_post(images, camids) if self.is_vit else self._resnet_pre_and_post(images)
        return post if self.features == "projected" else torch.cat([pre, post], dim=1)
