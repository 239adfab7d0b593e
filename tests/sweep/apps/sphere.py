"""A plain Hydra app for the sweeper's tests: no reid, no torch; returns x**2 + y**2 (or what `outcome` asks)."""

import math
import sys

import hydra
import optuna
from omegaconf import DictConfig

from hydra_plugins.reid_optuna_sweeper import current_trial

OUTCOMES = {"nan_value": math.nan, "inf_value": math.inf, "pair": (1.0, 2.0)}


@hydra.main(version_base="1.3", config_path="conf", config_name="sphere")
def sphere(cfg: DictConfig) -> object:
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    value = cfg.x**2 + cfg.y**2
    trial = current_trial()
    if cfg.get("report_steps") and trial is not None:
        for step in range(1, cfg.report_steps + 1):
            trial.report(value * step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
    print(f"JOB x={cfg.x} y={cfg.y} z={cfg.get('z', '<deleted>')} trial={None if trial is None else trial.number}")
    return OUTCOMES.get(cfg.get("outcome"), value)


if __name__ == "__main__":
    sphere()
    print("IMPORTED", sorted(name for name in ("torch", "reid") if name in sys.modules))
