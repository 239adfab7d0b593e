"""The training entrypoint: `python -m reid.train [group=option ...] [key=value ...]`.

Returns the run's best mAP so a Hydra sweeper can optimize it; a diverged run returns -1.0, which ranks
last, never NaN.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from reid.config import register_configs, validate_targets
from reid.engine.build import build_experiment, build_trainer
from reid.engine.stopping import DIVERGED, DIVERGED_SCORE
from reid.engine.trainer import TrainState
from reid.utils.seed import configure_determinism, seed_everything

log = logging.getLogger("reid")

# The repository's conf/ directory, by absolute path so the entrypoint works however it is imported.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

register_configs()


def score(state: TrainState) -> float:
    """The value a sweeper optimizes: best mAP, or a value below any mAP for a diverged or unscored run."""
    if state.stop is not None and state.stop.kind == DIVERGED:
        return DIVERGED_SCORE
    if state.best_map is None or not math.isfinite(state.best_map):
        return DIVERGED_SCORE
    return float(state.best_map)


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> float:
    """Build everything from `cfg`, train, write the run record into `run_dir`, return the score."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if run_dir is None:
        if hydra_cfg is None:
            raise ValueError("train() needs run_dir when called outside a Hydra job")
        run_dir = hydra_cfg.runtime.output_dir
    run_dir = Path(run_dir)
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    validate_targets(cfg)
    configure_determinism(cfg.trainer.deterministic)
    seed_everything(cfg.trainer.seed)
    try:
        experiment = build_experiment(cfg)
    except Exception as exc:
        log.error("could not set up the run: %s", exc)
        raise
    trainer = build_trainer(cfg, experiment, run_dir, overrides)
    log.info("run directory: %s", run_dir.resolve())
    state = trainer.fit()
    return score(state)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
