"""One writer per run directory: a second process resuming (or rerunning) the same run refuses at once.

The owner of a run, pipeline or sweep-trial directory keeps `.reid.lock` in it for as long as it trains: a JSON
record of host, pid and start time, created with O_CREAT|O_EXCL (atomic on local and network filesystems) and
held with `flock` where the filesystem supports it, which also serialises the decision to take over a stale lock.
A heartbeat thread refreshes the file's mtime. A lock whose process died on this host is taken over at once; one
from another host is honoured until its heartbeat is older than `trainer.lock_stale_after`, since the directory
may be on a shared filesystem, unless it is this job's own from before a requeue: SLURM runs one instance of a
job at a time and keeps its job id across requeues (counting them in SLURM_RESTART_COUNT), so a lock of the same
job id and task with a lower restart count belongs to a process SLURM has ended, wherever it ran (a requeue may
land on another node). Within one process the lock is re-entrant: the `reid_run_dir` resolver claims
the directory before Hydra writes `.hydra/` and `log.txt` there, then `train()` and pipelines hold it too.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from reid.errors import ConfigError, ReidError
from reid.utils.process import process_exists

log = logging.getLogger("reid")

LOCK_FILE = ".reid.lock"
# A live owner refreshes its heartbeat this many times per staleness period (and at least once a minute), so it
# never looks stale to another host.
_BEATS_PER_STALE_PERIOD = 4
_MAX_BEAT_INTERVAL = 60.0
# Tries at taking a lock file that is being released or replaced under us, before giving up.
_ATTEMPTS = 5


class RunDirLocked(ReidError, RuntimeError):
    """Another live process owns the run directory."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: written into the lock file, read back to judge and to name the owner."""

    host: str
    pid: int
    started: str
    token: str
    # The SLURM job task this process runs as ("<SLURM_JOB_ID>.<SLURM_PROCID>"), and how often SLURM restarted it.
    slurm_task: str | None = None
    slurm_restarts: int = 0

    @classmethod
    def this_process(cls) -> LockOwner:
        started = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
        job = os.environ.get("SLURM_JOB_ID")
        task = f"{job}.{os.environ.get('SLURM_PROCID', '0')}" if job else None
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        return cls(socket.gethostname(), os.getpid(), started, uuid.uuid4().hex, task,
                   int(restarts) if restarts.isdigit() else 0)


