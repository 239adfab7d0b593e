"""Rebuilding a trained model from its file alone (reid.models.loading)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from reid.checkpoint import BEST_MODEL, FINAL_MODEL, save_model_file
from reid.errors import CheckpointError
from reid.models import build_model
from reid.models.loading import load_trained_model, resolve_model_path
from reid.selection import model_from_payload


@pytest.fixture
def saved_run(compose_config, tmp_path):
    cfg = compose_config("experiment=smoke", "data.height=32", "data.width=16")
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.head, num_classes=5).eval()
    config = OmegaConf.to_container(cfg, resolve=True)
    save_model_file(tmp_path / BEST_MODEL, model, model.architecture, {"epoch": 3, "metrics": {"mAP": 0.25},
                                                                        "config": config})
    return tmp_path, model


def test_a_run_dir_gives_its_best_model_rebuilt_with_the_same_outputs(saved_run):
    run_dir, model = saved_run
    trained = load_trained_model(run_dir)
    assert trained.path == run_dir / BEST_MODEL
    assert (trained.height, trained.width) == (32, 16)
    assert trained.best_metrics == {"mAP": 0.25}
    assert not trained.model.training
    images = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        assert torch.equal(trained.model(images), model(images))
        payload = torch.load(run_dir / BEST_MODEL, weights_only=True)
        rebuilt, transform = model_from_payload(payload)
        assert torch.equal(rebuilt(images), model(images))
    assert transform.transforms[0].size == (32, 16)


def test_the_final_model_is_used_when_there_is_no_best_one(saved_run):
    run_dir, _ = saved_run
    (run_dir / BEST_MODEL).rename(run_dir / FINAL_MODEL)
    assert resolve_model_path(run_dir) == run_dir / FINAL_MODEL


def test_bad_model_inputs_are_named(saved_run, tmp_path):
    run_dir, model = saved_run
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds neither best_model.pth nor model_final.pth"):
        load_trained_model(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_trained_model(tmp_path / "missing.pth")
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)
    with pytest.raises(CheckpointError, match="raw.pth is not a reid model file"):
        load_trained_model(raw)
    payload = torch.load(run_dir / BEST_MODEL, weights_only=True)
    payload["architecture"]["feature_dim"] = 999
    tampered = tmp_path / "tampered.pth"
    torch.save(payload, tampered)
    with pytest.raises(CheckpointError, match="feature_dim: file has 999"):
        load_trained_model(tampered)
