"""Helpers for sweep tests: run `python -m reid.train --multirun` and open the resulting study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
from conftest import train_env

from hydra_plugins.reid_optuna_sweeper._storage import open_storage

# A tiny sweep on the smoke config: 2 epochs, batch choices the 8 smoke identities allow.
TINY = ["sweep=plateau", "experiment=smoke", "data.p=choice(2,4)", "data.k=choice(2,4)",
        "hydra.sweeper.sampler.seed=0"]


# Runs reid.train as `python -m` would, with deprecation, future and Optuna experimental warnings as errors.
STRICT_MAIN = ("import runpy, sys, warnings, optuna; "
               "[warnings.simplefilter('error', c) for c in (DeprecationWarning, FutureWarning, "
               "optuna.exceptions.ExperimentalWarning)]; "
               "sys.argv = ['reid.train', *sys.argv[1:]]; runpy.run_module('reid.train', run_name='__main__')")


def sweep_command(args: list[str]) -> list[str]:
    return [sys.executable, "-c", STRICT_MAIN, "--multirun", *args]


def run_sweep(args: list[str], cwd: Path, data_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """One sweep process, in which any deprecation or experimental warning is an error."""
    return subprocess.run(sweep_command(args), cwd=cwd, env=train_env(data_dir), capture_output=True, text=True,
                          timeout=timeout)


def load(storage: str | Path, study_name: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=open_storage(str(storage)))


