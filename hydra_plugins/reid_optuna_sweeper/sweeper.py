"""The Hydra Sweeper plugin: reads `hydra.sweeper`, then hands over to `reid.sweep.driver`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.reid_optuna_sweeper.config import ReidOptunaSweeperConfig  # noqa: F401 - registers the configs
from reid.errors import ConfigError
from reid.sweep.driver import SweepSettings, run_sweep
from reid.sweep.space import parse_search_space
from reid.sweep.storage import default_storage, normalize_storage
from reid.sweep.variants import build_variants


class ReidOptunaSweeper(Sweeper):
    """Optuna on current releases with pruning, failure tolerance, resume, shared studies and named variants."""

    def __init__(self, sampler: DictConfig, pruner: DictConfig, direction: str, storage: str | None,
                 study_name: str | None, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: DictConfig | None, custom_search_space: str | None, variants: str | None,
                 heartbeat_interval: float, grace_period: float) -> None:
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction={direction!r}: expected 'maximize' or 'minimize' "
                              "(reid.train returns one value, the best mAP)")
        for key, value, low in (("n_trials", n_trials, 1), ("n_jobs", n_jobs, 1)):
            if value < low:
                raise ConfigError(f"hydra.sweeper.{key}={value}: expected an integer >= {low}")
        if not 0.0 < heartbeat_interval < grace_period:
            raise ConfigError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval}, grace_period={grace_period}: "
                              "expected 0 < heartbeat_interval < grace_period (seconds)")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: expected a fraction in [0, 1]")
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = OmegaConf.to_container(params, resolve=True) if params is not None else None
        self.custom_search_space = custom_search_space
        self.variants = variants
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def _settings(self, arguments: list[str]) -> SweepSettings:
        assert self.config is not None
        space = parse_search_space(self.params, arguments)
        choices = self.config.hydra.runtime.choices
        study_name = self.study_name or f"{self.config.experiment_name}-{choices.get('sweep') or 'sweep'}"
        storage = normalize_storage(self.storage or default_storage(self.config.experiment_name, study_name))
        sampler_kwargs: dict[str, Any] = {}
        if OmegaConf.select(self.sampler_cfg, "_target_") == "optuna.samplers.GridSampler" \
                and self.sampler_cfg.get("search_space") is None:
            sampler_kwargs["search_space"] = space.grid()
        sampler = instantiate(self.sampler_cfg, **sampler_kwargs)
        pruner_spec = OmegaConf.to_container(self.pruner_cfg, resolve=True)
        # Jobs build the pruner from this spec; building it here once makes bad options fail before any trial.
        instantiate(self.pruner_cfg)
        custom = get_method(self.custom_search_space) if self.custom_search_space else None
        return SweepSettings(storage=storage, study_name=study_name, direction=self.direction,
                             n_trials=self.n_trials, n_jobs=self.n_jobs, max_failure_rate=self.max_failure_rate,
                             sampler=sampler, pruner_spec=pruner_spec, space=space,
                             variants=build_variants(self.variants, self.config), custom_search_space=custom,
                             heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        settings = self._settings(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        return run_sweep(settings, self.launcher.launch, sweep_dir, self.config)
