"""The sweep loop: ask trials, launch jobs, record each outcome, resume and share studies safely.

Bookkeeping (stale trials, named variants, the trial count, asking) happens under `study_lock`, so sweep
processes sharing one study never run a variant twice or exceed `n_trials`; the jobs run outside it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.reid_optuna_sweeper._database import DEFAULT_RETRY_S, RETRY_ENV, StorageUnreachable
from hydra_plugins.reid_optuna_sweeper._errors import SweepConfigError
from hydra_plugins.reid_optuna_sweeper._job import TrialLink
from hydra_plugins.reid_optuna_sweeper._liveness import WORKER_ATTR, Heartbeat, fail_stale_trials, this_worker
from hydra_plugins.reid_optuna_sweeper._outcome import JobOutcome
from hydra_plugins.reid_optuna_sweeper._results import write_results
from hydra_plugins.reid_optuna_sweeper._space import SearchSpace
from hydra_plugins.reid_optuna_sweeper._storage import PRUNER_ATTR, open_storage, study_lock
from hydra_plugins.reid_optuna_sweeper._variants import Variant, format_value, variant_trial

log = logging.getLogger(__name__)

SAMPLED = "sampled"

Launch = Callable[[list[list[str]], int], Sequence[JobReturn]]


@dataclass
class SweepSettings:
    """Everything the loop needs, resolved from `hydra.sweeper` by the plugin (so the loop is testable alone)."""

    storage: str
    study_name: str
    directions: list[str]
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    sampler: optuna.samplers.BaseSampler
    pruner_spec: dict[str, Any]
    space: SearchSpace
    variants: list[Variant]
    heartbeat_interval: float
    grace_period: float
    storage_retry_s: float = DEFAULT_RETRY_S
    custom_search_space: Callable[[Any, optuna.Trial], None] | None = None
    job_outcome: Callable[[Path], JobOutcome] | None = None

    def __post_init__(self) -> None:
        # Both reach every job as a quoted override, so a quote would break each trial's command line.
        for key, value in (("storage", self.storage), ("study_name", self.study_name)):
            if "'" in value:
                raise SweepConfigError(f"hydra.sweeper.{key}={value!r}: a quote character (') cannot be passed to "
                                       f"the jobs; use a {key.replace('_', ' ')} without one")


def _counted(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward n_trials: all but attempts of a dead worker, whose retry counts instead."""
    return [t for t in trials if not t.user_attrs.get("stale")]


def enqueue_variants(study: optuna.Study, settings: SweepSettings) -> list[str]:
    """Enqueue the named variants this study has not seen yet, within the n_trials budget."""
    trials = study.get_trials(deepcopy=False)
    seen = {t.user_attrs.get("variant") for t in trials}
    room = settings.n_trials - len(_counted(trials))
    added = []
    for variant in settings.variants:
        if variant.name in seen or len(added) >= room:
            continue
        params, attrs = variant_trial(variant, settings.space.distributions)
        study.enqueue_trial(params, user_attrs=attrs)
        added.append(variant.name)
    return added


def _suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def _dedupe(overrides: list[str]) -> list[str]:
    """One override per key, the later winning (variant changes over fixed values)."""
    by_key: dict[str, str] = {}
    for text in overrides:
        key = text.split("=", 1)[0].lstrip("+~")
        by_key.pop(key, None)
        by_key[key] = text
    return list(by_key.values())


def link_overrides(link: TrialLink, storage_retry_s: float = DEFAULT_RETRY_S) -> list[str]:
    """Hydra overrides that hand the job its trial link as environment variables (no key in the app's config),
    with the sweep's storage retry budget."""
    env = {**link.env(), RETRY_ENV: str(storage_retry_s)}
    return [f"++hydra.job.env_set.{name}='{value}'" for name, value in env.items()]


