"""`python -m reid.train` end to end: the run record, the return value, learning, and clear errors."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import only_run_dir, run_train
from PIL import Image

from reid.checkpoint import BEST_MODEL, FINAL_MODEL, LAST_CHECKPOINT, load_model_file
from reid.models import build_model

SMOKE = ["experiment=smoke"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir) -> Iterator[tuple[Path, object]]:
    """One real smoke run shared by the record tests."""
    cwd = tmp_path_factory.mktemp("smoke")
    result = run_train(SMOKE, cwd, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    yield only_run_dir(cwd), result
    shutil.rmtree(cwd, ignore_errors=True)


def test_run_writes_every_record_file(smoke_run):
    run_dir, _ = smoke_run
    for name in ("log.txt", "metrics.csv", "training_history.json", BEST_MODEL, FINAL_MODEL, LAST_CHECKPOINT,
                 "model_info.json", "STOPPING_REASON.txt"):
        assert (run_dir / name).is_file(), name
    assert run_dir.parent.parent.name == "smoke" and run_dir.name.endswith("_full")


def test_metrics_csv_and_history_agree(smoke_run):
    run_dir, _ = smoke_run
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    history = json.loads((run_dir / "training_history.json").read_text())["epochs"]
    assert [int(r["epoch"]) for r in rows] == [1, 2] == [h["epoch"] for h in history]
    for column in ("epoch", "lr", "loss", "loss_ce", "loss_tri", "train_top1", "mAP", "rank1", "rank5", "rank10",
                   "epoch_time"):
        assert column in rows[0], column
    for row, epoch in zip(rows, history):
        assert float(row["mAP"]) == pytest.approx(epoch["mAP"])
        assert 0.0 <= epoch["mAP"] <= 1.0 and 0.0 <= epoch["rank1"] <= epoch["rank5"] <= epoch["rank10"] <= 1.0
        assert epoch["loss"] == pytest.approx(epoch["loss_ce"] + epoch["loss_tri"], rel=1e-5)


def test_model_info_holds_the_run(smoke_run):
    run_dir, _ = smoke_run
    info = json.loads((run_dir / "model_info.json").read_text())
    history = json.loads((run_dir / "training_history.json").read_text())["epochs"]
    best = max(history, key=lambda e: e["mAP"])
    assert info["best_map"] == pytest.approx(best["mAP"])
    assert info["best_epoch"] == best["epoch"]
    assert info["best_rank1"] == pytest.approx(best["rank1"])
    assert info["epochs_trained"] == 2
    assert info["status"] == "finished"
    assert info["stopping_reason"]["kind"] == "completed"
    assert info["num_classes"] == 8 == info["dataset"]["num_classes"]
    assert info["hyperparameters"]["optimizer"]["lr"] == pytest.approx(3.5e-4)
    assert info["hyperparameters"]["trainer"]["max_epochs"] == 2
    assert info["overrides"] == SMOKE
    assert info["timings"]["total_seconds"] > 0 and info["timings"]["ended"]
    assert info["versions"]["torch"] == torch.__version__.split("+")[0] or info["versions"]["torch"].startswith(
        torch.__version__.split("+")[0])


def test_stopping_reason_in_plain_words(smoke_run):
    run_dir, _ = smoke_run
    info = json.loads((run_dir / "model_info.json").read_text())
    text = (run_dir / "STOPPING_REASON.txt").read_text()
    assert text.startswith("Training stopped: all 2 epochs completed")
    assert f"Best mAP:        {info['best_map']:.4f} at epoch {info['best_epoch']}" in text
    assert "Epochs trained:  2 of 2" in text
    assert "lr             0.00035" in text
    assert "Recommendation:" in text


def test_log_has_the_epoch_lines(smoke_run):
    run_dir, result = smoke_run
    log = (run_dir / "log.txt").read_text()
    assert "[Epoch 1/2] lr=" in log and "[Epoch 2/2] lr=" in log
    assert " | mAP=" in log and "R1=" in log
    assert "epoch 1 step" in log  # plain progress lines when not on a terminal


def test_model_files_load_with_weights_only(smoke_run, compose_config):
    run_dir, _ = smoke_run
    cfg = compose_config(*SMOKE)
    for name in (BEST_MODEL, FINAL_MODEL):
        payload = torch.load(run_dir / name, weights_only=True)
        assert payload["format"] == "reid-model"
        model = build_model(cfg.backbone, cfg.head, num_classes=8)
        load_model_file(run_dir / name, model, model.architecture)
        classifier = "head.classifier.weight"
        assert torch.equal(model.state_dict()[classifier], payload["state_dict"][classifier])


def test_train_returns_the_best_map(compose_config, tmp_path):
    from reid.train import train

    value = train(compose_config(*SMOKE, "trainer.max_epochs=1"), run_dir=tmp_path)
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert isinstance(value, float) and not math.isnan(value)
    assert value == pytest.approx(info["best_map"])
    assert "objectives" not in info  # trainer.objectives=null: the single value, and a record as before


def test_bad_override_fails_before_training_naming_choices(tmp_path, data_dir):
    result = run_train(["backbone=resnet999"], tmp_path, data_dir)
    assert result.returncode != 0
    assert "resnet999" in result.stderr and "clip_vit_b16" in result.stderr
    assert not (tmp_path / "outputs").exists()
    result = run_train(["trainer.max_epoch=3"], tmp_path, data_dir)
    assert result.returncode != 0 and "max_epoch" in result.stderr


def test_missing_data_root_is_a_clear_error(tmp_path, data_dir):
    result = run_train(["dataset=market1501", f"dataset.root={tmp_path}/nowhere"], tmp_path, data_dir)
    assert result.returncode != 0
    assert f"{tmp_path}/nowhere" in result.stderr and "bounding_box_train" in result.stderr


def _write_market(root: Path, corrupt: bool) -> None:
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    for folder, cams in (("bounding_box_train", (1, 2)), ("query", (1,)), ("bounding_box_test", (2, 3))):
        (root / folder).mkdir(parents=True)
        for pid, color in enumerate(colors, start=1):
            for cam in cams:
                for shot in range(2 if folder != "query" else 1):
                    Image.new("RGB", (32, 64), color).save(root / folder / f"{pid:04d}_c{cam}s1_{shot:06d}_00.jpg")
    if corrupt:
        (root / "bounding_box_train" / "0001_c1s1_000000_00.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")


def test_corrupt_image_names_the_file_or_is_skipped(tmp_path, data_dir):
    root = tmp_path / "market"
    _write_market(root, corrupt=True)
    base = ["dataset=market1501", f"dataset.root={root}", "data.height=64", "data.width=32", "data.p=2", "data.k=2",
            "data.num_workers=0", "trainer.max_epochs=1"]
    result = run_train(base, tmp_path, data_dir)
    assert result.returncode != 0
    assert "0001_c1s1_000000_00.jpg" in result.stderr and "skip_bad_images" in result.stderr
    result = run_train([*base, "dataset.skip_bad_images=true"], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 1 unreadable image" in result.stdout + result.stderr


def test_a_short_run_learns_far_beyond_an_untrained_model(compose_config, tmp_path):
    """The synthetic identities are learnable: a short run beats the untrained network by a wide margin."""
    from reid.engine.build import build_experiment
    from reid.engine.evaluator import Evaluator
    from reid.engine.precision import Precision
    from reid.train import train

    cfg = compose_config("data.height=64", "data.width=32", "data.p=8", "data.k=4", "data.augment=false",
                         "data.num_workers=0", "optimizer.lr=1e-3", "scheduler=none", "trainer.max_epochs=8",
                         "trainer.eval_every=8")
    experiment = build_experiment(cfg)
    untrained = Evaluator(experiment.loaders.test, experiment.loaders.num_query, experiment.device,
                          Precision("32", "cpu"), distance="euclidean")(experiment.model)["mAP"]
    trained = train(cfg, run_dir=tmp_path)
    print(f"untrained mAP {untrained:.3f} -> trained mAP {trained:.3f}")
    assert untrained < 0.12
    assert trained > 0.2
    assert trained > 2.5 * untrained
