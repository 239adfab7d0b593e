"""trainer.objectives: what a multi-objective run returns and records, and how latency is measured."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from hydra_plugins.reid_optuna_sweeper._driver import objective_values
from reid.engine.objectives import LatencySettings, embedding_parameters, latency_per_image
from reid.engine.stopping import StopReason, TrainingDiverged
from reid.engine.trainer import TrainState
from reid.errors import ConfigError
from reid.models import build_model
from reid.train import score, train

ALL = ["mAP", "rank1", "params_m", "latency_ms", "latency_ms_batch"]


def test_a_run_returns_and_records_its_objectives_in_order(compose_config, tmp_path):
    cfg = compose_config("experiment=smoke", "trainer.max_epochs=1", "data.test_batch_size=16",
                         f"trainer.objectives=[{','.join(ALL)}]")
    values = train(cfg, run_dir=tmp_path)
    info = json.loads((tmp_path / "model_info.json").read_text())
    record = info["objectives"]
    assert record["names"] == ALL
    assert record["directions"] == {"mAP": "maximize", "rank1": "maximize", "params_m": "minimize",
                                    "latency_ms": "minimize", "latency_ms_batch": "minimize"}
    assert record["latency"] == {"device": "cpu", "height": 64, "width": 32, "batch_size": 16, "warmup": 1,
                                 "repeats": 3, "precision": "32", "channels_last": True}
    assert isinstance(values, tuple) and list(values) == [record["values"][name] for name in ALL]
    assert values[0] == info["best_metrics"]["mAP"] and values[1] == info["best_metrics"]["rank1"]
    model = build_model(cfg.backbone, cfg.head, num_classes=info["num_classes"])
    classifier = sum(p.numel() for p in model.head.classifier.parameters())
    assert classifier > 0
    assert values[2] == (sum(p.numel() for p in model.parameters()) - classifier) / 1e6
    assert all(math.isfinite(v) and v > 0 for v in values[3:])


@pytest.mark.parametrize(("objectives", "message"), [
    ("[mAP,fps]", "'fps' not available for dataset synthetic: expected names from mAP, rank1, mINP, params_m, "
                  "latency_ms, latency_ms_batch"),
    ("[val_top1,latency_ms]", "the classifier's val_top1 needs held-out images"),
    ("[mAP,mAP]", "mAP named more than once"),
    ("[]", "expected a list of one or more of"),
])
def test_an_unknown_objective_fails_before_training(compose_config, tmp_path, objectives, message):
    with pytest.raises(ConfigError, match="trainer.objectives") as error:
        train(compose_config("experiment=smoke", f"trainer.objectives={objectives}"), run_dir=tmp_path)
    assert message in str(error.value)
    assert not (tmp_path / "best_model.pth").exists()


def test_a_diverged_run_returns_values_the_sweeper_records_as_failed():
    diverged = TrainState(best_metrics={"mAP": 0.3}, stop=StopReason.diverged(TrainingDiverged(math.nan, 2, 1)))
    values = score(diverged, ["mAP", "latency_ms"])
    assert len(values) == 2 and all(math.isnan(v) for v in values)
    assert "not finite" in objective_values(values, 2)
    assert score(diverged) == -1.0  # single objective: as before
    finished = TrainState(best_metrics={"mAP": 0.3}, objectives={"mAP": 0.3, "latency_ms": 4.5})
    assert objective_values(score(finished, ["mAP", "latency_ms"]), 2) == [0.3, 4.5]
    assert score(finished, ["latency_ms"]) == 4.5  # one objective: a plain number, for a single-direction sweep


class Counting(nn.Module):
    """Counts forwards and records whether each ran in eval mode without gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Module()
        self.head.classifier = nn.Linear(4, 3)
        self.neck = nn.Linear(4, 4)
        self.calls: list[tuple[bool, bool, tuple[int, ...]]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled(), tuple(images.shape)))
        return images


def test_latency_warms_up_then_times_eval_forwards_and_restores_training_mode():
    model = Counting().train()
    settings = LatencySettings(device="cpu", height=6, width=3, batch_size=5, warmup=2, repeats=3,
                               precision="32", channels_last=False)
    per_image = latency_per_image(model, settings, batch_size=5)
    assert per_image > 0 and model.training
    assert model.calls == [(False, False, (5, 3, 6, 3))] * 5
    assert embedding_parameters(model) == 4 * 4 + 4  # the classifier's 15 left out


def test_a_pipeline_returns_its_final_stage_objectives(compose_config, tmp_path):
    from reid.pipeline import Pipeline

    cfg = compose_config("experiment=smoke", "pipeline=two_stage", "trainer.objectives=[mAP,params_m]")
    # Both stages finished earlier: a rerun skips them and returns what the final one recorded.
    for index, (stage, values) in enumerate((("stage1", {"mAP": 0.2, "params_m": 11.2}),
                                             ("stage3", {"mAP": 0.4, "params_m": 11.2})), start=1):
        stage_dir = tmp_path / f"{index}_{stage}"
        stage_dir.mkdir()
        (stage_dir / "model_info.json").write_text(json.dumps({
            "status": "finished", "monitor": "mAP", "best_value": values["mAP"], "best_map": values["mAP"],
            "best_epoch": 1, "epochs_trained": 1, "stopping_reason": {"message": "all 1 epochs completed"},
            "objectives": {"names": ["mAP", "params_m"], "values": values}}))
    assert Pipeline(cfg, tmp_path, []).run() == (0.4, 11.2)
    state = json.loads((tmp_path / "PIPELINE.json").read_text())
    assert state["best_value"] == 0.4 and state["objectives"] == {"mAP": 0.4, "params_m": 11.2}


@pytest.mark.parametrize("override", ["trainer.latency_repeats=0", "trainer.latency_warmup=-1"])
def test_latency_settings_are_checked_with_the_config(compose_config, override):
    from reid.config import validate_targets

    with pytest.raises(ConfigError, match="expected warm-up >= 0 and repeats >= 1"):
        validate_targets(compose_config(override))