def trial_overrides(trial: optuna.Trial, settings: SweepSettings, base_cfg: Any) -> list[str]:
    """Suggest the trial's parameters and return the job's overrides (which also link the job to its trial)."""
    attrs = trial.user_attrs
    named = attrs.get("variant") not in (None, SAMPLED)
    keys = attrs.get("fixed_keys", []) if named else list(settings.space.distributions)
    missing = [key for key in keys if key not in settings.space.distributions]
    if missing:
        raise SweepConfigError(f"trial {trial.number} ({attrs.get('variant')}) was enqueued with params {missing}, "
                               "which are no longer in hydra.sweeper.params; resume with the search space it was "
                               "started with")
    params = {key: _suggest(trial, key, settings.space.distributions[key]) for key in keys}
    if not named:
        trial.set_user_attr("variant", SAMPLED)
        if settings.custom_search_space is not None:
            settings.custom_search_space(base_cfg, trial)
            params = dict(trial.params)
    overrides = _dedupe([*settings.space.fixed, *(f"{k}={format_value(v)}" for k, v in params.items()),
                         *attrs.get("extra_overrides", [])])
    trial.set_user_attr("overrides", overrides)
    link = TrialLink(settings.storage, settings.study_name, trial.number)
    return [*overrides, *link_overrides(link, settings.storage_retry_s), f"hydra.sweep.subdir=trial_{trial.number:04d}"]


def _may_ask(study: optuna.Study, n_trials: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
        return False
    return len(_counted(trials)) < n_trials


def _tell(study: optuna.Study, trial: optuna.Trial, values: list[float] | None = None,
          state: TrialState = TrialState.COMPLETE) -> None:
    """`study.tell`, tolerating the grid sampler's `study.stop()` when its grid is used up.

    That call is only legal inside `study.optimize`; the trial is stored before it raises, and `_may_ask`
    ends the sweep through `GridSampler.is_exhausted`.
    """
    try:
        study.tell(trial, values, state=state)
    except RuntimeError:
        if not isinstance(study.sampler, optuna.samplers.GridSampler):
            raise


def objective_values(value: Any, n_objectives: int) -> list[float] | str:
    """The job's return value as `n_objectives` finite floats, or why it is not that."""
    if n_objectives == 1:
        items = [value]
    elif isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, (str, dict))):
        items = list(value)
    else:
        return f"the job returned {value!r}; expected a sequence of {n_objectives} numbers"
    if len(items) != n_objectives:
        return f"the job returned {len(items)} values ({value!r}); expected {n_objectives}, one per direction"
    try:
        numbers = [float(item) for item in items]
    except (TypeError, ValueError):
        return f"the job returned {value!r}; expected {'a number' if n_objectives == 1 else 'numbers'}"
    if not all(math.isfinite(number) for number in numbers):
        return f"the job returned {value!r}, which is not finite"
    return numbers


