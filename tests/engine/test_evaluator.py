"""Closed-set validation and `trainer.monitor`: the classifier's figures, the metric that picks best_model.pth."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import run_train
from PIL import Image

from reid.checkpoint import BEST_MODEL, LAST_CHECKPOINT, load_training_checkpoint
from reid.config import as_plain_dict
from reid.engine.evaluator import classification_metrics
from reid.engine.resume import config_changes


def test_classification_metrics_on_a_hand_made_case():
    # Rows are log-probabilities, so the CE of a row is -log p[label].
    probabilities = torch.tensor([
        [0.50, 0.10, 0.10, 0.10, 0.10, 0.10],  # label 0: top-1
        [0.05, 0.30, 0.25, 0.20, 0.15, 0.05],  # label 4: 4th, inside the top 5
        [0.04, 0.30, 0.25, 0.20, 0.15, 0.06],  # label 0: last, outside the top 5
        [0.10, 0.10, 0.60, 0.10, 0.05, 0.05],  # label 2: top-1
    ])
    labels = torch.tensor([0, 4, 0, 2])
    figures = classification_metrics(probabilities.log(), labels)
    assert figures["val_top1"] == 0.5
    assert figures["val_top5"] == 0.75
    expected_loss = -(math.log(0.5) + math.log(0.15) + math.log(0.04) + math.log(0.6)) / 4
    assert figures["val_loss"] == pytest.approx(expected_loss, rel=1e-6)
    # Fewer than five classes: every image is a top-5 hit.
    few = classification_metrics(torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0]]), torch.tensor([0, 0]))
    assert (few["val_top1"], few["val_top5"]) == (0.5, 1.0)


def _identity_folders(root: Path, identities: int = 6, images: int = 8) -> Path:
    """root/<identity>/<image>.jpg: each identity its own colour, each image a little brighter."""
    for index in range(identities):
        colour = ((index * 83) % 256, (index * 151) % 256, (index * 37 + 90) % 256)
        for shot in range(images):
            path = root / f"chimp{index:02d}" / f"img{shot:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 64), tuple(min(255, c + 6 * shot) for c in colour)).save(path, "JPEG")
    return root


CLOSED = ["dataset=folders", "dataset.split=closed", "trainer.monitor=val_top1", "data.height=64", "data.width=32",
          "data.p=4", "data.k=4", "data.num_workers=0", "trainer.max_epochs=3", "trainer.eval_every=1",
          "experiment_name=closed"]


def test_closed_split_run_monitors_val_top1(compose_config, tmp_path, caplog):
    from reid.engine.build import build_experiment, build_trainer
    from reid.train import train

    root = _identity_folders(tmp_path / "faces")
    cfg = compose_config(*CLOSED, f"dataset.root={root}")
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="reid"):
        returned = train(cfg, run_dir=run_dir)

    history = json.loads((run_dir / "training_history.json").read_text())["epochs"]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    info = json.loads((run_dir / "model_info.json").read_text())
    assert list(rows[0])[-4:] == ["val_loss", "val_top1", "val_top5", "epoch_time"]
    for row, epoch in zip(rows, history, strict=True):
        for key in ("val_loss", "val_top1", "val_top5"):
            assert float(row[key]) == pytest.approx(epoch[key])
        # 6 identities x 2 held-out images: accuracies are multiples of 1/12
        assert 0.0 <= epoch["val_top1"] <= epoch["val_top5"] <= 1.0
        assert round(epoch["val_top1"] * 12, 6).is_integer() and epoch["val_loss"] > 0
    best = max(history, key=lambda epoch: epoch["val_top1"])  # the first epoch with the highest val_top1
    assert torch.load(run_dir / BEST_MODEL, weights_only=True)["meta"]["epoch"] == best["epoch"]
    assert info["monitor"] == "val_top1" and info["best_epoch"] == best["epoch"]
    assert returned == info["best_value"] == best["val_top1"] == info["best_metrics"]["val_top1"]
    assert info["best_map"] == best["mAP"] and info["best_metrics"]["val_loss"] == best["val_loss"]
    assert info["dataset"]["closed_set"] is True
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("[Epoch 1/3]")][0].count(
        " val_top1=") == 1
    assert f"Best val_top1:   {best['val_top1']:.4f} at epoch {best['epoch']} (mAP {best['mAP']:.4f}" in (
        run_dir / "STOPPING_REASON.txt").read_text()

    # A checkpoint from before trainer.monitor (no `monitor` key, no trainer.monitor in its config) resumes, its best
    # taken from its best_metrics; the missing key at its default is no config change.
    checkpoint = load_training_checkpoint(run_dir / LAST_CHECKPOINT)
    del checkpoint["monitor"], checkpoint["config"]["trainer"]["monitor"]
    default_cfg = compose_config(*[o for o in CLOSED if not o.startswith("trainer.monitor")], f"dataset.root={root}")
    assert config_changes(checkpoint["config"], info["hyperparameters"]) == {
        "trainer.monitor": {"old": None, "new": "val_top1"}}
    assert config_changes(checkpoint["config"], as_plain_dict(default_cfg)) == {}
    trainer = build_trainer(default_cfg, build_experiment(default_cfg), tmp_path / "resumed", [])
    trainer.restore(checkpoint)
    assert (trainer.state.monitor, trainer.state.best_epoch) == ("mAP", best["epoch"])
    assert trainer.state.best_value == best["mAP"]


def test_a_monitor_the_dataset_cannot_produce_is_refused_before_training(tmp_path, data_dir):
    result = run_train(["experiment=smoke", "trainer.monitor=val_top1"], tmp_path, data_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "trainer.monitor='val_top1' is not available for dataset " in result.stderr
    assert "expected one of mAP, rank1, mINP; " in result.stderr and "dataset.split=closed" in result.stderr
    assert not list(tmp_path.rglob("metrics.csv"))
