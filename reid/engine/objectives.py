"""Several objectives for a sweep (`trainer.objectives`): accuracy of the best epoch, model size and latency.

Accuracy objectives are figures of the best epoch (that of best_model.pth). The model objectives are measured on
best_model.pth after training, on the run's device at the run's input size, so a sweep can trade accuracy against
cost: `params_m` (millions of parameters of the embedding model: backbone and neck, without the training-only
classifier), `latency_ms` (milliseconds per image at batch 1) and `latency_ms_batch` (per image at
data.test_batch_size). Each objective has one direction, which the run record states and reid.select follows.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from reid.checkpoint import BEST_MODEL, load_model_file
from reid.engine.evaluator import valid_monitors
from reid.engine.hooks import Hook
from reid.engine.precision import resolve_precision
from reid.engine.stopping import COMPLETED, EARLY_STOPPING
from reid.errors import ConfigError

if TYPE_CHECKING:
    from reid.engine.trainer import Trainer

log = logging.getLogger("reid")

MODEL_OBJECTIVES = ("params_m", "latency_ms", "latency_ms_batch")
# Every accuracy figure is better when higher, every cost lower; a sweep's `direction` list must pair them so.
DIRECTIONS = {**{name: "maximize" for name in valid_monitors(True)}, **{name: "minimize" for name in MODEL_OBJECTIVES}}


def valid_objectives(classification: bool) -> tuple[str, ...]:
    """What `trainer.objectives` may name: the metrics `trainer.monitor` may, then the model's cost figures."""
    return valid_monitors(classification) + MODEL_OBJECTIVES


def check_objectives(objectives: Sequence[str] | None, classification: bool, dataset: str) -> None:
    """Refuse an objective list this run cannot produce, before anything trains."""
    if objectives is None:
        return
    names = list(objectives)
    valid = valid_objectives(classification)
    if not names:
        raise ConfigError(f"trainer.objectives=[]: expected a list of one or more of {', '.join(valid)}, or null")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"trainer.objectives={names}: {', '.join(duplicates)} named more than once")
    unknown = [name for name in names if name not in valid]
    if unknown:
        why = "" if classification or "val_top1" not in unknown else (
            "; the classifier's val_top1 needs held-out images of the training identities "
            "(dataset=folders dataset.split=closed)")
        raise ConfigError(f"trainer.objectives: {', '.join(map(repr, unknown))} not available for dataset "
                          f"{dataset}: expected names from {', '.join(valid)}{why}")


@dataclass
class LatencySettings:
    """How latency is measured; recorded beside the figures, since they mean nothing without it. `precision` and
    `channels_last` are the run's (trainer.precision resolved for the device, trainer.channels_last applied)."""

    device: str
    height: int
    width: int
    batch_size: int
    warmup: int
    repeats: int
    precision: str
    channels_last: bool


def embedding_parameters(model: nn.Module) -> int:
    """Parameters of the eval-mode forward (embedding): all but the head's classifier, which only training uses."""
    classifier = getattr(getattr(model, "head", None), "classifier", None)
    left_out = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in left_out)


@torch.no_grad()
def latency_per_image(model: nn.Module, settings: LatencySettings, batch_size: int) -> float:
    """Median milliseconds per image of the eval-mode forward at `batch_size`, after warm-up iterations.

    On CUDA each timed forward is synchronized, so the figure is the kernels' time, not the launch time.
    """
    device = torch.device(settings.device)
    precision = resolve_precision(settings.precision, None, device)
    images = torch.randn(batch_size, 3, settings.height, settings.width, device=device)
    if settings.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()

    def forward() -> None:
        with precision.autocast():
            model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        for _ in range(settings.warmup):
            forward()
        times = []
        for _ in range(settings.repeats):
            started = time.perf_counter()
            forward()
            times.append(time.perf_counter() - started)
    finally:
        model.train(was_training)
    return statistics.median(times) * 1000.0 / batch_size


def model_objectives(model: nn.Module, names: Sequence[str], settings: LatencySettings) -> dict[str, float]:
    """The model objectives among `names`, each measured only when asked for."""
    measure = {
        "params_m": lambda: embedding_parameters(model) / 1e6,
        "latency_ms": lambda: latency_per_image(model, settings, 1),
        "latency_ms_batch": lambda: latency_per_image(model, settings, settings.batch_size),
    }
    return {name: float(measure[name]()) for name in names if name in measure}


def objectives_record(names: Sequence[str], settings: LatencySettings) -> dict[str, Any]:
    """The run record's `objectives` before training: names, directions, how latency is measured; no values yet."""
    return {"names": list(names), "directions": {name: DIRECTIONS[name] for name in names},
            "latency": asdict(settings), "values": None}


class ObjectivesHook(Hook):
    """After a run that finished (completed or stopped early), put the objectives of best_model.pth in
    `trainer.state.objectives` for the run record and the sweeper; other stops leave them unset."""

    def __init__(self, names: Sequence[str], run_dir: Path, settings: LatencySettings) -> None:
        self.names = list(names)
        self.run_dir = Path(run_dir)
        self.settings = settings

    def after_train(self, trainer: Trainer) -> None:
        state = trainer.state
        if state.stop is None or state.stop.kind not in (COMPLETED, EARLY_STOPPING) or state.best_metrics is None:
            return
        best = self.run_dir / BEST_MODEL
        if any(name in MODEL_OBJECTIVES for name in self.names):
            load_model_file(best, trainer.model, trainer.model.architecture)
        values = {name: float(state.best_metrics[name]) for name in self.names if name in state.best_metrics}
        values.update(model_objectives(trainer.model, self.names, self.settings))
        # A stage that scores other metrics (CLIP-ReID's prompt stage: i2t_top1) has no mAP: NaN, like an unscored run;
        # a pipeline returns its final stage's objectives.
        state.objectives = {name: values.get(name, math.nan) for name in self.names}
        log.info("objectives of %s: %s", BEST_MODEL, ", ".join(f"{k}={v:.4g}" for k, v in state.objectives.items()))


def objective_tuple(values: dict[str, Any] | None, names: Sequence[str]) -> tuple[float, ...]:
    """The objectives in `names` order; NaN for each one a run did not produce (the sweeper records a FAIL)."""
    values = values or {}
    result = []
    for name in names:
        value = values.get(name)
        result.append(float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan)
    return tuple(result)


__all__ = ["DIRECTIONS", "MODEL_OBJECTIVES", "LatencySettings", "ObjectivesHook", "check_objectives",
           "embedding_parameters", "latency_per_image", "model_objectives", "objective_tuple", "objectives_record",
           "valid_objectives"]