def _read_owner(fd: int) -> LockOwner | None:
    """The record in an open lock file, or None while it is empty (being written) or unreadable."""
    try:
        fields = json.loads(os.pread(fd, 65536, 0))
        task = fields.get("slurm_task")
        return LockOwner(str(fields["host"]), int(fields["pid"]), str(fields["started"]), str(fields["token"]),
                         None if task is None else str(task), int(fields.get("slurm_restarts", 0)))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _write_owner(fd: int, owner: LockOwner) -> None:
    data = (json.dumps(asdict(owner), indent=2) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _flock(fd: int, wait: bool) -> bool:
    """Take `flock` on the lock file; False only when another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without flock (some network mounts): O_EXCL and the record decide alone
        return True
    return True


def _is_current(fd: int, path: Path) -> bool:
    """Whether the open file is still the one at `path` (its owner may have released and unlinked it)."""
    opened = os.fstat(fd)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)


def _takeover_reason(owner: LockOwner | None, age: float, stale_after: float, me: LockOwner) -> str | None:
    """Why a lock nobody holds `flock` on may be taken over, or None when its owner must be presumed alive."""
    if owner is None:
        return f"its record is unreadable and {age:.0f} s old" if age > stale_after else None
    if owner.slurm_task is not None and owner.slurm_task == me.slurm_task and owner.slurm_restarts < me.slurm_restarts:
        return (f"it is this SLURM job's own (task {owner.slurm_task}, pid {owner.pid} on {owner.host}) from before "
                f"its requeue (restart {owner.slurm_restarts}; this is restart {me.slurm_restarts})")
    if owner.host == me.host:
        # Our own pid in a lock this process does not hold is a previous process's (pids are reused in containers).
        if owner.pid == me.pid or not process_exists(owner.pid):
            return f"pid {owner.pid} on this host ({owner.host}) has exited"
        return None
    if age > stale_after:
        return (f"pid {owner.pid} on host {owner.host} has not refreshed it for {age:.0f} s "
                f"(trainer.lock_stale_after={stale_after:g})")
    return None


def _refusal(directory: Path, path: Path, owner: LockOwner | None, age: float, stale_after: float,
             me: LockOwner) -> RunDirLocked:
    who = (f"pid {owner.pid} on host {owner.host} since {owner.started}" if owner is not None
           else "another process (its lock record is not written yet)")
    message = (f"{directory} is in use by {who} (lock file {path}); wait for it to finish, stop it, "
               "or, if that process is gone, delete the lock file")
    if owner is not None and owner.host != me.host:
        message += (f". Its heartbeat is {age:.0f} s old; a lock from another host is taken over once older than "
                    f"trainer.lock_stale_after={stale_after:g} s")
    return RunDirLocked(message)


class _HeldLock:
    """A lock this process owns: the open, flocked file and the heartbeat that keeps it fresh."""

    def __init__(self, directory: Path, fd: int, owner: LockOwner, stale_after: float) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self.fd = fd
        self.owner = owner
        self.holders = 1
        self._stop = threading.Event()
        interval = min(stale_after / _BEATS_PER_STALE_PERIOD, _MAX_BEAT_INTERVAL)
        self._heartbeat = threading.Thread(target=self._beat, args=(interval,), name=f"lock {directory}", daemon=True)
        self._heartbeat.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                os.utime(self.fd)
            except OSError as exc:
                log.warning("could not refresh the lock %s: %s", self.path, exc)

    def release(self) -> None:
        self._stop.set()
        self._heartbeat.join()
        try:
            owner = _read_owner(self.fd)
            if _is_current(self.fd, self.path) and owner is not None and owner.token == self.owner.token:
                os.unlink(self.path)
            else:
                log.warning("%s no longer holds this process's record (taken over as stale?); leaving it", self.path)
        finally:
            os.close(self.fd)


def _try_take(directory: Path, stale_after: float, me: LockOwner) -> _HeldLock | None:
    """Take the lock, raise RunDirLocked, or return None when the file changed hands meanwhile (try again)."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        created = True
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        created = False
    try:
        if created:
            # The record goes in before flock, so a process probing in between sees a live owner, never a stale one.
            _write_owner(fd, me)
        if not _flock(fd, wait=created):
            raise _refusal(directory, path, _read_owner(fd), time.time() - os.fstat(fd).st_mtime, stale_after, me)
        if not _is_current(fd, path):
            os.close(fd)
            return None
        if not created:
            owner, age = _read_owner(fd), time.time() - os.fstat(fd).st_mtime
            reason = _takeover_reason(owner, age, stale_after, me)
            if reason is None:
                raise _refusal(directory, path, owner, age, stale_after, me)
            log.warning("taking over the lock of %s: %s", directory, reason)
            _write_owner(fd, me)
    except BaseException:
        os.close(fd)
        raise
    return _HeldLock(directory, fd, me, stale_after)


_held: dict[Path, _HeldLock] = {}


def acquire(directory: str | Path, stale_after: float) -> Path:
    """Own `directory` (created if missing) until `release`; re-entrant within this process. Returns its key."""
    if not (isinstance(stale_after, (int, float)) and stale_after > 0):
        raise ConfigError(f"trainer.lock_stale_after={stale_after!r}: expected a number of seconds > 0")
    key = Path(directory).resolve()
    if key in _held:
        _held[key].holders += 1
        return key
    key.mkdir(parents=True, exist_ok=True)
    me = LockOwner.this_process()
    for _ in range(_ATTEMPTS):
        held = _try_take(key, stale_after, me)
        if held is not None:
            _held[key] = held
            return key
    raise RunDirLocked(f"{key}: its lock file {key / LOCK_FILE} kept changing hands; another process is starting "
                       "or stopping in this directory, try again")


def release(key: Path) -> None:
    """Give up one hold on `key`; the last one removes the lock file."""
    held = _held[key]
    held.holders -= 1
    if held.holders == 0:
        del _held[key]
        held.release()


@contextmanager
def hold_run_dir(directory: str | Path, stale_after: float) -> Iterator[Path]:
    """Own `directory` for the duration of the block (see `acquire`)."""
    key = acquire(directory, stale_after)
    try:
        yield key
    finally:
        release(key)


@atexit.register
def _release_all() -> None:
    """Any exit releases, SystemExit from a signal too: the run_dir resolver's claim lasts the whole process."""
    for key in list(_held):
        _held.pop(key).release()


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) must neither keep a lock alive after its parent dies nor release it.

    Closing the child's copy of the descriptor leaves the parent's flock in place (flock belongs to the open file).
    """
    for held in _held.values():
        os.close(held.fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)
