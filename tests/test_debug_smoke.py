"""`debug=smoke` (conf/debug/smoke.yaml): a run shrunk to seconds on every dataset option, backbone, head, sweep
and pipeline, and `experiment=smoke` with a real dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_train
from PIL import Image

from hydra_plugins.reid_optuna_sweeper._variants import format_value
from reid.checkpoint import LAST_CHECKPOINT
from reid.config import validate_targets
from reid.engine.stages import stage_max_epochs
from reid.sweep.variants import plateau_variants
from reid.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
BACKBONES = sorted(p.stem for p in (CONF / "backbone").glob("*.yaml"))
HEADS = sorted(p.stem for p in (CONF / "head").glob("*.yaml"))


def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 64), (shade % 256, (shade * 7) % 256, (shade * 13) % 256)).save(path, "JPEG")


@pytest.fixture(scope="module")
def market_root(tmp_path_factory) -> Path:
    """A Market-1501 layout big enough for the caps to bite: 36 queries, 144 gallery images, 10 train ids."""
    root = tmp_path_factory.mktemp("market")
    for pid in range(1, 11):
        for i in range(4):
            _jpeg(root / "bounding_box_train" / f"{pid:04d}_c{i % 2 + 1}s1_{i:06d}_01.jpg", pid * 10 + i)
    for pid in range(11, 23):
        for cam in (1, 2, 3):
            _jpeg(root / "query" / f"{pid:04d}_c{cam}s1_{cam:06d}_00.jpg", pid * 3 + cam)
            for i in range(4):
                _jpeg(root / "bounding_box_test" / f"{pid:04d}_c{cam % 3 + 1}s1_{100 + i:06d}_01.jpg", pid + i)
    return root


@pytest.fixture(scope="module")
def folders_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    for n in range(14):
        for i in range(6):
            _jpeg(root / f"animal{n:02d}" / f"img{i}.jpg", n * 17 + i)
    return root


@pytest.mark.parametrize("dataset", ["synthetic", "market1501", "folders"])
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("head", HEADS)
def test_debug_smoke_composes_with_every_dataset_backbone_and_head(compose_config, dataset, backbone, head):
    cfg = compose_config("debug=smoke", f"dataset={dataset}", "dataset.root=/data/x", f"backbone={backbone}",
                         f"head={head}")
    validate_targets(cfg)
    assert (cfg.data.height, cfg.data.width, cfg.data.num_workers) == (64, 32, 0)
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == (2, 2)
    assert (cfg.trainer.limit_eval_queries, cfg.trainer.limit_eval_gallery) == (32, 128)


def test_debug_smoke_overrides_the_experiment_it_shrinks(compose_config):
    cfg = compose_config("experiment=demo", "debug=smoke")
    assert cfg.experiment_name == "demo" and cfg.trainer.max_epochs == 2 and cfg.data.p == 4


def test_every_plateau_variant_composes_under_debug_smoke(compose_config):
    base = compose_config("debug=smoke", "sweep=plateau", "dataset=market1501")
    variants = plateau_variants(base)
    assert [v.name for v in variants] == ["higher_lr", "cosine_annealing", "heavy_triplet", "aggressive_lr_drop",
                                          "smaller_batch_higher_lr"]
    for variant in variants:
        overrides = [f"{key}={format_value(value)}" for key, value in variant.changes.items()]
        cfg = compose_config("debug=smoke", "sweep=plateau", "dataset=market1501", *overrides)
        validate_targets(cfg)
        assert cfg.trainer.max_epochs == 2


@pytest.mark.parametrize("stage,initial,expected_end", [
    ("stage1", 0, 1),   # a fixed 5-epoch stage trains at most the budget
    ("stage2", 1, 2),
    ("stage3", 2, 3),   # a stage "until max_epochs" that starts past it still trains the budget
    ("full", 0, 2),     # a plain run keeps trainer.max_epochs
])
def test_debug_stage_budget(compose_config, stage, initial, expected_end):
    cfg = compose_config("debug=smoke", f"stage={stage}")
    assert stage_max_epochs(cfg, initial) == expected_end


def test_experiment_smoke_keeps_trainer_max_epochs(compose_config):
    assert stage_max_epochs(compose_config("experiment=smoke", "trainer.max_epochs=6"), 0) == 6


def _checkpoint_steps(run_dir: Path) -> int:
    return torch.load(run_dir / LAST_CHECKPOINT, weights_only=True)["global_step"]


def test_debug_smoke_caps_batches_and_evaluation_on_market1501(compose_config, market_root, tmp_path):
    value = train(compose_config("debug=smoke", "dataset=market1501", f"dataset.root={market_root}"),
                  run_dir=tmp_path / "run")
    info = json.loads((tmp_path / "run" / "model_info.json").read_text())
    assert info["epochs_trained"] == 2 and info["best_map"] == pytest.approx(value)
    assert _checkpoint_steps(tmp_path / "run") == 4  # 2 epochs x limit_train_batches=2
    assert info["dataset"]["query"] == {"images": 32, "identities": 12, "cameras": 3}
    assert info["dataset"]["gallery"]["images"] == 128
    assert info["dataset"]["train"]["images"] == 40


def test_debug_smoke_on_folders(compose_config, folders_root, tmp_path):
    train(compose_config("debug=smoke", "dataset=folders", f"dataset.root={folders_root}"), run_dir=tmp_path / "run")
    info = json.loads((tmp_path / "run" / "model_info.json").read_text())
    assert info["epochs_trained"] == 2 and info["status"] == "finished"
    assert info["dataset"]["train"]["identities"] + info["dataset"]["query"]["identities"] == 14
    assert _checkpoint_steps(tmp_path / "run") == 4


def test_debug_smoke_on_synthetic(compose_config, tmp_path):
    train(compose_config("debug=smoke", "dataset=synthetic_tiny"), run_dir=tmp_path / "run")
    info = json.loads((tmp_path / "run" / "model_info.json").read_text())
    assert info["epochs_trained"] == 2 and info["status"] == "finished"


def test_debug_smoke_three_stage_pipeline_on_market1501(market_root, tmp_path, data_dir):
    result = run_train(["debug=smoke", "pipeline=three_stage", "dataset=market1501", f"dataset.root={market_root}"],
                       tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    (pipeline_dir,) = (tmp_path / "outputs" / "default" / "pipelines").iterdir()
    infos = [json.loads((pipeline_dir / d / "model_info.json").read_text())
             for d in ("1_stage1", "2_stage2", "3_stage3")]
    assert [i["stage"] for i in infos] == ["stage1", "stage2", "stage3"]
    assert [i["epochs_trained"] for i in infos] == [1, 2, 3]
    assert all(i["status"] == "finished" for i in infos)
    assert "Status: finished" in (pipeline_dir / "PIPELINE_SUMMARY.txt").read_text()


def test_experiment_smoke_with_market1501(compose_config, market_root, tmp_path):
    train(compose_config("experiment=smoke", "dataset=market1501", f"dataset.root={market_root}"),
          run_dir=tmp_path / "run")
    info = json.loads((tmp_path / "run" / "model_info.json").read_text())
    assert info["dataset"]["name"] == "market1501" and info["epochs_trained"] == 2
    assert info["dataset"]["query"]["images"] == 36  # experiment=smoke does not cap evaluation
