"""The sweep loop: ask trials, launch training jobs, record each outcome, resume and share studies safely.

Bookkeeping (stale trials, named variants, the trial count, asking) happens under `study_lock`, so sweep
processes sharing one study never run a variant twice or exceed `n_trials`; training runs outside it.
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

from reid.engine.record import read_model_info
from reid.engine.stopping import DIVERGED_SCORE
from reid.errors import ConfigError
from reid.sweep.liveness import WORKER_ATTR, Heartbeat, fail_stale_trials, this_worker
from reid.sweep.results import write_results
from reid.sweep.space import SearchSpace
from reid.sweep.storage import PRUNER_ATTR, open_storage, study_lock
from reid.sweep.variants import Variant, format_value

log = logging.getLogger("reid")

SAMPLED = "sampled"

Launch = Callable[[list[list[str]], int], Sequence[JobReturn]]


@dataclass
class SweepSettings:
    """Everything the loop needs, resolved from `hydra.sweeper` by the plugin (so the loop is testable alone)."""

    storage: str
    study_name: str
    direction: str
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    sampler: optuna.samplers.BaseSampler
    pruner_spec: dict[str, Any]
    space: SearchSpace
    variants: list[Variant]
    heartbeat_interval: float
    grace_period: float
    custom_search_space: Callable[[Any, optuna.Trial], None] | None = None

    def __post_init__(self) -> None:
        # Both reach every training job as a quoted override, so a quote would break each trial's command line.
        for key, value in (("storage", self.storage), ("study_name", self.study_name)):
            if "'" in value:
                raise ConfigError(f"hydra.sweeper.{key}={value!r}: a quote character (') cannot be passed to the "
                                  f"training jobs; use a {key.replace('_', ' ')} without one")


def _fits(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(dist, IntDistribution) and not float(value).is_integer():
        return False
    if not dist.low <= value <= dist.high:
        return False
    return dist.step is None or math.isclose(round((value - dist.low) / dist.step) * dist.step, value - dist.low,
                                              abs_tol=1e-12)


def variant_trial(variant: Variant, space: SearchSpace) -> tuple[dict[str, Any], dict[str, Any]]:
    """A variant as enqueue arguments: searched keys whose value fits become params, the rest plain overrides."""
    params = {k: v for k, v in variant.changes.items() if k in space.distributions and _fits(space.distributions[k], v)}
    extra = [f"{k}={format_value(v)}" for k, v in variant.changes.items() if k not in params]
    return params, {"variant": variant.name, "fixed_keys": list(params), "extra_overrides": extra}


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
        params, attrs = variant_trial(variant, settings.space)
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


def _quote(value: str) -> str:
    return f"'{value}'"


def trial_overrides(trial: optuna.Trial, settings: SweepSettings, base_cfg: Any) -> list[str]:
    """Suggest the trial's parameters and return the job's overrides (which also link the job to its trial)."""
    attrs = trial.user_attrs
    named = attrs.get("variant") not in (None, SAMPLED)
    keys = attrs.get("fixed_keys", []) if named else list(settings.space.distributions)
    missing = [key for key in keys if key not in settings.space.distributions]
    if missing:
        raise ConfigError(f"trial {trial.number} ({attrs.get('variant')}) was enqueued with params {missing}, which "
                          "are no longer in hydra.sweeper.params; resume with the search space it was started with")
    params = {key: _suggest(trial, key, settings.space.distributions[key]) for key in keys}
    if not named:
        trial.set_user_attr("variant", SAMPLED)
        if settings.custom_search_space is not None:
            settings.custom_search_space(base_cfg, trial)
            params = dict(trial.params)
    overrides = _dedupe([*settings.space.fixed, *(f"{k}={format_value(v)}" for k, v in params.items()),
                         *attrs.get("extra_overrides", [])])
    trial.set_user_attr("overrides", overrides)
    return [*overrides,
            f"sweep_trial.storage={_quote(settings.storage)}",
            f"sweep_trial.study_name={_quote(settings.study_name)}",
            f"sweep_trial.trial_number={trial.number}",
            f"hydra.sweep.subdir=trial_{trial.number:04d}"]


def _may_ask(study: optuna.Study, n_trials: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
        return False
    return len(_counted(trials)) < n_trials


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None,
          state: TrialState = TrialState.COMPLETE) -> None:
    """`study.tell`, tolerating the grid sampler's `study.stop()` when its grid is used up.

    That call is only legal inside `study.optimize`; the trial is stored before it raises, and `_may_ask`
    ends the sweep through `GridSampler.is_exhausted`.
    """
    try:
        study.tell(trial, value, state=state)
    except RuntimeError:
        if not isinstance(study.sampler, optuna.samplers.GridSampler):
            raise


def record_outcome(study: optuna.Study, trial: optuna.Trial, result: JobReturn, run_dir: Path) -> TrialState:
    """Tell the study how the job ended: PRUNED, FAIL (error, out of memory, diverged, with reason) or COMPLETE."""
    info = read_model_info(run_dir) or {}
    status = info.get("status")
    reason = (info.get("stopping_reason") or {}).get("message")
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    trial.set_user_attr("stopping_reason", reason)
    trial.set_user_attr("epochs_trained", info.get("epochs_trained"))
    try:
        value = result.return_value
    except Exception as exc:  # noqa: BLE001 - a failed job is a failed trial; the sweep goes on
        fail = f"{status or 'error'}: {type(exc).__name__}: {exc}"
        trial.set_user_attr("fail_reason", fail)
        _tell(study, trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, fail)
        return TrialState.FAIL
    if status == "pruned":
        _tell(study, trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    if status == "diverged" or value is None or not math.isfinite(float(value)) or float(value) == DIVERGED_SCORE:
        trial.set_user_attr("fail_reason", f"diverged: {reason or f'the job returned {value}'}")
        _tell(study, trial, state=TrialState.FAIL)
        log.warning("trial %d diverged: %s", trial.number, reason)
        return TrialState.FAIL
    _tell(study, trial, float(value))
    return TrialState.COMPLETE


class TooManyFailures(RuntimeError):
    """The sweep stopped because failed trials passed max_failure_rate × n_trials."""


def check_failures(study: optuna.Study, settings: SweepSettings) -> None:
    failed = [t for t in _counted(study.get_trials(deepcopy=False)) if t.state == TrialState.FAIL]
    if len(failed) > settings.max_failure_rate * settings.n_trials:
        lines = "\n".join(f"  trial {t.number} ({t.user_attrs.get('variant')}): {t.user_attrs.get('fail_reason')}"
                          for t in failed)
        raise TooManyFailures(f"{len(failed)} failed trials exceed hydra.sweeper.max_failure_rate="
                              f"{settings.max_failure_rate} of n_trials={settings.n_trials}:\n{lines}")


def open_study(settings: SweepSettings) -> optuna.Study:
    return optuna.create_study(storage=open_storage(settings.storage), study_name=settings.study_name,
                               sampler=settings.sampler, direction=settings.direction, load_if_exists=True)


def run_sweep(settings: SweepSettings, launch: Launch, sweep_dir: Path, base_cfg: Any) -> optuna.Study:
    """Run trials until the study holds n_trials finished ones; returns the study."""
    with study_lock(settings.storage, settings.study_name):
        study = open_study(settings)
        study.set_user_attr(PRUNER_ATTR, settings.pruner_spec)
        fail_stale_trials(study, settings.grace_period)
        added = enqueue_variants(study, settings)
    log.info("study %s in %s: %d trials so far, variants enqueued now: %s", settings.study_name, settings.storage,
             len(study.get_trials(deepcopy=False)), added or "none")
    try:
        while True:
            batch: list[tuple[optuna.Trial, list[str]]] = []
            with study_lock(settings.storage, settings.study_name):
                while len(batch) < settings.n_jobs and _may_ask(study, settings.n_trials):
                    trial = study.ask()
                    trial.set_user_attr(WORKER_ATTR, this_worker())
                    batch.append((trial, trial_overrides(trial, settings, base_cfg)))
            if not batch:
                break
            with Heartbeat([trial for trial, _ in batch], settings.heartbeat_interval):
                results = launch([overrides for _, overrides in batch], batch[0][0].number)
            for (trial, _), result in zip(batch, results):
                run_dir = Path(result.hydra_cfg.hydra.runtime.output_dir) if result.hydra_cfg else sweep_dir
                state = record_outcome(study, trial, result, run_dir)
                log.info("trial %d (%s): %s", trial.number, trial.user_attrs.get("variant"), state.name)
            check_failures(study, settings)
    finally:
        write_results(study, sweep_dir)
    return study
