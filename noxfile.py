"""Set-up and entry points. `nox -s demo` trains on the built-in synthetic data; `nox -s tests` runs the suite;
`nox -s lint` checks the code with ruff (its rules are in pyproject.toml).

Each session installs the project (and torch, timm, open_clip, hydra, optuna, pandas) from the package
registry into its own virtual environment under .nox/, so a fresh machine needs only python3.
"""

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Install the project with its test extras and run the suite but its multi-process end-to-end tests (extra
    arguments go to pytest instead of that selection)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-m", "not multiprocess"]))


@nox.session
def multiprocess(session: nox.Session) -> None:
    """The end-to-end tests that start, signal or kill whole processes: DDP ranks, torchrun trials, sweep workers,
    whole sweeps killed and resumed, runs killed by a signal and resumed, a PostgreSQL restart, a preempted job.
    Each spends most of its time starting Python processes on the 2 cores,
    so together they would push `nox -s tests` past its 10-minute budget; CI runs both sessions."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-m", "multiprocess", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff over the whole tree, with the project's rules from pyproject.toml (extra arguments go to ruff)."""
    session.install("ruff>=0.17,<0.18")
    session.run("ruff", "check", *(session.posargs or ["."]))


@nox.session
def demo(session: nox.Session) -> None:
    """Train a ResNet-18 on the synthetic data; extra arguments are Hydra overrides."""
    session.install("-e", ".")
    session.run("python", "-m", "reid.train", "experiment=demo", *session.posargs)


BENCHMARKS = {"eval": "reid.metrics.benchmark", "rerank": "reid.metrics.rerank_benchmark",
              "train": "reid.engine.benchmark"}


@nox.session
def benchmark(session: nox.Session) -> None:
    """Time Market-1501-scale evaluation (`-- eval`, the default), re-ranking (`-- rerank`) or the training loop
    (`-- train`: loader, step and loop images/s); later arguments go to that benchmark."""
    session.install("-e", ".")
    args = list(session.posargs)
    name = args.pop(0) if args and args[0] in BENCHMARKS else "eval"
    session.run("python", "-m", BENCHMARKS[name], *args)
