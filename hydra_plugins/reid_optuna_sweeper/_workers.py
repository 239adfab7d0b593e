"""Asynchronous workers (`hydra.sweeper.n_workers`): N processes on one study, with no barrier between them.

A worker is the app's own command line run again with `hydra.sweeper.n_workers=1` and the sweep directory
fixed: an ordinary sweep process, which asks for a trial, trains it, tells the result and asks again. The
study lock already keeps the trial count, the named variants and stale-trial handling exact across processes,
so N workers need nothing more; one that frees up starts the next trial at once.

Where the workers run follows `hydra/launcher`. The basic launcher runs jobs one after another in its own
process, so the sweeper starts the workers as child processes on this machine, each pinned to its own GPUs
(`CUDA_VISIBLE_DEVICES`, `gpus_per_trial` each) or, without GPUs, given its share of the CPU threads. Any
other launcher gets the N workers as its jobs (submitit_slurm: one job array); each such job runs its worker
command on its node, with the basic launcher. Under SLURM the job's GPUs are SLURM's choice and are kept.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from hydra_plugins.reid_optuna_sweeper._errors import SweepConfigError

log = logging.getLogger(__name__)

# The worker's slot (0..n_workers-1), set in each worker's environment and recorded with its trials.
SLOT_ENV = "REID_OPTUNA_WORKER"
# Command-line arguments a worker replaces with its own (a worker never starts workers or submits jobs).
_REPLACED = ("hydra.sweeper.n_workers=", "hydra.sweep.dir=", "hydra/launcher=", "hydra.launcher.")


def visible_devices(environ: Mapping[str, str] | None = None) -> list[str]:
    """This machine's GPUs for the workers: CUDA_VISIBLE_DEVICES if set, else those `nvidia-smi -L` lists.

    Deliberately without torch: the sweeper must not initialise CUDA in the process that starts the workers.
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [device.strip() for device in environ["CUDA_VISIBLE_DEVICES"].split(",") if device.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(index) for index, line in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def worker_environments(n_workers: int, gpus_per_trial: int, devices: Sequence[str],
                        cores: int) -> list[dict[str, str]]:
    """Each worker's environment: its own `gpus_per_trial` devices, or on a CPU-only machine its thread budget.

    Four devices and two GPUs per trial give [0,1] and [2,3]; fewer devices than workers need is an error.
    `gpus_per_trial=0` runs CPU workers even where GPUs are visible.
    """
    if n_workers < 1 or gpus_per_trial < 0:
        raise SweepConfigError(f"hydra.sweeper.n_workers={n_workers}, gpus_per_trial={gpus_per_trial}: expected "
                               "n_workers >= 1 and gpus_per_trial >= 0")
    if devices and gpus_per_trial > 0:
        needed = n_workers * gpus_per_trial
        if len(devices) < needed:
            raise SweepConfigError(
                f"hydra.sweeper.n_workers={n_workers} with hydra.sweeper.gpus_per_trial={gpus_per_trial} needs "
                f"{needed} GPUs, but {len(devices)} are visible ({','.join(devices)}); lower n_workers or "
                "gpus_per_trial, or set CUDA_VISIBLE_DEVICES")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(devices[slot * gpus_per_trial:(slot + 1) * gpus_per_trial])}
                for slot in range(n_workers)]
    threads = str(max(1, cores // n_workers))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(n_workers)]


def worker_command(argv: Sequence[str], sweep_dir: Path) -> list[str]:
    """The sweep's own command line as one worker: n_workers=1, the basic launcher, this sweep directory."""
    kept = [arg for arg in argv[1:] if not arg.startswith(_REPLACED)]
    return [sys.executable, *kept, "hydra.sweeper.n_workers=1", "hydra/launcher=basic",
            f"hydra.sweep.dir={sweep_dir.resolve()}"]


def this_slot() -> int | None:
    slot = os.environ.get(SLOT_ENV)
    return int(slot) if slot is not None and slot.isdigit() else None


def run_local_workers(command: Sequence[str], environments: Sequence[Mapping[str, str]], cwd: Path) -> None:
    """Run one worker process per environment on this machine and wait for all; a failed worker is an error."""
    workers = []
    try:
        for slot, extra in enumerate(environments):
            env = {**os.environ, **extra, SLOT_ENV: str(slot)}
            log.info("worker %d: %s", slot, " ".join(f"{k}={v}" for k, v in extra.items()) or "default environment")
            workers.append(subprocess.Popen(list(command), cwd=cwd, env=env))
        codes = [worker.wait() for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait()
    failed = [f"worker {slot} exited with status {code}" for slot, code in enumerate(codes) if code != 0]
    if failed:
        raise RuntimeError(f"sweep workers failed: {'; '.join(failed)} (their logs are above)")


@dataclass
class WorkerJob:
    """The task a launcher runs once per worker (submitit: one array task each): the worker command, here.

    Under SLURM the job keeps the GPUs SLURM gave it; elsewhere (joblib, submitit_local) the workers share
    this machine and are pinned by slot, as local workers are.
    """

    command: list[str]
    cwd: str
    n_workers: int
    gpus_per_trial: int

    def __call__(self, cfg: object) -> None:
        slot = this_slot() or 0
        extra: dict[str, str] = {}
        if "SLURM_JOB_ID" not in os.environ:
            extra = worker_environments(self.n_workers, self.gpus_per_trial, visible_devices(),
                                        os.cpu_count() or 1)[slot]
        log.info("worker %d on %s: %s", slot, socket.gethostname(), " ".join(self.command))
        code = subprocess.run(self.command, cwd=self.cwd, env={**os.environ, **extra, SLOT_ENV: str(slot)}).returncode
        if code != 0:
            raise RuntimeError(f"sweep worker {slot} on {socket.gethostname()} exited with status {code}")


def worker_of(trial: FrozenTrial) -> str:
    """A readable id of the process that ran `trial`: slot, host and pid."""
    worker = trial.user_attrs.get("worker") or {}
    slot = worker.get("slot")
    return f"{'' if slot is None else f'worker {slot} '}{worker.get('host')}:{worker.get('pid')}"


def busy_fractions(trials: Sequence[FrozenTrial]) -> dict[str, float]:
    """Each worker's share of the time it spent on trials while trials remained to be taken.

    The window runs from the first trial's start to the last trial's start (after that no work is left to
    take, so a worker waiting for the others is not idling); a running trial counts up to the window's end.
    """
    started = [t for t in trials if t.datetime_start is not None]
    if not started:
        return {}
    begin = min(t.datetime_start for t in started).timestamp()
    end = max(t.datetime_start for t in started).timestamp()
    busy: dict[str, float] = defaultdict(float)
    for trial in started:
        start = trial.datetime_start.timestamp()
        stop = trial.datetime_complete.timestamp() if trial.datetime_complete is not None else end
        busy[worker_of(trial)] += max(0.0, min(stop, end) - max(start, begin))
    span = end - begin
    return {worker: (1.0 if span <= 0 else seconds / span) for worker, seconds in sorted(busy.items())}


def study_busy_fractions(study: optuna.Study) -> dict[str, float]:
    return busy_fractions(study.get_trials(deepcopy=False))
