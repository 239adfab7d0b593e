"""Which RUNNING trials are dead, and giving their work back to the study.

Every sweep process stamps its running trials with a heartbeat (a wall-clock time in the trial's user
attributes) while their jobs train. A trial left RUNNING is stale when its process is gone: on this host,
when its pid no longer exists; on any other host, when its last sign of life (the heartbeat, else the
trial's start) is older than the grace period. A trial whose process died between asking for it and
claiming it has no worker at all; its start time is the only sign of life it has. This works the same for
journal files and databases, so a worker that died on another machine is noticed too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hydra_plugins.reid_optuna_sweeper._workers import this_slot

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"
HEARTBEAT_ATTR = "heartbeat"
# User attributes that describe one attempt, not the work; a retry does not inherit them.
ATTEMPT_ATTRS = (WORKER_ATTR, HEARTBEAT_ATTR, "overrides", "run_dir",
                 "fail_reason", "stale", "retry_of")


def _process_exists(pid: int) -> bool:
    """True while `pid` names a process on this host, including one owned by another user."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_worker() -> dict[str, Any]:
    """This process as the trials record it; a worker of `hydra.sweeper.n_workers` adds its slot."""
    worker: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    if this_slot() is not None:
        worker["slot"] = this_slot()
    return worker


def stale_reason(trial: FrozenTrial, grace_period: float, now: float | None = None) -> str | None:
    """Why the RUNNING `trial` is dead, or None while its process may still be working on it."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    if worker and worker["host"] == this_worker()["host"]:
        if worker["pid"] == os.getpid() or _process_exists(worker["pid"]):
            return None
        return f"sweep process {worker['pid']} on {worker['host']} died"
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    if beat is None:
        return None
    age = (time.time() if now is None else now) - beat
    if age <= grace_period:
        return None
    silence = f"for {age:.0f} s (grace period {grace_period:.0f} s)"
    if not worker:
        return f"no sweep process claimed it {silence}"
    if HEARTBEAT_ATTR not in trial.user_attrs:
        return f"sweep process {worker['pid']} on {worker['host']} sent no heartbeat since the trial started {silence}"
    return f"sweep process {worker['pid']} on {worker['host']} sent no heartbeat {silence}"


def fail_stale_trials(study: optuna.Study, grace_period: float) -> list[int]:
    """Mark stale RUNNING trials failed and enqueue their work again; returns the trial numbers retried."""
    retried = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(frozen, grace_period)
        if reason is None:
            continue
        trial = optuna.Trial(study, frozen._trial_id)
        trial.set_user_attr("fail_reason", f"{reason}; retried")
        trial.set_user_attr("stale", True)
        study.tell(frozen.number, state=TrialState.FAIL)
        attrs = {k: v for k, v in frozen.user_attrs.items() if k not in ATTEMPT_ATTRS}
        study.enqueue_trial(dict(frozen.params), user_attrs={**attrs, "retry_of": frozen.number})
        retried.append(frozen.number)
        log.warning("trial %d: %s; marked failed and enqueued again", frozen.number, reason)
    return retried


class Heartbeat:
    """While open, stamps the given trials with the current time every `interval` seconds (and once at once)."""

    def __init__(self, trials: Sequence[optuna.Trial], interval: float) -> None:
        self.trials = list(trials)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reid-sweep-heartbeat", daemon=True)

    def beat(self) -> None:
        now = time.time()
        for trial in self.trials:
            trial.set_user_attr(HEARTBEAT_ATTR, now)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat must never stop training
                log.warning("sweep heartbeat not recorded: %s: %s", type(exc).__name__, exc)

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
