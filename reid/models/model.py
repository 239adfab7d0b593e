"""The ReID model: backbone + head, with freeze levels that keep frozen BatchNorm statistics fixed."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from reid.errors import ConfigError
from reid.models.heads import HeadOutput

log = logging.getLogger(__name__)

FREEZE_LEVELS = {
    0: "nothing frozen",
    1: "backbone frozen",
    2: "all but the classifier frozen",
}


class ReidModel(nn.Module):
    """Maps images to an embedding (eval) or to a `HeadOutput` (train)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, architecture: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.architecture = architecture
        self.freeze_level = 0
        # Modules a stage keeps frozen whatever the level (stage.frozen), e.g. CLIP-ReID's prompts when finetuning.
        self.kept_frozen: list[str] = []
        # Some parameters never train by design (the BN neck's bias); unfreezing must not turn them on.
        self._trainable_by_design = {name: p.requires_grad for name, p in self.named_parameters()}

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                camids: torch.Tensor | None = None) -> HeadOutput | torch.Tensor:
        """`camids` (each image's camera) reach a backbone with a camera embedding (`num_cameras` set); any other
        backbone ignores them."""
        if getattr(self.backbone, "num_cameras", None) is not None:
            return self.head(self.backbone(images, camids), labels)
        return self.head(self.backbone(images), labels)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Class logits of eval-mode embeddings (closed-set validation); ArcFace's come without the margin."""
        return self.head.classifier(embedding)

    def frozen_module_names(self) -> list[str]:
        return ["backbone", "head.neck"][: self.freeze_level] + self.kept_frozen

    def keep_frozen(self, names: list[str]) -> None:
        """Freeze these modules (dotted names) at every freeze level, unfreezing included."""
        modules = dict(self.named_modules())
        unknown = [name for name in names if name not in modules or not name]
        if unknown:
            tops = ", ".join(name for name in modules if name and name.count(".") <= 1)
            raise ConfigError(f"stage.frozen: {', '.join(map(repr, unknown))} is not a module of this model; "
                              f"expected dotted module names such as {tops}")
        self.kept_frozen = list(names)
        self.set_freeze_level(self.freeze_level)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.get_submodule(name) for name in self.frozen_module_names()]

    def set_freeze_level(self, level: int) -> None:
        """Freeze parts of the model: frozen parameters get no gradient and frozen BatchNorm stays in eval mode."""
        if level not in FREEZE_LEVELS:
            raise ValueError(f"freeze_level={level}: expected one of {sorted(FREEZE_LEVELS)}")
        self.freeze_level = level
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(self._trainable_by_design[name])
        for module in self.frozen_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ReidModel:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def describe_freezing(self) -> str:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        names = self.frozen_module_names()
        return (
            f"freeze_level={self.freeze_level} ({FREEZE_LEVELS[self.freeze_level]}): "
            f"{trainable:,} trainable and {frozen:,} frozen parameters"
            + (f"; frozen modules: {', '.join(names)}" if names else "")
        )
