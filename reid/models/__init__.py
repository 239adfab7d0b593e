"""Models: backbones (timm, open_clip), heads (BN neck, linear, ArcFace) and the ReID model that joins them."""

from reid.models.backbones import OpenClipBackbone, TimmBackbone
from reid.models.build import build_model
from reid.models.heads import ArcFaceHead, BNNeckHead, HeadOutput, LinearHead
from reid.models.model import FREEZE_LEVELS, ReidModel

__all__ = [
    "ArcFaceHead",
    "BNNeckHead",
    "FREEZE_LEVELS",
    "HeadOutput",
    "LinearHead",
    "OpenClipBackbone",
    "ReidModel",
    "TimmBackbone",
    "build_model",
]
