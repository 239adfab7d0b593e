"""Build a `ReidModel` from the `backbone` and `head` config groups."""

from __future__ import annotations

import inspect
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from reid.models.model import ReidModel


def architecture_of(backbone_cfg: DictConfig, head_cfg: DictConfig, num_classes: int,
                    feature_dim: int) -> dict[str, Any]:
    """The facts a saved model must match to be loaded: checked before any tensor is copied."""
    return {
        "backbone": str(backbone_cfg.get("model_name", backbone_cfg._target_)),
        "backbone_class": str(backbone_cfg._target_),
        "head": str(head_cfg._target_),
        "feature_dim": int(feature_dim),
        "num_classes": int(num_classes),
    }


def build_model(backbone_cfg: DictConfig, head_cfg: DictConfig, num_classes: int) -> ReidModel:
    """The backbone, then the head on its features; a head with a `backbone` argument (CLIP-ReID's, which takes
    over CLIP's text encoder) gets the backbone itself."""
    backbone = instantiate(backbone_cfg)
    takes_backbone = "backbone" in inspect.signature(get_object(head_cfg._target_)).parameters
    head = instantiate(head_cfg, in_features=backbone.feature_dim, num_classes=num_classes,
                       **({"backbone": backbone} if takes_backbone else {}))
    return ReidModel(backbone, head, architecture_of(backbone_cfg, head_cfg, num_classes, backbone.feature_dim))
