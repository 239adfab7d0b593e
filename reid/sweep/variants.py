"""Named variants: hand-picked trials built from the config the user starts from, run before the sampler.

`plateau_variants` builds the five standard fixes for a stalled run; sweeps/plateau.yaml names it as
`hydra.sweeper.variants._target_`. Each variant is a set of overrides computed from the composed base config
(its LR, schedule and epochs), so the same sweep file fits any backbone or dataset.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from hydra_plugins.reid_optuna_sweeper import Variant
from reid.errors import ConfigError


def _warmup(cfg: DictConfig) -> tuple[int, float]:
    """The base schedule's warm-up, else a short one (1/24 of the run), kept shorter than the run."""
    scheduler = cfg.scheduler
    max_epochs = int(cfg.trainer.max_epochs)
    epochs = int(scheduler.get("warmup_epochs", max(1, round(max_epochs / 24))))
    factor = float(scheduler.get("warmup_factor", 0.01))
    return min(epochs, max(0, max_epochs - 1)), factor


def _lr(cfg: DictConfig) -> float:
    lr = OmegaConf.select(cfg, "optimizer.lr")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ConfigError(f"optimizer.lr={lr!r}: the plateau variants scale the base LR, so expected a number > 0")
    return float(lr)


def plateau_variants(cfg: DictConfig) -> list[Variant]:
    """The five plateau solutions, relative to `cfg`."""
    for key in ("loss.ce_weight", "loss.triplet_weight"):
        if OmegaConf.select(cfg, key) is None:
            raise ConfigError(f"{key} is not in the base config (loss._target_={cfg.loss.get('_target_')}); the "
                              "heavy_triplet variant needs a loss with ce_weight and triplet_weight, "
                              "e.g. loss=ce_triplet")
    lr = _lr(cfg)
    max_epochs = int(cfg.trainer.max_epochs)
    warmup_epochs, warmup_factor = _warmup(cfg)
    first_drop = max(1, round(max_epochs / 6))
    second_drop = max(first_drop + 1, round(5 * max_epochs / 12))
    return [
        Variant("higher_lr", {"optimizer.lr": lr * 2}),
        Variant("cosine_annealing", {"scheduler": "cosine", "scheduler.warmup_epochs": warmup_epochs,
                                     "scheduler.warmup_factor": warmup_factor}),
        Variant("heavy_triplet", {"loss.ce_weight": 0.3, "loss.triplet_weight": 2.0}),
        Variant("aggressive_lr_drop", {"optimizer.lr": lr * 3, "scheduler": "warmup_multistep",
                                       "scheduler.milestones": [first_drop, second_drop],
                                       "scheduler.warmup_epochs": warmup_epochs,
                                       "scheduler.warmup_factor": warmup_factor}),
        Variant("smaller_batch_higher_lr", {"data.p": 2, "data.k": 4, "optimizer.lr": 1e-3}),
    ]
