"""Staged fine-tuning: where a stage starts (weights and epoch), and unfreezing after `transfer_epochs`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from reid.checkpoint import BEST_MODEL
from reid.engine.hooks import Hook
from reid.engine.record import MODEL_INFO_JSON, read_model_info
from reid.engine.resume import OUTPUTS
from reid.errors import ConfigError

if TYPE_CHECKING:
    from reid.engine.trainer import Trainer

log = logging.getLogger("reid")


@dataclass
class StageStart:
    """The weights a stage starts from, the global epoch it continues after, and where they came from."""

    init_path: Path | None = None
    initial_epoch: int = 0
    lineage: dict[str, Any] | None = None


def find_parent_run(experiment_name: str, parent_stage: str, outputs: Path = OUTPUTS) -> Path:
    """The newest finished run of `parent_stage` in this experiment."""
    root = outputs / experiment_name
    finished = []
    for info_file in root.rglob(MODEL_INFO_JSON) if root.is_dir() else []:
        info = read_model_info(info_file.parent)
        if info and info.get("stage") == parent_stage and info.get("status") == "finished" \
                and (info_file.parent / BEST_MODEL).is_file():
            finished.append((info.get("timings", {}).get("ended") or "", info_file.parent))
    if not finished:
        raise ConfigError(
            f"stage starts from the best model of a finished {parent_stage} run of experiment {experiment_name!r}, "
            f"but none was found under {root}/ (looked for {MODEL_INFO_JSON} with stage {parent_stage!r}, status "
            f"'finished' and a {BEST_MODEL}). Run `python -m reid.train stage={parent_stage}` first, or pass "
            "stage.init_from=<run dir or .pth file>."
        )
    return max(finished)[1]


def resolve_stage_start(cfg: DictConfig) -> StageStart:
    """From `stage.init_from` (a run dir or .pth), else the newest finished run of `stage.parent`, else nothing."""
    stage = cfg.stage
    if stage.init_from:
        source = Path(stage.init_from)
        init_path = source / BEST_MODEL if source.is_dir() else source
        if not init_path.is_file():
            raise ConfigError(f"stage.init_from={stage.init_from}: no such file {init_path}; expected a run "
                              f"directory holding {BEST_MODEL}, or a .pth file")
        parent_dir = init_path.parent
    elif stage.parent:
        parent_dir = find_parent_run(cfg.experiment_name, stage.parent)
        init_path = parent_dir / BEST_MODEL
    else:
        return StageStart()
    info = read_model_info(parent_dir) or {}
    lineage = {
        "init_from": str(init_path.resolve()),
        "parent_run": str(parent_dir.resolve()) if info else None,
        "parent_stage": info.get("stage"),
        "parent_best_map": info.get("best_map"),
        "parent_best_epoch": info.get("best_epoch"),
        "parent_epochs_trained": info.get("epochs_trained"),
    }
    return StageStart(init_path, int(info.get("epochs_trained") or 0), lineage)


def stage_max_epochs(cfg: DictConfig, initial_epoch: int) -> int:
    """The global epoch the stage ends at: `stage.epochs` after its start, or `trainer.max_epochs` for the rest.

    Under a debug budget (`trainer.debug_stage_epochs=N`) a fixed-length stage trains at most N epochs and a
    stage that runs until max_epochs at least N, so the later stages of a pipeline still train.
    """
    budget = cfg.trainer.debug_stage_epochs
    if cfg.stage.epochs:
        end = initial_epoch + (min(cfg.stage.epochs, budget) if budget else cfg.stage.epochs)
    else:
        end = max(cfg.trainer.max_epochs, initial_epoch + budget) if budget else cfg.trainer.max_epochs
    if end <= initial_epoch:
        raise ConfigError(
            f"stage {cfg.stage.name} starts after epoch {initial_epoch} but "
            f"trainer.max_epochs={cfg.trainer.max_epochs}: "
            "nothing left to train; raise trainer.max_epochs or set stage.epochs"
        )
    return end


class UnfreezeAfter(Hook):
    """`trainer.transfer_epochs`: train with the stage's freezing for N epochs, then unfreeze everything."""

    def __init__(self, transfer_epochs: int, first_epoch: int, lr_factor: float) -> None:
        self.switch_epoch = first_epoch + transfer_epochs + 1
        self.lr_factor = lr_factor

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        if epoch == self.switch_epoch and trainer.model.freeze_level != 0:
            trainer.unfreeze_all(self.lr_factor)
            log.info("[Epoch %d/%d] unfreezing after %d transfer epochs: %s", epoch, trainer.max_epochs,
                     self.switch_epoch - 1, trainer.model.describe_freezing())