def record_outcome(study: optuna.Study, trial: optuna.Trial, result: JobReturn, run_dir: Path,
                   job_outcome: Callable[[Path], JobOutcome] | None = None) -> TrialState:
    """Tell the study how the job ended: PRUNED, FAIL (an error, a bad value or the app's verdict) or COMPLETE.

    A trial that another sweep process already ended (failed as abandoned while its job ran on, and retried under a
    new number) keeps that ending: its job's result is logged, not told.
    """
    stored = study.get_trials(deepcopy=False)[trial.number].state
    if stored.is_finished():
        log.warning("trial %d was already %s when its job ended (another sweep process judged it abandoned); "
                    "its result is not recorded", trial.number, stored.name)
        return stored
    outcome = job_outcome(run_dir) if job_outcome is not None else JobOutcome()
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    for key, value in outcome.user_attrs.items():
        trial.set_user_attr(key, value)
    try:
        value = result.return_value
    except optuna.TrialPruned:
        _tell(study, trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    except Exception as exc:  # noqa: BLE001 - a failed job is a failed trial; the sweep goes on
        return _fail(study, trial, f"{outcome.status or 'error'}: {type(exc).__name__}: {exc}")
    if outcome.pruned:
        _tell(study, trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    if outcome.failed is not None:
        return _fail(study, trial, outcome.failed)
    values = objective_values(value, len(study.directions))
    if isinstance(values, str):
        return _fail(study, trial, values)
    _tell(study, trial, values)
    return TrialState.COMPLETE


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> TrialState:
    trial.set_user_attr("fail_reason", reason)
    _tell(study, trial, state=TrialState.FAIL)
    log.warning("trial %d failed: %s", trial.number, reason)
    return TrialState.FAIL


class TooManyFailures(RuntimeError):
    """The sweep stopped because failed trials passed max_failure_rate × n_trials."""


def check_failures(study: optuna.Study, settings: SweepSettings, last_error: BaseException | None) -> None:
    """Stop the sweep once failures pass the rate, raising from the last job error so its traceback shows."""
    failed = [t for t in _counted(study.get_trials(deepcopy=False)) if t.state == TrialState.FAIL]
    if len(failed) > settings.max_failure_rate * settings.n_trials:
        lines = "\n".join(f"  trial {t.number} ({t.user_attrs.get('variant')}): {t.user_attrs.get('fail_reason')}"
                          for t in failed)
        raise TooManyFailures(f"{len(failed)} failed trials exceed hydra.sweeper.max_failure_rate="
                              f"{settings.max_failure_rate} of n_trials={settings.n_trials}:\n{lines}") from last_error


def open_study(settings: SweepSettings) -> optuna.Study:
    return optuna.create_study(storage=open_storage(settings.storage, settings.storage_retry_s),
                               study_name=settings.study_name, sampler=settings.sampler,
                               directions=settings.directions, load_if_exists=True)


def _job_error(result: JobReturn) -> BaseException | None:
    try:
        result.return_value  # noqa: B018 - JobReturn raises the job's own exception here
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def run_sweep(settings: SweepSettings, launch: Launch, sweep_dir: Path, base_cfg: Any) -> optuna.Study:
    """Run trials until the study holds n_trials finished ones; returns the study."""
    with study_lock(settings.storage, settings.study_name, settings.storage_retry_s):
        study = open_study(settings)
        study.set_user_attr(PRUNER_ATTR, settings.pruner_spec)
        fail_stale_trials(study, settings.grace_period)
        added = enqueue_variants(study, settings)
    log.info("study %s in %s: %d trials so far, variants enqueued now: %s", settings.study_name, settings.storage,
             len(study.get_trials(deepcopy=False)), added or "none")
    try:
        while True:
            batch: list[tuple[optuna.Trial, list[str]]] = []
            with study_lock(settings.storage, settings.study_name, settings.storage_retry_s):
                while len(batch) < settings.n_jobs and _may_ask(study, settings.n_trials):
                    trial = study.ask()
                    trial.set_user_attr(WORKER_ATTR, this_worker())
                    batch.append((trial, trial_overrides(trial, settings, base_cfg)))
            if not batch:
                break
            with Heartbeat([trial for trial, _ in batch], settings.heartbeat_interval):
                results = launch([overrides for _, overrides in batch], batch[0][0].number)
            last_error = None
            for (trial, _), result in zip(batch, results):
                run_dir = Path(result.hydra_cfg.hydra.runtime.output_dir) if result.hydra_cfg else sweep_dir
                state = record_outcome(study, trial, result, run_dir, settings.job_outcome)
                last_error = _job_error(result) or last_error
                log.info("trial %d (%s): %s", trial.number, trial.user_attrs.get("variant"), state.name)
            check_failures(study, settings, last_error)
    except StorageUnreachable:
        raise  # the results would only wait out the retry budget once more
    except BaseException:
        write_results(study, sweep_dir)
        raise
    write_results(study, sweep_dir)
    return study
