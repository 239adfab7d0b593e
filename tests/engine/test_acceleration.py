"""Throughput settings: channels_last for convolutional models, the optimizer's step implementation, and
trainer.compile's fallback when compilation fails (the compiled path itself is not run here: compiling a
ResNet on 2 CPU cores takes minutes)."""

from __future__ import annotations

import functools
import json
import logging

import pytest
import torch
from torch import nn

from reid.engine.acceleration import build_optimizer, is_convolutional, memory_format_for, step_implementation
from reid.engine.build import build_experiment, build_trainer
from reid.models.backbones import TimmBackbone
from reid.train import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_channels_last_is_for_convolutional_models_only():
    resnet = TimmBackbone("resnet18")
    vit = TimmBackbone("vit_tiny_patch16_224")  # one Conv2d: the patch embedding
    assert is_convolutional(resnet) and not is_convolutional(vit)
    assert memory_format_for(resnet, True) == torch.channels_last
    assert memory_format_for(resnet, False) == torch.contiguous_format
    assert memory_format_for(vit, True) == torch.contiguous_format


class NoImplementationChoice(torch.optim.SGD):
    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr=lr)


@pytest.mark.parametrize(("optimizer", "device", "expected"), [
    (torch.optim.Adam, CPU, {"fused": True}),
    (torch.optim.AdamW, CUDA, {"fused": True}),
    (torch.optim.SGD, CPU, {"fused": True}),
    (torch.optim.RMSprop, CUDA, {"foreach": True}),  # no fused RMSprop
    (torch.optim.RMSprop, CPU, {}),  # foreach kernels are for accelerators
    (NoImplementationChoice, CUDA, {}),
])
def test_the_fastest_step_torch_offers_is_chosen(optimizer, device, expected):
    assert step_implementation(optimizer, device) == expected


def test_an_implementation_set_in_the_optimizer_config_wins():
    params = [nn.Parameter(torch.zeros(3))]
    chosen = build_optimizer(functools.partial(torch.optim.Adam, lr=0.1), params, CPU)
    assert chosen.param_groups[0]["fused"] is True and chosen.param_groups[0]["foreach"] is None
    kept = build_optimizer(functools.partial(torch.optim.Adam, lr=0.1, foreach=True), params, CPU)
    assert kept.param_groups[0]["fused"] is None and kept.param_groups[0]["foreach"] is True


def test_torch_compile_refusing_the_model_leaves_it_uncompiled(compose_config, tmp_path, monkeypatch, caplog):
    def refuse(module):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    cfg = compose_config("experiment=smoke", "trainer.compile=true")
    experiment = build_experiment(cfg)
    trainer = build_trainer(cfg, experiment, tmp_path, [])
    with caplog.at_level(logging.WARNING, logger="reid"):
        assert trainer.replica is experiment.model
    assert ("trainer.compile: compilation failed: RuntimeError: Dynamo is not supported on this Python; "
            "continuing uncompiled") in caplog.text
    assert trainer.step_settings()["compile"] == (
        "failed, running uncompiled: RuntimeError: Dynamo is not supported on this Python")


def test_a_compilation_failure_at_the_first_step_is_logged_and_the_run_finishes_uncompiled(
        compose_config, tmp_path, monkeypatch, caplog):
    """A real torch.compile whose backend fails, as Inductor does without a working C++ compiler."""
    compile_for_real = torch.compile

    def failing_backend(graph, example_inputs):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda module: compile_for_real(module, backend=failing_backend))
    try:
        with caplog.at_level(logging.WARNING, logger="reid"):
            train(compose_config("experiment=smoke", "trainer.compile=true", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=2"), run_dir=tmp_path)
    finally:
        torch._dynamo.reset()
    assert "trainer.compile: compilation failed: BackendCompilerFailed" in caplog.text
    assert "no working C++ compiler" in caplog.text and "continuing uncompiled" in caplog.text
    assert caplog.text.count("compilation failed") == 1  # later steps do not try again
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert info["status"] == "finished" and info["global_step"] == 2
    assert info["training_step"]["compile"].startswith("failed, running uncompiled: BackendCompilerFailed")
