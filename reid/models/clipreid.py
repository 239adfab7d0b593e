"""CLIP-ReID's head (Li, Sun, Li, AAAI 2023): learned identity prompts for CLIP's text encoder, two BN necks.

Each identity's text is "A photo of a X X X X person." whose X embeddings are learned per identity (the prompt
stage trains only them, against cached image features: reid.engine.prompt_learning); the other tokens keep CLIP's
fixed embeddings. In the finetune stage the text features of all identities are computed once and frozen, and the
image encoder trains with CE on two BN-neck classifiers (pre- and post-projection features), triplet on both
features, and an image-to-text CE against the frozen text features (reid.losses.clipreid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError
from reid.models.clip_text import ClipTextEncoder
from reid.models.heads import HeadOutput

# The template's placeholder word; each of its tokens becomes one learned context vector.
PLACEHOLDER = "X"


class IdentityPrompts(nn.Module):
    """`n_ctx` learned token embeddings per identity, set into the tokenized template at the placeholder tokens."""

    def __init__(self, text: ClipTextEncoder, num_classes: int, n_ctx: int, template: str) -> None:
        super().__init__()
        if n_ctx < 1 or template.count("{}") != 1:
            raise ConfigError(f"head.n_ctx={n_ctx}, head.template={template!r}: expected n_ctx >= 1 and a template "
                              "with one {} where the learned tokens go, e.g. 'A photo of a {} person.'")
        ids = text.tokenize(template.format(" ".join([PLACEHOLDER] * n_ctx)))
        placeholder = int(text.tokenize(PLACEHOLDER)[1])  # after the start-of-text token
        positions = (ids == placeholder).nonzero().flatten()
        self.start = int(positions[0])
        if positions[:n_ctx].tolist() != list(range(self.start, self.start + n_ctx)):
            raise ConfigError(f"head.template={template!r}: the {n_ctx} learned tokens do not form one run")
        self.n_ctx = n_ctx
        self.eot_position = int(ids.argmax())  # CLIP's end-of-text token has the highest id
        self.register_buffer("token_ids", ids, persistent=False)
        self.context = nn.Parameter(torch.empty(num_classes, n_ctx, text.width))
        nn.init.normal_(self.context, std=0.02)

    def forward(self, labels: torch.Tensor, token_embedding: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded prompts of `labels` [B, context_length, width] and their EOT positions [B]."""
        fixed = token_embedding(self.token_ids).to(self.context.dtype).expand(len(labels), -1, -1)
        learned = self.context[labels]
        embedded = torch.cat([fixed[:, :self.start], learned, fixed[:, self.start + self.n_ctx:]], dim=1)
        return embedded, torch.full((len(labels),), self.eot_position, device=labels.device)


class PairClassifier(nn.Module):
    """Bias-free identity classifiers on the BN-necked pre- and post-projection features; applied to a
    concatenated embedding, the sum of their logits."""

    def __init__(self, dims: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        self.dims = dims
        self.pre = nn.Linear(dims[0], num_classes, bias=False)
        self.post = nn.Linear(dims[1], num_classes, bias=False)
        for layer in (self.pre, self.post):
            nn.init.normal_(layer.weight, std=0.001)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        pre, post = embedding.split(self.dims, dim=1)
        return self.pre(pre) + self.post(post)


@dataclass
class ClipReidOutput(HeadOutput):
    """`logits` / `metric_features`: the pre-projection classifier's logits and feature; `projected_*` the same
    after the projection; `text_logits`: the projected feature against every identity's frozen text feature."""

    projected_logits: torch.Tensor
    projected_features: torch.Tensor
    text_logits: torch.Tensor


class ClipReidHead(nn.Module):
    """CLIP-ReID's head on an OpenClipBackbone with `features=pre_and_post` and `text_tower=true`.

    It owns CLIP's text encoder (taken from the backbone), the identity prompts, a BN neck and a classifier per
    feature. Eval mode: the pre- and post-projection features concatenated, L2-normalised.
    """

    def __init__(self, in_features: int, num_classes: int, backbone: nn.Module, n_ctx: int = 4,
                 template: str = "A photo of a {} person.") -> None:
        super().__init__()
        dims = tuple(getattr(backbone, "feature_dims", (in_features,)))
        if len(dims) != 2 or not hasattr(backbone, "take_text_tower"):
            raise ConfigError("head=clipreid needs an open_clip backbone with backbone.features=pre_and_post and "
                              f"backbone.text_tower=true (got {type(backbone).__name__} with features {dims})")
        self.dims: tuple[int, int] = (int(dims[0]), int(dims[1]))
        self.text = backbone.take_text_tower()
        if self.text.output_dim != self.dims[1]:
            raise ConfigError(f"head=clipreid: the text features ({self.text.output_dim}) and the projected image "
                              f"features ({self.dims[1]}) of {backbone.model_name} differ in size")
        self.prompt_learner = IdentityPrompts(self.text, num_classes, n_ctx, template)
        self.neck = nn.ModuleDict({"pre": nn.BatchNorm1d(self.dims[0]), "post": nn.BatchNorm1d(self.dims[1])})
        for bn in self.neck.values():
            bn.bias.requires_grad_(False)
            nn.init.constant_(bn.weight, 1.0)
            nn.init.constant_(bn.bias, 0.0)
        self.classifier = PairClassifier(self.dims, num_classes)
        self.num_classes = num_classes
        # Every identity's text feature, computed from the prompts at the first training step and then frozen.
        self.register_buffer("frozen_text", None, persistent=False)

    def text_features(self, labels: torch.Tensor) -> torch.Tensor:
        """The text features of identities `labels` [B, dim] (differentiable in the prompts)."""
        embedded, eot = self.prompt_learner(labels, self.text.token_embedding)
        return self.text(embedded, eot)

    @torch.no_grad()
    def all_text_features(self, chunk: int = 256) -> torch.Tensor:
        """Every identity's text feature [num_classes, dim], float32, without gradients."""
        labels = torch.arange(self.num_classes, device=self.prompt_learner.context.device)
        return torch.cat([self.text_features(part).float() for part in labels.split(chunk)])

    def image_text_features(self, features: torch.Tensor) -> torch.Tensor:
        """The part of the backbone's features that lives in CLIP's joint space (post-projection)."""
        return features[:, self.dims[0]:]

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> ClipReidOutput | torch.Tensor:
        if not self.training:
            return F.normalize(features, dim=1)
        pre, post = features.split(self.dims, dim=1)
        if self.frozen_text is None:
            self.frozen_text = self.all_text_features()
        text_logits = self.text.logit_scale.exp() * F.normalize(post, dim=1) @ F.normalize(self.frozen_text, dim=1).t()
        return ClipReidOutput(logits=self.classifier.pre(self.neck["pre"](pre)), metric_features=pre,
                              projected_logits=self.classifier.post(self.neck["post"](post)),
                              projected_features=post, text_logits=text_logits)
