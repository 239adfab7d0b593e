"""Callbacks shipped with reid (the `callbacks` group, conf/callbacks/): hooks a user adds to a run by name.

A user's own callback is a reid.engine.hooks.Hook subclass in their module plus one YAML file with its
`_target_` (docs/callbacks.md); reid.engine.build runs the group's callbacks after the standard hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reid.checkpoint import save_model_file
from reid.engine.hooks import EpochResult, Hook
from reid.errors import ConfigError

if TYPE_CHECKING:
    from reid.engine.trainer import Trainer


class SaveEveryN(Hook):
    """A model file `epoch_<E>.pth` in the run directory after every epoch E divisible by `every`, in the format of
    best_model.pth (reid.checkpoint; its meta holds the epoch, that epoch's metrics or null, and the run config), so
    reid.checkpoint.load_model_file and reid.models.loading.load_trained_model read it."""

    def __init__(self, every: int, run_dir: Path, config: dict[str, Any]) -> None:
        if every < 1:
            raise ConfigError(f"every={every}: expected an integer >= 1 (the epochs between two saved model files)")
        self.every = every
        self.run_dir = Path(run_dir)
        self.config = config

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        if result.epoch % self.every == 0:
            meta = {"epoch": result.epoch, "metrics": result.metrics, "config": self.config}
            save_model_file(self.run_dir / f"epoch_{result.epoch}.pth", trainer.model, trainer.model.architecture,
                            meta)
