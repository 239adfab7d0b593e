"""The Hydra Sweeper plugin: reads `hydra.sweeper`, then hands over to the sweep loop in `driver`."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from hydra_plugins.reid_optuna_sweeper._database import DEFAULT_RETRY_S
from hydra_plugins.reid_optuna_sweeper._driver import SweepSettings, run_sweep
from hydra_plugins.reid_optuna_sweeper._errors import SweepConfigError
from hydra_plugins.reid_optuna_sweeper._results import write_results
from hydra_plugins.reid_optuna_sweeper._space import parse_search_space
from hydra_plugins.reid_optuna_sweeper._storage import default_storage, normalize_storage, open_storage
from hydra_plugins.reid_optuna_sweeper._torchrun import DistributedTrial, split_command_line
from hydra_plugins.reid_optuna_sweeper._workers import (
    SLOT_ENV,
    WorkerJob,
    run_local_workers,
    visible_devices,
    worker_command,
    worker_environments,
)
from hydra_plugins.reid_optuna_sweeper.config import ReidOptunaSweeperConfig  # noqa: F401 - registers the configs

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")


def parse_directions(direction: Any) -> list[str]:
    """`hydra.sweeper.direction` as a list: one name for one objective, a list for several."""
    names = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    if not names or any(name not in DIRECTIONS for name in names):
        raise SweepConfigError(f"hydra.sweeper.direction={names if len(names) != 1 else names[0]!r}: "
                               "expected 'minimize', 'maximize' or a non-empty list of them (one per objective)")
    return [str(name) for name in names]


class ReidOptunaSweeper(Sweeper):
    """Optuna on current releases with pruning, failure tolerance, resume, shared studies and named variants."""

    def __init__(self, sampler: DictConfig, pruner: DictConfig, direction: Any, storage: str | None,
                 study_name: str | None, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: DictConfig | None, custom_search_space: str | None, variants: DictConfig | None,
                 job_outcome: DictConfig | None, heartbeat_interval: float, grace_period: float,
                 n_workers: int = 1, gpus_per_trial: int = 1, processes_per_trial: int = 1,
                 storage_retry_s: float = DEFAULT_RETRY_S) -> None:
        self.directions = parse_directions(direction)
        for key, value, low in (("n_trials", n_trials, 1), ("n_jobs", n_jobs, 1), ("n_workers", n_workers, 1),
                                ("gpus_per_trial", gpus_per_trial, 0), ("processes_per_trial", processes_per_trial, 1)):
            if value < low:
                raise SweepConfigError(f"hydra.sweeper.{key}={value}: expected an integer >= {low}")
        if not 0.0 < heartbeat_interval < grace_period:
            raise SweepConfigError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval}, grace_period="
                                   f"{grace_period}: expected 0 < heartbeat_interval < grace_period (seconds)")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise SweepConfigError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: expected a fraction in "
                                   "[0, 1]")
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = OmegaConf.to_container(params, resolve=True) if params is not None else None
        self.custom_search_space = custom_search_space
        self.variants_cfg = variants
        self.job_outcome_cfg = job_outcome
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        if storage_retry_s < 0:
            raise SweepConfigError(f"hydra.sweeper.storage_retry_s={storage_retry_s}: expected seconds >= 0")
        self.n_workers = n_workers
        self.gpus_per_trial = gpus_per_trial
        self.processes_per_trial = processes_per_trial
        self.storage_retry_s = storage_retry_s
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        if self.processes_per_trial > 1:
            # Each trial's job runs the app under torchrun; the launcher runs that job where it runs any other.
            split_command_line(sys.orig_argv)  # a command line torchrun cannot run again fails before any trial
            task_function = DistributedTrial(list(sys.orig_argv), self.processes_per_trial, str(Path.cwd()))
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def _settings(self, arguments: list[str]) -> SweepSettings:
        assert self.config is not None
        space = parse_search_space(self.params, arguments)
        study_name = self.study_name or str(self.config.hydra.job.name)
        storage = normalize_storage(self.storage or default_storage(self.config.hydra.sweep.dir, study_name))
        n_trials = self.n_trials
        sampler_kwargs: dict[str, Any] = {}
        if OmegaConf.select(self.sampler_cfg, "_target_") == "optuna.samplers.GridSampler":
            grid = space.grid() if self.sampler_cfg.get("search_space") is None else self.sampler_cfg.search_space
            sampler_kwargs["search_space"] = grid
            # Past the grid's size the sampler would only repeat points.
            n_trials = min(n_trials, math.prod(len(values) for values in grid.values()))
        sampler = instantiate(self.sampler_cfg, **sampler_kwargs)
        pruner_spec = OmegaConf.to_container(self.pruner_cfg, resolve=True)
        # Jobs build the pruner from this spec; building it here once makes bad options fail before any trial.
        instantiate(self.pruner_cfg)
        custom = get_method(self.custom_search_space) if self.custom_search_space else None
        variants = instantiate(self.variants_cfg, self.config) if self.variants_cfg is not None else []
        job_outcome = instantiate(self.job_outcome_cfg, _partial_=True) if self.job_outcome_cfg is not None else None
        return SweepSettings(storage=storage, study_name=study_name, directions=self.directions,
                             n_trials=n_trials, n_jobs=self.n_jobs, max_failure_rate=self.max_failure_rate,
                             sampler=sampler, pruner_spec=pruner_spec, space=space, variants=list(variants),
                             custom_search_space=custom, job_outcome=job_outcome,
                             heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period,
                             storage_retry_s=self.storage_retry_s)

    def sweep(self, arguments: Sequence[str]) -> None:
        """Run the study to n_trials; the results are in the sweep directory and the study, so nothing is returned."""
        assert self.config is not None
        settings = self._settings(list(arguments))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        if self.n_workers == 1:
            run_sweep(settings, self.launcher.launch, sweep_dir, self.config)
            return
        self._run_workers(sweep_dir)
        study = optuna.load_study(study_name=settings.study_name,
                                  storage=open_storage(settings.storage, settings.storage_retry_s))
        write_results(study, sweep_dir)

    def _run_workers(self, sweep_dir: Path) -> None:
        """`n_workers` sweep processes on this study (see `_workers`): children here, or the launcher's jobs."""
        assert self.config is not None and self.hydra_context is not None
        command = worker_command(sys.orig_argv, sweep_dir)
        if self.gpus_per_trial > 1 and self.processes_per_trial == 1:
            log.warning("hydra.sweeper.gpus_per_trial=%d, but each trial runs in one process; set "
                        "hydra.sweeper.processes_per_trial=%d to run each trial under torchrun, one process per GPU",
                        self.gpus_per_trial, self.gpus_per_trial)
        if isinstance(self.launcher, BasicLauncher):
            environments = worker_environments(self.n_workers, self.gpus_per_trial, visible_devices(),
                                               os.cpu_count() or 1)
            run_local_workers(command, environments, Path.cwd())
            return
        job = WorkerJob(command=command, cwd=str(Path.cwd()), n_workers=self.n_workers,
                        gpus_per_trial=self.gpus_per_trial)
        launcher = Plugins.instance().instantiate_launcher(hydra_context=self.hydra_context, task_function=job,
                                                           config=self.config)
        results = launcher.launch([[f"hydra.sweep.subdir=worker_{slot}", f"++hydra.job.env_set.{SLOT_ENV}={slot}"]
                                   for slot in range(self.n_workers)], initial_job_idx=0)
        for result in results:
            result.return_value  # noqa: B018 - raises the worker job's own error
