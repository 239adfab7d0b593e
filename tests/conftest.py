"""Shared fixtures: composing the real configs, and one cached synthetic dataset for the whole session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")


def compose_named(config_name: str, *overrides: str):
    """Compose one of conf/'s entrypoint configs (evaluate, visualize, extract, export) as its command would."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory per test session, so the synthetic set is generated once and reused."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def compose_config(data_dir: Path):
    """Compose `conf/config.yaml` with overrides, as `python -m reid.train` would (without running)."""
    from reid.config import register_configs

    register_configs()

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=[f"data_dir={data_dir}", *overrides],
                           return_hydra_config=False)

    yield _compose
    GlobalHydra.instance().clear()


def train_env(data_dir: Path) -> dict[str, str]:
    """The environment of a real training process: the session's data dir, and tests/ importable (faults.py)."""
    env = {**os.environ, "REID_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_train(args: list[str], cwd: Path, data_dir: Path, timeout: float = 300, **kwargs):
    """Run `python -m reid.train` in a real process; returns the CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "reid.train", *args], cwd=cwd, env=train_env(data_dir),
                          capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def only_run_dir(root: Path) -> Path:
    """The single run directory a `reid.train` call created under `root/outputs`."""
    runs = sorted(p.parent for p in (root / "outputs").rglob("model_info.json"))
    assert len(runs) == 1, f"expected one run under {root}/outputs, found {runs}"
    return runs[0]


@pytest.fixture(scope="session")
def untrained_model_file(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A factory: the run directory of a reid model file (`best_model.pth`) with `experiment=smoke` plus the given
    overrides, written as CheckpointSaver writes it but with untrained (seeded) weights: no training needed."""
    import torch
    from hydra.utils import instantiate

    from reid.checkpoint import BEST_MODEL, save_model_file
    from reid.config import as_plain_dict, register_configs
    from reid.models.build import build_model

    register_configs()
    made: dict[tuple[str, ...], Path] = {}

    def _make(*overrides: str) -> Path:
        if overrides not in made:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose(config_name="config", overrides=[f"data_dir={data_dir}", "experiment=smoke", *overrides])
            GlobalHydra.instance().clear()
            splits = instantiate(cfg.dataset).load()
            torch.manual_seed(0)
            model = build_model(cfg.backbone, cfg.head, num_classes=splits.num_classes, num_cameras=splits.num_cameras)
            run_dir = tmp_path_factory.mktemp("untrained_run")
            save_model_file(run_dir / BEST_MODEL, model, model.architecture,
                            {"epoch": 1, "metrics": None, "config": as_plain_dict(cfg)})
            made[overrides] = run_dir
        return made[overrides]

    return _make
