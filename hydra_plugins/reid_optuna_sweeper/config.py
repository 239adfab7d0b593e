"""The sweeper's config schema, with samplers and pruners as config groups.

Keys follow the stock hydra-optuna-sweeper (sampler, direction, storage, study_name, n_trials, n_jobs,
max_failure_rate, params, custom_search_space), so its sweep files work after changing the
`override hydra/sweeper:` line; `pruner`, `variants`, `job_outcome`, `heartbeat_interval`, `grace_period`,
`n_workers`, `gpus_per_trial`, `processes_per_trial` and `storage_retry_s` are this sweeper's additions.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConfig:
    """optuna.samplers.TPESampler; arguments Optuna 4.9+ deprecates are left out."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: Optional[bool] = None
    constant_liar: bool = True


@dataclass
class RandomSamplerConfig:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConfig:
    """optuna.samplers.CmaEsSampler; needs float/int parameters (categoricals are sampled independently)."""

    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    x0: Optional[Dict[str, Any]] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    warn_independent_sampling: bool = True


@dataclass
class GridSamplerConfig:
    """optuna.samplers.GridSampler; `search_space` null means the grid of the sweep's choice/range params."""

    _target_: str = "optuna.samplers.GridSampler"
    search_space: Optional[Dict[str, Any]] = None
    seed: Optional[int] = None


@dataclass
class GPSamplerConfig:
    """optuna.samplers.GPSampler: Gaussian-process Bayesian optimization (needs torch in the job's environment)."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class QMCSamplerConfig:
    """optuna.samplers.QMCSampler: quasi-random points; Optuna marks it experimental (it warns once)."""

    _target_: str = "optuna.samplers.QMCSampler"
    qmc_type: str = "sobol"
    scramble: bool = False
    seed: Optional[int] = None


@dataclass
class NSGAIISamplerConfig:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = None
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class MedianPrunerConfig:
    """Prune a trial whose best mAP so far is below the median of the finished trials at that epoch.

    Unlike Optuna's defaults (5 startup trials, no warm-up), it judges from epoch 2 and from the first finished
    trial on: with 5 startup trials the plateau sweep's five variants always train to the end and hold the
    median down, so the pruned plateau demo still trained 77-88% of the unpruned epochs; these settings trained
    33-41% (docs/benchmarks.md). Epoch 1 is left out because its mAP barely ranks the runs.
    """

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 1
    n_warmup_steps: int = 2
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConfig:
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConfig:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class NopPrunerConfig:
    """No pruning: every trial trains to its end."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class ReidOptunaSweeperConfig:
    """`hydra.sweeper` for `override hydra/sweeper: reid_optuna`; any Hydra app can use it."""

    _target_: str = "hydra_plugins.reid_optuna_sweeper.sweeper.ReidOptunaSweeper"
    # Samplers and pruners are built by the sweeper (the grid needs the parsed params), not by Hydra.
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    # "minimize" or "maximize", or a list of them, one per value the task returns (multi-objective).
    direction: Any = "minimize"
    # A journal file path or a database URL; null means <hydra.sweep.dir>/<study_name>.journal.
    storage: Optional[str] = None
    # null means the job's name (hydra.job.name, the app's file name).
    study_name: Optional[str] = None
    # Trials of the whole study, however many processes share it and however often it is resumed.
    n_trials: int = 20
    # Trials handed to the launcher at once (one batch waits for its slowest trial; n_workers has no barrier).
    n_jobs: int = 1
    # Sweep processes on this study, each asking, training and telling on its own: child processes pinned to
    # their own GPUs (or CPU threads) with the basic launcher, the launcher's jobs otherwise (submitit: an array).
    n_workers: int = 1
    # GPUs each local worker gets from the visible ones (CUDA_VISIBLE_DEVICES); 0: CPU workers.
    gpus_per_trial: int = 1
    # Processes each trial's job runs on: above 1, the job is the app under torchrun (--standalone, one machine),
    # whose rank 0 returns the value (docs/sweeps.md); set it to gpus_per_trial for one process per GPU.
    processes_per_trial: int = 1
    # Seconds a database storage keeps retrying (with backoff) while its server is unreachable, then errs.
    storage_retry_s: float = 120.0
    # The sweep stops once failed trials exceed this fraction of n_trials.
    max_failure_rate: float = 0.25
    params: Optional[Dict[str, str]] = None
    # "module.function" called as function(cfg, trial) after the params are suggested, to suggest more.
    custom_search_space: Optional[str] = None
    # A `_target_` callable given the composed config, returning named variants (a list of variants.Variant),
    # enqueued once per study before the sampler's trials.
    variants: Optional[Any] = None
    # A `_target_` callable given a finished job's output directory, returning an outcome.JobOutcome: how the
    # app's own record says the job ended (pruned, diverged, ...) and user attributes for its trial.
    job_outcome: Optional[Any] = None
    # Seconds between a worker's heartbeats for its running trials, and how old a heartbeat from another host may
    # get before its trial counts as abandoned (failed, and its work enqueued again). Mind clock skew between hosts.
    heartbeat_interval: float = 60.0
    grace_period: float = 600.0


SAMPLERS = {"tpe": TPESamplerConfig, "random": RandomSamplerConfig, "cmaes": CmaEsSamplerConfig,
            "grid": GridSamplerConfig, "nsgaii": NSGAIISamplerConfig, "gp": GPSamplerConfig, "qmc": QMCSamplerConfig}
PRUNERS = {"median": MedianPrunerConfig, "percentile": PercentilePrunerConfig, "hyperband": HyperbandPrunerConfig,
           "successive_halving": SuccessiveHalvingPrunerConfig, "none": NopPrunerConfig}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="reid_optuna", node=ReidOptunaSweeperConfig, provider="reid_optuna_sweeper")
for _name, _node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="reid_optuna_sweeper")
for _name, _node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="reid_optuna_sweeper")
