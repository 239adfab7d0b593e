"""Where a study lives, and the lock that lets several sweep processes share it.

A storage is either a path (a journal file, safe for many processes on one machine) or a database URL
(`sqlite:///...`, `postgresql://...`; PostgreSQL for workers on several machines). The sweeper and every
job open the study from the same string, so pruning works whichever process runs the job.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from hydra_plugins.reid_optuna_sweeper._database import ResilientRDBStorage, with_retries
from hydra_plugins.reid_optuna_sweeper._errors import SweepConfigError

JOURNAL_SUFFIX = ".journal"


def default_storage(sweep_dir: str | Path, study_name: str) -> str:
    """A journal file in the sweep directory, so a sweep needs no set-up and its jobs can open their trials."""
    return str((Path(sweep_dir) / f"{study_name}{JOURNAL_SUFFIX}").resolve())


def is_url(storage: str) -> bool:
    return "://" in storage


def normalize_storage(storage: str) -> str:
    """The storage string every process can open: file paths made absolute, URLs kept as written."""
    if not storage:
        raise SweepConfigError("hydra.sweeper.storage is empty: expected a journal file path or a database URL")
    if is_url(storage):
        dialect = storage.split("://", 1)[0].split("+", 1)[0]
        if dialect not in ("sqlite", "postgresql"):
            raise SweepConfigError(f"hydra.sweeper.storage={storage!r}: expected a journal file path, sqlite:///... or "
                              f"postgresql://... (got the {dialect!r} scheme)")
        return storage
    return str(Path(storage).expanduser().resolve())


def open_storage(storage: str, retry_s: float | None = None) -> BaseStorage:
    """An Optuna storage for a normalized storage string; a database one retries for `retry_s` seconds
    while its server is unreachable (None: this process's budget, see `_database.retry_budget`)."""
    if is_url(storage):
        return ResilientRDBStorage(storage, retry_s)
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1]).resolve()


@contextmanager
def study_lock(storage: str, study_name: str, retry_s: float | None = None) -> Iterator[None]:
    """Serialize the sweep processes' bookkeeping (enqueueing variants, counting and asking trials).

    Files (journal, sqlite) use an advisory file lock next to them; PostgreSQL uses an advisory lock, which
    works across machines. Training itself runs outside the lock. Taking the PostgreSQL lock is retried while
    the server is unreachable; a lock lost with its connection (a server restart) is released by the server.
    """
    if is_url(storage) and storage.startswith("postgresql"):
        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        # Optuna's own database engine, so the plugin needs no database library of its own.
        rdb = open_storage(storage, retry_s)
        engine = rdb.engine

        def connect_and_lock():  # returns a SQLAlchemy connection (the plugin does not import the library)
            connection = engine.connect()
            try:
                connection.exec_driver_sql("SELECT pg_advisory_lock(%(key)s)", {"key": key})
            except BaseException:
                connection.close()
                raise
            return connection

        try:
            connection = with_retries(connect_and_lock, storage, rdb.retry_s, "taking the study lock")
            try:
                yield
            finally:
                try:
                    connection.exec_driver_sql("SELECT pg_advisory_unlock(%(key)s)", {"key": key})
                except Exception:  # noqa: BLE001 - a dropped connection has already released its lock
                    pass
                connection.close()
        finally:
            engine.dispose()
        return
    path = _sqlite_path(storage) if is_url(storage) else Path(storage)
    lock_path = path.with_name(f"{path.name}.{study_name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# The study attribute holding the pruner's `_target_` spec, which every job builds its pruner from.
PRUNER_ATTR = "reid_pruner"


def open_trial(storage: str, study_name: str, trial_number: int) -> optuna.Trial:
    """The running trial `trial_number`, opened by a job to report intermediate values and ask about pruning.

    The job builds the pruner the sweeper recorded in the study, so it prunes as the sweep was configured
    whichever process it runs in.
    """
    from hydra.utils import instantiate

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage),
                                  sampler=optuna.samplers.RandomSampler())
    except KeyError as exc:
        raise SweepConfigError(f"study {study_name!r} (the job's trial link) is not in {storage}") from exc
    spec = study.user_attrs.get(PRUNER_ATTR)
    study.pruner = instantiate(spec) if spec else optuna.pruners.NopPruner()
    for frozen in study.get_trials(deepcopy=False):
        if frozen.number == trial_number:
            return optuna.Trial(study, frozen._trial_id)
    raise SweepConfigError(f"trial {trial_number} (the job's trial link): study {study_name!r} in {storage} has "
                           "no such trial")
