"""Trials on several processes (`hydra.sweeper.processes_per_trial`): each trial's job runs the app under torchrun.

The launcher runs `DistributedTrial` as the job instead of the app's task: it starts
`python -m torch.distributed.run --standalone --nproc_per_node=N --no-python <the sweep's interpreter and
program> <the job's overrides> hydra.run.dir=<the job's output directory>` as a subprocess (the sweep process
never imports torch) and waits for it. Each process is an ordinary single run of the app in that directory,
with the trial link in its environment, so the app opens its trial with `current_trial()` as any job does.

A return value cannot leave torchrun, so the trial's runs get one more Hydra callback, `ReturnValueFile`: the
process of rank 0 (the one whose RANK is 0 or unset) writes its task's outcome (the value, a prune or the
exception) to `.reid_optuna_return.json` in the output directory, and `DistributedTrial` returns or raises it
in the launcher's job. The app must run under torchrun and return the trial's value on rank 0.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hydra_plugins.reid_optuna_sweeper._errors import SweepConfigError

RETURN_FILE = ".reid_optuna_return.json"
# Lines of the processes' output a failed trial's reason quotes, out of the last ones kept.
TAIL_LINES = 25
_KEPT_LINES = 400
# Interpreter options that take the next argument as their value (`python -W error app.py`).
_OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")
# Hydra's own flags that choose the config, kept for the trial's runs (each takes a value).
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


class TrialJobFailed(RuntimeError):
    """A trial's torchrun job ended without a value: why, with the exit status and the tail of its output."""


def split_command_line(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`sys.orig_argv` as (interpreter options and program, the app's arguments).

    The program is a script, `-m module` or `-c code`; the interpreter itself is left out (it is `sys.executable`).
    """
    index = 1
    while index < len(argv) and argv[index].startswith("-"):
        if argv[index] in ("-m", "-c"):
            return list(argv[1:index + 2]), list(argv[index + 2:])
        index += 2 if argv[index] in _OPTIONS_WITH_VALUE else 1
    if index >= len(argv):
        raise SweepConfigError(f"hydra.sweeper.processes_per_trial: cannot tell the app's program in the command "
                               f"line {list(argv)}; start the sweep as `python app.py` or `python -m package.app`")
    return list(argv[1:index + 1]), list(argv[index + 1:])


def config_flags(app_args: Sequence[str]) -> list[str]:
    """The app's Hydra flags that choose its config (`--config-name X`, `-cp=...`), which every run needs too."""
    kept: list[str] = []
    args = iter(app_args)
    for arg in args:
        if arg in _CONFIG_FLAGS:
            kept += [arg, next(args, "")]
        elif arg.startswith(tuple(f"{flag}=" for flag in _CONFIG_FLAGS)):
            kept.append(arg)
    return kept


def torchrun_command(argv: Sequence[str], processes: int, overrides: Sequence[str], run_dir: Path) -> list[str]:
    """The command that runs one trial's job as one run of the sweep's app on `processes` processes of this
    machine, in `run_dir`. `--standalone` gives each trial its own rendezvous, so trials side by side never meet."""
    program, app_args = split_command_line(argv)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "--no-python", sys.executable, "-u", *program, *config_flags(app_args), *overrides,
            f"++hydra.callbacks.reid_optuna_return._target_={ReturnValueFile.__module__}.ReturnValueFile",
            f"hydra.run.dir={run_dir.resolve()}"]


def _plain(value: Any) -> Any:
    """A return value JSON cannot write as it is (numpy or torch scalars and arrays) as a number or a list."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"the job returned {value!r}, which is neither a number nor a sequence of numbers") from None


def is_main_process() -> bool:
    """The process that speaks for the job: rank 0 under torchrun (RANK=0), or a process without a rank."""
    return os.environ.get("RANK", "0") == "0"


class ReturnValueFile(Callback):
    """Hydra callback of each trial run under torchrun: rank 0 writes its task's outcome for the launcher's job."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not is_main_process():
            return
        outcome: dict[str, Any]
        if job_return.status == JobStatus.COMPLETED:
            outcome = {"status": "completed", "value": job_return._return_value}
        elif isinstance(job_return._return_value, optuna.TrialPruned):
            outcome = {"status": "pruned", "error": str(job_return._return_value)}
        else:
            error = job_return._return_value
            outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        try:
            text = json.dumps(outcome, default=_plain)
        except (TypeError, ValueError) as exc:
            text = json.dumps({"status": "failed", "error": f"TypeError: {exc}"})
        path = Path(config.hydra.runtime.output_dir) / RETURN_FILE
        partial = path.with_name(f"{path.name}.partial")
        partial.write_text(text)
        os.replace(partial, path)


def _run_teed(command: Sequence[str], cwd: str) -> tuple[int, list[str]]:
    """Run `command`, passing its output on line by line; returns its exit status and its last lines."""
    kept: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
    with subprocess.Popen(list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as process:
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                kept.append(line)
            code = process.wait()
        finally:
            if process.poll() is None:
                # The sweep is stopping (Ctrl+C, an error): torchrun passes SIGTERM on to every process.
                process.send_signal(signal.SIGTERM)
                process.wait()
    return code, list(kept)


def failure_tail(lines: Sequence[str]) -> str:
    """The last lines the processes wrote before torchrun's own traceback and failure summary, which name only
    ranks and exit codes; the plain last lines where the output has no such ending."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Traceback (most recent call last):") and any(
                "torch/distributed/run.py" in line for line in lines[index:index + 8]):
            lines = lines[:index]
            break
    return "".join(lines[-TAIL_LINES:])


def _exit_status(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


@dataclass
class DistributedTrial:
    """The task the launcher runs for each trial: the app's job under torchrun on `processes` processes.

    `argv` is the sweep's command line (`sys.orig_argv`), `cwd` the directory it started in: each run starts
    there, as the sweep did, so the app's relative paths mean the same.
    """

    argv: list[str]
    processes: int
    cwd: str

    def __call__(self, cfg: DictConfig) -> Any:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        # The sweep's `hydra.mode=MULTIRUN` is left out: each process is a single run.
        overrides = [*(o for o in hydra_cfg.overrides.hydra if not o.startswith("hydra.mode=")),
                     *hydra_cfg.overrides.task]
        result = run_dir / RETURN_FILE
        # A requeued job must not read the outcome of the attempt before it.
        result.unlink(missing_ok=True)
        code, lines = _run_teed(torchrun_command(self.argv, self.processes, overrides, run_dir), self.cwd)
        torchrun = f"torchrun ({self.processes} processes) exited with {_exit_status(code)}"
        tail = failure_tail(lines)
        output = f"; the last lines of its output:\n{tail}" if tail else ""
        if not result.exists():
            raise TrialJobFailed(f"{torchrun} and rank 0 left no return value ({result} is missing){output}")
        outcome = json.loads(result.read_text())
        if outcome["status"] == "pruned":
            raise optuna.TrialPruned(outcome["error"])
        if outcome["status"] == "failed":
            raise TrialJobFailed(f"rank 0 raised {outcome['error']}; {torchrun}{output}")
        if code != 0:
            raise TrialJobFailed(f"rank 0 returned {outcome['value']!r}, but {torchrun}{output}")
        return outcome["value"]
