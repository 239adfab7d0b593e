"""The job's side of a trial: `current_trial()` opens the running job's Optuna trial from its environment.

The sweeper sets three environment variables per job (through `hydra.job.env_set`), so the app's config
needs no node for them and any launcher that runs Hydra jobs carries them along.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import optuna

from hydra_plugins.reid_optuna_sweeper._errors import SweepConfigError
from hydra_plugins.reid_optuna_sweeper._storage import open_trial

STORAGE_ENV = "REID_OPTUNA_STORAGE"
STUDY_ENV = "REID_OPTUNA_STUDY"
TRIAL_ENV = "REID_OPTUNA_TRIAL"


@dataclass(frozen=True)
class TrialLink:
    """Where a job's trial lives: enough for any process to open it again."""

    storage: str
    study_name: str
    trial_number: int

    def env(self) -> dict[str, str]:
        return {STORAGE_ENV: self.storage, STUDY_ENV: self.study_name, TRIAL_ENV: str(self.trial_number)}


def current_link() -> TrialLink | None:
    """The running job's trial link, or None outside a sweep."""
    storage, study, number = (os.environ.get(name) for name in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV))
    if not (storage and study and number):
        return None
    if not number.isdigit():
        raise SweepConfigError(f"{TRIAL_ENV}={number!r}: expected a trial number")
    return TrialLink(storage, study, int(number))


_opened: dict[TrialLink, optuna.Trial] = {}


def current_trial() -> optuna.Trial | None:
    """The running job's `optuna.Trial` (None outside a sweep), to `report(value, step)` and ask `should_prune()`.

    The trial is opened once per job from the study's storage, with the pruner the sweep was configured with;
    raise `optuna.TrialPruned` from the task to end the trial PRUNED. A job that is started again (a requeue after
    preemption) reopens the same trial, which stays RUNNING meanwhile; one whose trial has finished meanwhile
    (failed as abandoned, and retried as another trial) is refused, as nothing it computed could be reported.
    """
    link = current_link()
    if link is None:
        return None
    if link not in _opened:
        trial = open_trial(link.storage, link.study_name, link.trial_number)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == link.trial_number)
        if frozen.state.is_finished():
            reason = frozen.user_attrs.get("fail_reason")
            raise SweepConfigError(f"trial {link.trial_number} of study {link.study_name!r} (the job's trial link) is "
                                   f"already {frozen.state.name}{f' ({reason})' if reason else ''}; this job has no "
                                   "trial to report to")
        _opened.clear()
        _opened[link] = trial
    return _opened[link]
