"""Build a `ReidModel` from the `backbone` and `head` config groups."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from reid.config import instantiate_provided
from reid.models.model import ReidModel


def architecture_of(backbone_cfg: DictConfig, head_cfg: DictConfig, num_classes: int,
                    feature_dim: int, num_cameras: int | None = None) -> dict[str, Any]:
    """The facts a saved model must match to be loaded: checked before any tensor is copied.

    `num_cameras` is recorded for a backbone with a camera embedding (its rows), which a rebuild must size alike.
    """
    architecture = {
        "backbone": str(backbone_cfg.get("model_name", backbone_cfg._target_)),
        "backbone_class": str(backbone_cfg._target_),
        "head": str(head_cfg._target_),
        "feature_dim": int(feature_dim),
        "num_classes": int(num_classes),
    }
    if num_cameras is not None:
        architecture["num_cameras"] = int(num_cameras)
    return architecture


def build_model(backbone_cfg: DictConfig, head_cfg: DictConfig, num_classes: int,
                num_cameras: int | None = None) -> ReidModel:
    """The backbone, then the head on its features, for `num_classes` training identities. A backbone whose
    constructor takes `num_cameras` (camera embeddings) gets the dataset's camera count, as the head gets
    `num_classes`; a head with a `backbone` argument (CLIP-ReID's, which takes over CLIP's text encoder) gets the
    backbone itself."""
    backbone = instantiate_provided(backbone_cfg, **({"num_cameras": num_cameras} if num_cameras else {}))
    head = instantiate_provided(head_cfg, in_features=backbone.feature_dim, num_classes=num_classes,
                                backbone=backbone)
    architecture = architecture_of(backbone_cfg, head_cfg, num_classes, backbone.feature_dim,
                                   getattr(backbone, "num_cameras", None))
    return ReidModel(backbone, head, architecture)
