"""A database storage that survives its server: connection checks, and bounded retries with backoff.

A PostgreSQL server restarted mid-sweep drops every open connection. Each pooled connection is checked
before use (`pool_pre_ping`), and every storage call that fails because the server cannot be reached is
retried with exponential backoff until the retry budget (`hydra.sweeper.storage_retry_s`) is spent; then it
raises `StorageUnreachable`, which names the storage URL (password masked), so a worker stops with that error
and never records a trial it could not store. The plugin imports no database library: a transient error is
recognised by its SQLAlchemy class name.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage

log = logging.getLogger(__name__)

# Jobs get the sweep's retry budget through this variable (hydra.job.env_set), like their trial link.
RETRY_ENV = "REID_OPTUNA_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 120.0
_FIRST_DELAY_S = 0.25
_MAX_DELAY_S = 8.0
# SQLAlchemy's errors for a server that is down, restarting or dropped the connection.
_TRANSIENT = ("OperationalError", "InterfaceError", "DisconnectionError")

T = TypeVar("T")


class StorageUnreachable(RuntimeError):
    """The study's database stayed unreachable for longer than the retry budget."""


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, fit for logs and error messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def retry_budget() -> float:
    """The retry budget of this process: the sweep's, passed to jobs through RETRY_ENV, else the default."""
    return float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S))


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it, e.g. Optuna's StorageInternalError) means the server was unreachable."""
    seen: BaseException | None = exc
    while seen is not None:
        if any(cls.__name__ in _TRANSIENT and cls.__module__.startswith("sqlalchemy") for cls in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def with_retries(call: Callable[[], T], url: str, budget: float, what: str,
                 on_retry: Callable[[], None] | None = None) -> T:
    """`call()`, retried with exponential backoff while the database is unreachable, for at most `budget` s."""
    deadline = time.monotonic() + budget
    delay = _FIRST_DELAY_S
    attempts = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempts += 1
            if time.monotonic() + delay > deadline:
                last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StorageUnreachable(
                    f"study storage {mask_url(url)} unreachable: {what} failed {attempts} times within "
                    f"{budget:.0f} s (hydra.sweeper.storage_retry_s); last error: {last}") from exc
            log.warning("study storage %s unreachable (%s: %s); retrying %s in %.2f s", mask_url(url),
                        type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)
            if on_retry is not None:
                on_retry()


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose every call rides out a database restart (see the module docstring)."""

    def __init__(self, url: str, budget: float | None = None) -> None:
        self.retry_s = retry_budget() if budget is None else budget
        with_retries(lambda: RDBStorage.__init__(self, url, engine_kwargs={"pool_pre_ping": True}), url,
                     self.retry_s, "opening the storage")

    def _retried(self, name: str, call: Callable[[], T]) -> T:
        return with_retries(call, self.url, self.retry_s, name, on_retry=self.remove_session)

    def set_trial_state_values(self, trial_id: int, state: optuna.trial.TrialState,
                               values: Any = None) -> bool:
        """As RDBStorage's, but a retry finding the trial already finished means the first attempt was stored."""
        attempts = []

        def call() -> bool:
            attempts.append(None)
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if len(attempts) > 1 and self.get_trial(trial_id).state == state:
                    return True
                raise

        return self._retried("set_trial_state_values", call)


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def retried(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retried(name, lambda: method(self, *args, **kwargs))

    return retried


# Optuna's cache in front of an RDBStorage calls these private methods (asking, suggesting, listing trials).
_CACHE_CALLS = ("_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials", "_get_stale_trial_ids")
for _name, _member in vars(RDBStorage).items():
    if (callable(_member) and (not _name.startswith("_") or _name in _CACHE_CALLS)
            and _name not in vars(ResilientRDBStorage) and _name not in ("remove_session", "upgrade")):
        setattr(ResilientRDBStorage, _name, _retrying(_name))
