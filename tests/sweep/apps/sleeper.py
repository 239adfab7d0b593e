"""A plain Hydra app whose trials last `seconds` (the workers' tests): reports x * step at each of `steps` steps.

Its named variants: `long` runs `long_seconds`, `short` the default length; the sampler's trials are short.
"""

import os
import time

import hydra
from omegaconf import DictConfig

from hydra_plugins.reid_optuna_sweeper import Variant, current_trial


def variants(cfg: DictConfig) -> list[Variant]:
    return [Variant("long", {"seconds": cfg.long_seconds}), Variant("short", {"x": 0.5})]


@hydra.main(version_base="1.3", config_path="conf", config_name="sleeper")
def sleeper(cfg: DictConfig) -> float:
    trial = current_trial()
    for step in range(1, cfg.steps + 1):
        time.sleep(cfg.seconds / cfg.steps)
        if trial is not None:
            trial.report(cfg.x * step, step)
    print(f"JOB x={cfg.x} seconds={cfg.seconds} threads={os.environ.get('OMP_NUM_THREADS')} "
          f"devices={os.environ.get('CUDA_VISIBLE_DEVICES')}")
    return float(cfg.x)


if __name__ == "__main__":
    sleeper()
