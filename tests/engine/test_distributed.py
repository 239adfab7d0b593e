"""One run on two processes (torchrun, gloo, trainer.sync_bn=true) against the same run in one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import only_run_dir, run_train, train_env

# Several cooperating processes: run by `nox -s multiprocess` (docs in noxfile.py).
pytestmark = pytest.mark.multiprocess

# Augmentation off: each process draws its own augmentations, so only the un-augmented runs match step by step.
# data.p=2 x data.k=4 is the global batch (4 images per process), four steps an epoch.
RUN = ["experiment=smoke", "trainer.device=cpu", "trainer.deterministic=true", "data.augment=false", "data.p=2",
       "scheduler=none", "optimizer.lr=1e-3", "trainer.max_epochs=1", "loss._target_=faults.RecordingLoss"]


def losses(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    single, several = root / "single", root / "several"
    single.mkdir()
    several.mkdir()
    one = run_train([*RUN, f"+loss.record_to={single / 'loss'}"], cwd=single, data_dir=data_dir)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "reid.train"]
    two = subprocess.run([*torchrun, *RUN, "trainer.sync_bn=true", f"+loss.record_to={several / 'loss'}"],
                         cwd=several, env=train_env(data_dir), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    return {"single": single, "several": several}


def test_two_processes_train_the_single_process_run(runs: dict[str, Path]) -> None:
    single = losses(runs["single"] / "loss.rank0")
    rank0, rank1 = losses(runs["several"] / "loss.rank0"), losses(runs["several"] / "loss.rank1")
    assert len(single) == 4
    # Every rank computes the loss of the whole global batch, so they agree exactly...
    assert rank0 == rank1
    # ...and with one process training on the same batches, step by step.
    assert rank0 == pytest.approx(single, abs=1e-4)
    info_single = json.loads((only_run_dir(runs["single"]) / "model_info.json").read_text())
    run_dir = only_run_dir(runs["several"])
    info = json.loads((run_dir / "model_info.json").read_text())
    assert info["processes"] == 2 and info_single["processes"] == 1
    assert info["status"] == "finished"
    assert info["best_value"] == pytest.approx(info_single["best_value"], abs=1e-6)
    # Rank 0 alone logs: one copy of each line in the run's log.
    assert (run_dir / "log.txt").read_text().count("stopped: all 1 epochs completed") == 1


def test_a_checkpoint_of_two_processes_resumes_in_one(runs: dict[str, Path], data_dir: Path) -> None:
    run_dir = only_run_dir(runs["several"])
    checkpoint = torch.load(run_dir / "last_checkpoint.pth", weights_only=True)
    assert not [key for key in checkpoint["model"] if key.startswith("module.")]
    resumed = run_train([*RUN, "trainer.sync_bn=true", f"+loss.record_to={runs['several'] / 'resumed'}",
                         "trainer.max_epochs=2", "trainer.resume_allow_changes=true", f"trainer.resume={run_dir}"],
                        cwd=runs["several"], data_dir=data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads((run_dir / "model_info.json").read_text())
    assert info["epochs_trained"] == 2 and info["processes"] == 1
    assert len(losses(runs["several"] / "resumed.rank0")) == 4
    assert [row["epoch"] for row in json.loads((run_dir / "training_history.json").read_text())["epochs"]] == [1, 2]
