"""`hydra.sweeper.custom_search_space` for the sphere app, in a module whose file name has a hyphen."""

from omegaconf import DictConfig
from optuna import Trial


def near_x(cfg: DictConfig, trial: Trial) -> None:
    """z within cfg.max_z_difference_from_x of the x already suggested, and a new key w (added with +w)."""
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
    trial.suggest_float("+w", 0.0, 1.0)
