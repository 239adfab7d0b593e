"""`experiment=bot_r50_market1501` composes to the published BoT recipe, and its pieces train and resume exactly.

The values below are the recipe of Luo et al. (CVPRW 2019) and its code (reid-strong-baseline,
configs/softmax_triplet_with_center.yml); docs/recipes.md gives the sources.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONF_DIR, train_env
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from reid.checkpoint import LAST_CHECKPOINT, load_training_checkpoint
from reid.config import as_plain_dict, flatten_config, register_configs, validate_targets

BOT = {
    "experiment_name": "bot_r50_market1501",
    "dataset._target_": "reid.data.market1501.Market1501",
    "backbone._target_": "reid.models.backbones.TimmBackbone",
    "backbone.model_name": "resnet50.tv_in1k",
    "backbone.pretrained": True,
    "backbone.last_stride": 1,
    "backbone.gem_p": None,
    "head._target_": "reid.models.heads.BNNeckHead",
    "loss._target_": "reid.losses.reid_loss.ReidLoss",
    "loss.ce_weight": 1.0,
    "loss.label_smoothing": 0.1,
    "loss.triplet_weight": 1.0,
    "loss.margin": 0.3,
    "loss.soft_margin": False,
    "loss.center_weight": 5e-4,
    "loss.center_lr": 0.5,
    "data.height": 256,
    "data.width": 128,
    "data.p": 16,
    "data.k": 4,
    "data.augment": True,
    "data.flip_prob": 0.5,
    "data.pad": 10,
    "data.random_erasing_prob": 0.5,
    "data.distance": "cosine",
    "optimizer._target_": "torch.optim.Adam",
    "optimizer.lr": 3.5e-4,
    "optimizer.weight_decay": 5e-4,
    "scheduler._target_": "reid.engine.schedulers.WarmupMultiStepLR",
    "scheduler.warmup_epochs": 10,
    "scheduler.warmup_factor": 0.1,
    "scheduler.milestones": [40, 70],
    "scheduler.gamma": 0.1,
    "trainer.max_epochs": 120,
}

# The recipe's pieces on the tiny synthetic set (one step an epoch): last stride 1, center loss, BN neck, warm-up.
TINY = ["experiment=bot_r50_market1501", "debug=smoke", "dataset=synthetic_tiny", "backbone.model_name=resnet18",
        "backbone.pretrained=false", "trainer.deterministic=true", "trainer.limit_train_batches=1"]


def test_the_preset_shows_every_value_of_the_recipe(compose_config, tmp_path):
    cfg = compose_config("experiment=bot_r50_market1501")
    validate_targets(cfg)
    flat = flatten_config(as_plain_dict(cfg))
    assert {key: flat.get(key) for key in BOT} == BOT
    # What the user sees: `--cfg job` prints the same values.
    result = subprocess.run([sys.executable, "-m", "reid.train", "experiment=bot_r50_market1501", "--cfg", "job"],
                            cwd=tmp_path, env=train_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = flatten_config(yaml.safe_load(result.stdout))
    assert {key: shown.get(key) for key in BOT} == BOT
    assert not (tmp_path / "outputs").exists()


def _history(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "training_history.json").read_text())["epochs"]
    return [{k: v for k, v in row.items() if k != "epoch_time"} for row in rows]


def _compose(data_dir: Path, *overrides: str):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=[f"data_dir={data_dir}", *overrides])
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """The recipe's pieces trained for two epochs of two batches; the reference the resumed run must match."""
    from reid.train import train

    run_dir = tmp_path_factory.mktemp("bot_tiny")
    train(_compose(data_dir, *TINY), run_dir=run_dir)
    return run_dir


def test_the_recipes_pieces_train_together(tiny_run):
    info = json.loads((tiny_run / "model_info.json").read_text())
    assert info["status"] == "finished" and info["epochs_trained"] == 2
    rows = _history(tiny_run)
    for row in rows:  # the weighted sum of the three terms, each of them recorded
        weighted = row["loss_ce"] + row["loss_tri"] + 5e-4 * row["loss_center"]
        assert row["loss"] == pytest.approx(weighted, rel=1e-5) and row["loss_center"] > 0
    checkpoint = load_training_checkpoint(tiny_run / LAST_CHECKPOINT)
    centers = checkpoint["loss"]["center.centers"]
    assert centers.shape == (info["num_classes"], 512)
    # The centres' SGD keeps its constant LR 0.5 while the model's Adam warms up (epoch index 2 of 10 from 0.1x).
    assert checkpoint["loss_optimizer"]["param_groups"][0]["lr"] == 0.5
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3.5e-4 * (0.1 + 0.9 * 2 / 10))
    assert checkpoint["config"]["backbone"]["last_stride"] == 1
    assert checkpoint["model"]["backbone.model.layer4.0.conv1.weight"].shape == (512, 256, 3, 3)


def test_resume_with_center_loss_is_exact(tiny_run, data_dir, tmp_path):
    from reid.train import train

    train(_compose(data_dir, *TINY, "trainer.max_epochs=1"), run_dir=tmp_path)
    after_one = load_training_checkpoint(tmp_path / LAST_CHECKPOINT)
    train(_compose(data_dir, *TINY, "trainer.max_epochs=2", f"trainer.resume={tmp_path}",
                   "trainer.resume_allow_changes=true"), run_dir=tmp_path)
    assert _history(tmp_path) == _history(tiny_run)  # the centres and their optimizer came back exactly
    reference = load_training_checkpoint(tiny_run / LAST_CHECKPOINT)["loss"]["center.centers"]
    resumed = load_training_checkpoint(tmp_path / LAST_CHECKPOINT)["loss"]["center.centers"]
    assert torch.equal(resumed, reference) and not torch.equal(after_one["loss"]["center.centers"], reference)



def test_a_checkpoint_from_before_the_recipe_keys_still_resumes(compose_config):
    from reid.engine.resume import config_changes

    current = as_plain_dict(compose_config("experiment=smoke"))
    saved = json.loads(json.dumps(current))
    for key in ("last_stride", "gem_p", "gem_learnable"):
        del saved["backbone"][key]
    # Keys added since, at their class's defaults, are how the old run behaved; another value is a change.
    assert config_changes(saved, current) == {}
    current["backbone"]["last_stride"] = 1
    assert config_changes(saved, current) == {"backbone.last_stride": {"old": None, "new": 1}}
