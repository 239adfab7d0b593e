"""Throughput settings of the training step that leave its results alone: memory format, torch.compile and the
optimizer's step implementation. Each is decided here, once, from the model, the device and the config.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import optimizer as torch_optimizer

log = logging.getLogger("reid")


def is_convolutional(model: nn.Module) -> bool:
    """Whether the model computes mostly with 2-d convolutions: more than one Conv2d layer. A ViT has exactly one
    (its patch embedding) and gains nothing from channels_last; ResNets, ConvNeXts and CLIP's ModifiedResNet do."""
    return sum(isinstance(module, nn.Conv2d) for module in model.modules()) > 1


def memory_format_for(model: nn.Module, channels_last: bool) -> torch.memory_format:
    """`trainer.channels_last` for this model: NHWC for a convolutional model, the default layout otherwise."""
    return torch.channels_last if channels_last and is_convolutional(model) else torch.contiguous_format


def is_compilation_failure(exc: BaseException) -> bool:
    """An error raised by torch.compile's tracing or code generation (not by the model's own computation).

    Most compilation errors show only at the first call of the compiled module, when the graph is traced and
    built, or at a recompilation (after unfreezing, for one); the trainer then continues uncompiled.
    """
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(exc, TorchDynamoException)


def log_compilation_failure(exc: BaseException) -> str:
    """Log why compilation failed; returns the one-line reason (also kept in the run record)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # torch's own wrappers say "backend='inductor' raised:" and the cause on the next line.
    summary = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else "")
    reason = f"{type(exc).__name__}: {summary}"
    log.warning("trainer.compile: compilation failed: %s; continuing uncompiled", reason)
    return reason


def step_implementation(optimizer_class: Callable[..., Any], device: torch.device) -> dict[str, bool]:
    """The fastest step torch offers for this optimizer on this device: `fused` (one kernel for all parameters)
    where the class has it and torch has fused kernels for the device, else `foreach` (batched tensor ops) where
    it has that and the device has foreach kernels, else torch's default."""
    parameters = inspect.signature(optimizer_class).parameters
    offered = {"fused": torch_optimizer._get_fused_kernels_supported_devices(),
               "foreach": torch_optimizer._get_foreach_kernels_supported_devices()}
    for flag, devices in offered.items():
        if flag in parameters and device.type in devices:
            return {flag: True}
    return {}


def build_optimizer(make: Callable[..., torch.optim.Optimizer], params: Iterable[nn.Parameter],
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimizer config's partial applied to `params`, with the fastest step implementation unless the config
    chose one itself (`optimizer.fused` or `optimizer.foreach` set)."""
    keywords = make.keywords if isinstance(make, functools.partial) else {}
    target = make.func if isinstance(make, functools.partial) else make
    chosen = {} if {"fused", "foreach"} & set(keywords) else step_implementation(target, device)
    return make(params, **chosen)


__all__ = ["build_optimizer", "is_compilation_failure", "is_convolutional",
           "log_compilation_failure", "memory_format_for", "step_implementation"]
