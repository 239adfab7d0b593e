"""A trained model rebuilt from its file alone: how evaluate, extract, visualize and export get their model.

A reid model file (`best_model.pth`, `model_final.pth`) records the run's composed config next to its weights,
so the backbone, head, input size and normalisation come from the file and the user never repeats them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from reid.checkpoint import (
    BEST_MODEL,
    FINAL_MODEL,
    MODEL_FORMAT,
    check_architecture,
    extract_state_dict,
    load_exact_state,
    safe_load,
)
from reid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reid.errors import CheckpointError
from reid.models.build import build_model
from reid.models.model import ReidModel


@dataclass
class TrainedModel:
    """A model in eval mode with the facts needed to feed it: input size and normalisation, plus its run."""

    model: ReidModel
    config: DictConfig
    path: Path
    meta: dict[str, Any]

    @property
    def height(self) -> int:
        return int(self.config.data.height)

    @property
    def width(self) -> int:
        return int(self.config.data.width)

    @property
    def mean(self) -> tuple[float, float, float]:
        return IMAGENET_MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        return IMAGENET_STD

    @property
    def best_metrics(self) -> dict[str, float] | None:
        """The evaluation metrics recorded with the file (best_model.pth: those of its epoch)."""
        return self.meta.get("metrics")


def resolve_model_path(spec: str | Path) -> Path:
    """`model=`: a run directory (its best_model.pth, else model_final.pth) or a model file."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in (BEST_MODEL, FINAL_MODEL):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"model={spec}: the directory holds neither {BEST_MODEL} nor {FINAL_MODEL}; "
                              "expected a reid.train run directory or a model file")
    if not path.is_file():
        raise CheckpointError(f"model={spec}: no such file or directory; expected a reid.train run directory, "
                              f"{BEST_MODEL} or {FINAL_MODEL}")
    return path


def _without_download(backbone_cfg: DictConfig) -> DictConfig:
    """The backbone's config with its initial weights off: the file's weights replace them anyway."""
    cfg = OmegaConf.create(OmegaConf.to_container(backbone_cfg, resolve=True))
    for key, value in (("pretrained", False), ("weights", None)):
        if key in cfg:
            cfg[key] = value
    return cfg


def trained_model_from_payload(payload: Any, path: str | Path) -> TrainedModel:
    """Rebuild the model of a loaded model file (`torch.load(..., weights_only=True)`) and load its weights."""
    path = Path(path)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(
            f"{path} is not a reid model file (format {MODEL_FORMAT!r}); expected a run's {BEST_MODEL} or "
            f"{FINAL_MODEL}, which record the architecture to rebuild"
        )
    meta = payload.get("meta") or {}
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path} records no run config (meta.config), so its architecture is unknown")
    config = OmegaConf.create(meta["config"])
    architecture = payload.get("architecture") or {}
    if "num_classes" not in architecture:
        raise CheckpointError(f"{path} records no architecture.num_classes; expected a reid model file")
    try:
        model = build_model(_without_download(config.backbone), config.head, num_classes=architecture["num_classes"],
                            num_cameras=architecture.get("num_cameras"))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot rebuild its model {architecture.get('backbone')!r} + "
                              f"{architecture.get('head')!r}: {type(exc).__name__}: {exc}") from exc
    check_architecture(model.architecture, architecture, path)
    load_exact_state(model, extract_state_dict(payload, path), path)
    return TrainedModel(model=model.eval(), config=config, path=path, meta=meta)


def load_trained_model(spec: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model a reid model file was saved from, load its weights (checked) and put it in eval mode."""
    path = resolve_model_path(spec)
    trained = trained_model_from_payload(safe_load(path), path)
    trained.model.to(device)
    return trained
