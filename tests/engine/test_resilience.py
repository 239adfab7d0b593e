"""Every run survives: exact resume after SIGKILL, SIGINT/SIGTERM, divergence, out-of-memory (real processes)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import only_run_dir, run_train, train_env

from reid.checkpoint import BEST_MODEL, FINAL_MODEL, LAST_CHECKPOINT, load_training_checkpoint

# 48 train images, P×K = 2×4: 4 steps per epoch; SlowLoss makes each step take ~0.25 s so a signal lands mid-epoch.
RUN = ["experiment=smoke", "data.p=2", "data.k=4", "trainer.max_epochs=3", "trainer.deterministic=true",
       "trainer.log_every=1", "loss._target_=faults.SlowLoss", "+loss.sleep_seconds=0.25"]


def history(run_dir: Path) -> list[dict]:
    """Per-epoch figures without the wall-clock time, which legitimately differs between runs."""
    rows = json.loads((run_dir / "training_history.json").read_text())["epochs"]
    return [{k: v for k, v in row.items() if k != "epoch_time"} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> Iterator[list[dict]]:
    """The uninterrupted run every interrupted-and-resumed run must reproduce exactly."""
    cwd = tmp_path_factory.mktemp("reference")
    result = run_train(RUN, cwd, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = history(only_run_dir(cwd))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    yield rows
    shutil.rmtree(cwd, ignore_errors=True)


def start_until(cwd: Path, data_dir: Path, args: list[str], marker: str) -> subprocess.Popen:
    """Start a training process and return once its output shows `marker`."""
    process = subprocess.Popen([sys.executable, "-m", "reid.train", *args], cwd=cwd, env=train_env(data_dir),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.monotonic() + 240
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            return process
        assert time.monotonic() < deadline, "".join(seen)[-3000:]
    raise AssertionError(f"process ended before {marker!r}:\n" + "".join(seen)[-3000:])


@pytest.mark.multiprocess
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, data_dir, reference):
    process = start_until(tmp_path, data_dir, RUN, "epoch 2 step 2/4")
    process.kill()
    process.wait(timeout=30)
    run_dir = only_run_dir(tmp_path)
    assert load_training_checkpoint(run_dir / LAST_CHECKPOINT)["epoch"] == 1
    assert [r["epoch"] for r in history(run_dir)] == [1]

    result = run_train([*RUN, f"trainer.resume={run_dir}"], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert history(run_dir) == reference  # bit for bit: losses, lr, top-1 and mAP
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]
    info = json.loads((run_dir / "model_info.json").read_text())
    assert len(info["resumes"]) == 1 and info["resumes"][0]["from_epoch"] == 1
    assert info["status"] == "finished" and info["epochs_trained"] == 3
    assert (run_dir / "log.txt").read_text().count("[Epoch 1/3]") == 1


@pytest.mark.multiprocess
@pytest.mark.parametrize("signum,reason,code", [
    (signal.SIGINT, "interrupted by the user (Ctrl+C)", 130),
    (signal.SIGTERM, "terminated by SIGTERM", 143),
])
def test_signal_saves_checkpoint_and_reason_then_resume_latest(tmp_path, data_dir, reference, signum, reason, code):
    process = start_until(tmp_path, data_dir, RUN, "epoch 2 step 1/4")
    process.send_signal(signum)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == code, output[-3000:]
    run_dir = only_run_dir(tmp_path)
    text = (run_dir / "STOPPING_REASON.txt").read_text()
    assert text.startswith(f"Training stopped: {reason}")
    assert f"trainer.resume={run_dir.resolve()}" in text and "python -m reid.train experiment=smoke" in text
    checkpoint = load_training_checkpoint(run_dir / LAST_CHECKPOINT)
    assert checkpoint["epoch"] == 1 and checkpoint["epoch_progress"]["step"] in (1, 2, 3)
    assert json.loads((run_dir / "model_info.json").read_text())["status"] == "interrupted"

    result = run_train([*RUN, "trainer.resume=latest"], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert history(run_dir) == reference  # resuming mid-epoch is exact too


def test_resume_with_a_changed_config_lists_the_keys(tmp_path, data_dir):
    result = run_train(["experiment=smoke", "trainer.max_epochs=1"], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    result = run_train(["experiment=smoke", "trainer.max_epochs=2", "optimizer.lr=1e-3",
                        f"trainer.resume={run_dir}"], tmp_path, data_dir)
    assert result.returncode != 0
    assert "optimizer.lr: 0.00035 -> 0.001" in result.stderr and "trainer.max_epochs: 1 -> 2" in result.stderr
    assert "trainer.resume_allow_changes=true" in result.stderr
    result = run_train(["experiment=smoke", "trainer.max_epochs=2", f"trainer.resume={run_dir}",
                        "trainer.resume_allow_changes=true"], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run_dir / "model_info.json").read_text())
    assert info["resumes"][0]["config_changes"] == {"trainer.max_epochs": {"old": 1, "new": 2}}
    assert info["epochs_trained"] == 2


def test_resume_latest_without_a_run_is_a_clear_error(tmp_path, data_dir):
    result = run_train(["experiment=smoke", "trainer.resume=latest"], tmp_path, data_dir)
    assert result.returncode != 0
    assert "no resumable run of experiment 'smoke'" in result.stderr


def test_nan_loss_stops_with_divergence_and_keeps_the_best_model(compose_config, tmp_path):
    from reid.train import train

    cfg = compose_config("experiment=smoke", "trainer.max_epochs=3", "loss._target_=faults.NanLoss",
                         "+loss.after_steps=3")
    value = train(cfg, run_dir=tmp_path)
    assert value == -1.0
    text = (tmp_path / "STOPPING_REASON.txt").read_text()
    assert text.startswith("Training stopped: diverged: loss=nan at epoch 2, step 2")
    assert "Lower the learning rate" in text and "trainer.grad_clip" in text
    best = torch.load(tmp_path / BEST_MODEL, weights_only=True)
    assert best["meta"]["epoch"] == 1
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert info["status"] == "diverged" and info["best_epoch"] == 1 and info["epochs_trained"] == 1
    # The NaN is caught before the optimizer steps on it, so the final weights are still finite and saved.
    final = torch.load(tmp_path / FINAL_MODEL, weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in final.values() if t.is_floating_point())


def test_out_of_memory_gives_its_reason(compose_config, tmp_path):
    from reid.train import train

    cfg = compose_config("experiment=smoke", "loss._target_=faults.OutOfMemoryLoss", "+loss.after_steps=1")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train(cfg, run_dir=tmp_path)
    text = (tmp_path / "STOPPING_REASON.txt").read_text()
    assert text.startswith("Training stopped: out of memory at batch size 16")
    assert "smaller batch" in text and "AMP" in text and "smaller input" in text
    assert json.loads((tmp_path / "model_info.json").read_text())["status"] == "out_of_memory"


def test_grad_clip_bounds_the_gradient_norm(compose_config, tmp_path):
    from reid.engine.build import build_experiment, build_trainer

    cfg = compose_config("experiment=smoke", "trainer.grad_clip=0.001")
    experiment = build_experiment(cfg)
    trainer = build_trainer(cfg, experiment, tmp_path, [])
    images, pids, _, _ = next(iter(experiment.loaders.train))
    trainer.model.train()
    trainer.train_step(images, pids, epoch=1, step=1)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()
                                                 if p.grad is not None]))
    assert norm.item() == pytest.approx(0.001, rel=1e-3)
