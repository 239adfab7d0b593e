"""trainer.precision: what each name means on each device, the trainer.amp alias, and bf16 training on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from reid.engine.build import build_experiment, build_trainer
from reid.engine.evaluator import extract_features
from reid.engine.precision import Precision, resolve_precision
from reid.engine.resume import config_changes
from reid.errors import ConfigError
from reid.train import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("precision", "amp", "device", "name", "dtype", "scaler"), [
    ("auto", None, CUDA, "16-mixed", torch.float16, True),
    ("auto", None, CPU, "32", None, False),
    ("32", None, CUDA, "32", None, False),
    ("16-mixed", None, CUDA, "16-mixed", torch.float16, True),
    ("bf16-mixed", None, CUDA, "bf16-mixed", torch.bfloat16, False),
    ("bf16-mixed", None, CPU, "bf16-mixed", torch.bfloat16, False),
    ("auto", True, CUDA, "16-mixed", torch.float16, True),  # trainer.amp=true: what it always meant
    ("auto", True, CPU, "32", None, False),
    ("auto", False, CUDA, "32", None, False),
    ("32", False, CUDA, "32", None, False),
])
def test_each_precision_resolves_per_device(precision, amp, device, name, dtype, scaler):
    resolved = resolve_precision(precision, amp, device)
    assert (resolved.name, resolved.autocast_dtype, resolved.scales_gradients) == (name, dtype, scaler)
    context = resolved.autocast()
    if dtype is None:
        assert not isinstance(context, torch.autocast)
    else:
        assert isinstance(context, torch.autocast) and context.fast_dtype == dtype and context.device == device.type


@pytest.mark.parametrize(("precision", "amp", "device", "message"), [
    ("16-mixed", None, CPU, "trainer.precision=16-mixed needs cuda, but this run trains on cpu; on cpu use one of "
                            "32, bf16-mixed"),
    ("fp16", None, CPU, "trainer.precision='fp16': expected one of auto, 32, 16-mixed, bf16-mixed"),
    ("bf16-mixed", True, CPU, "trainer.amp=true and trainer.precision=bf16-mixed disagree"),
    ("16-mixed", False, CUDA, "set trainer.precision alone"),
])
def test_a_precision_the_device_cannot_run_is_refused(precision, amp, device, message):
    with pytest.raises(ConfigError) as error:
        resolve_precision(precision, amp, device)
    assert message in str(error.value)


def test_a_bad_precision_fails_at_validation_before_any_data_is_built(compose_config, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.precision='half': expected one of auto, 32, 16-mixed"):
        train(compose_config("experiment=smoke", "trainer.precision=half"), run_dir=tmp_path)
    assert not (tmp_path / "model_info.json").exists()


def test_checkpoints_written_with_trainer_amp_resume_under_trainer_precision():
    """A config of before trainer.precision (amp: true) is the default now; amp=false is precision=32."""
    old = {"trainer": {"amp": True, "max_epochs": 2}}
    assert config_changes(old, {"trainer": {"precision": "auto", "amp": None, "max_epochs": 2}}) == {}
    assert config_changes({"trainer": {"amp": False}}, {"trainer": {"precision": "32", "amp": None}}) == {}
    assert config_changes({"trainer": {"amp": False}}, {"trainer": {"precision": "auto", "amp": False}}) == {}
    assert config_changes(old, {"trainer": {"precision": "bf16-mixed", "amp": None, "max_epochs": 2}}) == {
        "trainer.precision": {"old": "auto", "new": "bf16-mixed"}}


def test_bf16_mixed_computes_in_bfloat16_on_the_cpu_in_training_and_feature_extraction(compose_config, tmp_path):
    cfg = compose_config("experiment=smoke", "trainer.precision=bf16-mixed")
    experiment = build_experiment(cfg)
    assert experiment.precision == Precision("bf16-mixed", "cpu")
    assert experiment.memory_format == torch.channels_last  # resnet18 is convolutional
    trainer = build_trainer(cfg, experiment, tmp_path, [])
    seen = []
    experiment.model.backbone.register_forward_hook(
        lambda module, inputs, output: seen.append((output.dtype, inputs[0].is_contiguous(
            memory_format=torch.channels_last))))
    before = [p.detach().clone() for p in experiment.model.parameters() if p.requires_grad]
    images, pids, _, _ = next(iter(experiment.loaders.train))
    trainer.model.train()
    losses, _ = trainer.train_step(images, pids, epoch=1, step=1)
    assert seen == [(torch.bfloat16, True)]
    assert all(torch.isfinite(torch.tensor(value)) for value in losses.values()) and losses["total"] > 0
    after = [p.detach() for p in experiment.model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in after)  # float32 master weights, updated
    assert sum(not torch.equal(a, b) for a, b in zip(before, after)) > len(after) // 2
    features, _, _ = extract_features(experiment.model, experiment.loaders.test, experiment.device,
                                      experiment.precision, experiment.memory_format)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    assert set(seen[1:]) == {(torch.bfloat16, True)}


def history(run_dir) -> list[dict]:
    rows = json.loads((run_dir / "training_history.json").read_text())["epochs"]
    return [{k: v for k, v in row.items() if k != "epoch_time"} for row in rows]


def test_a_bf16_run_records_its_precision_and_resumes_exactly(compose_config, tmp_path):
    run = ["experiment=smoke", "trainer.precision=bf16-mixed", "trainer.deterministic=true",
           "trainer.limit_train_batches=2"]
    uninterrupted = tmp_path / "uninterrupted"
    train(compose_config(*run), run_dir=uninterrupted)
    info = json.loads((uninterrupted / "model_info.json").read_text())
    assert info["status"] == "finished"
    assert info["training_step"] == {"precision": "bf16-mixed", "autocast_dtype": "bfloat16", "grad_scaler": False,
                                     "channels_last": True, "compile": "off", "optimizer_step": "fused"}
    resumed = tmp_path / "resumed"
    train(compose_config(*run, "trainer.max_epochs=1"), run_dir=resumed)
    train(compose_config(*run, f"trainer.resume={resumed}", "trainer.resume_allow_changes=true"), run_dir=resumed)
    assert len(history(uninterrupted)) == 2
    assert history(resumed) == history(uninterrupted)  # bit for bit: losses, lr, top-1 and mAP
