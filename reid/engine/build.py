"""Turn a composed config into the objects a run needs: data, model, loss, optimizer, schedule, trainer."""

from __future__ import annotations

import inspect
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from hydra_plugins.reid_optuna_sweeper import current_link, current_trial
from reid.cli import user_error_in
from reid.config import HOOK_GROUPS, as_plain_dict, instantiate_provided
from reid.data.loaders import Loaders, build_loaders
from reid.data.records import ReidSplits
from reid.engine import distributed
from reid.engine.acceleration import build_optimizer, memory_format_for
from reid.engine.evaluator import Evaluator, valid_monitors
from reid.engine.hooks import Hook
from reid.engine.objectives import LatencySettings, ObjectivesHook, check_objectives, objectives_record
from reid.engine.precision import Precision, resolve_precision
from reid.engine.record import RunRecord, RunRecordHook
from reid.engine.stages import StageStart, UnfreezeAfter, stage_max_epochs
from reid.engine.standard_hooks import CheckpointSaver, EarlyStopping, ProgressLogger
from reid.engine.trainer import Trainer
from reid.errors import ConfigError
from reid.models import ReidModel, build_model
from reid.sweep.pruning import TrialPruningHook

log = logging.getLogger("reid")

def resolve_device(name: str | torch.device, key: str = "trainer.device") -> torch.device:
    """The device `key` names (`auto`: CUDA where available, else CPU); each of several processes gets its own GPU
    (cuda:LOCAL_RANK)."""
    if str(name) == "auto":
        return distributed.place(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={str(name)!r} but CUDA is not available here; use {key}=auto or cpu")
    return distributed.place(device)


def dataset_info(splits: ReidSplits) -> dict[str, Any]:
    def count(records: list) -> dict[str, int]:
        return {"images": len(records), "identities": len({r.pid for r in records}),
                "cameras": len({r.camid for r in records})}

    return {"name": splits.name, "root": str(splits.root), "num_classes": splits.num_classes,
            "closed_set": splits.closed_set,
            "train": count(splits.train), "query": count(splits.query), "gallery": count(splits.gallery)}


def check_monitor(monitor: str, splits: ReidSplits, step_monitors: tuple[str, ...] | None = None) -> None:
    """Refuse a `trainer.monitor` this dataset's evaluation (or the stage step's own, `step_monitors`) cannot
    produce, before anything trains."""
    valid = step_monitors or valid_monitors(splits.closed_set)
    if monitor in valid:
        return
    why = "; the stage's step (stage.step) scores only these" if step_monitors else "" if splits.closed_set else (
        "; the classifier's val_top1 needs held-out images of the training identities "
        "(dataset=folders dataset.split=closed)")
    raise ConfigError(f"trainer.monitor={monitor!r} is not available for dataset {splits.name}: "
                      f"expected one of {', '.join(valid)}{why}")


@dataclass
class Experiment:
    """Everything built from a config, before any training step; `precision` and `memory_format` are how the
    training step and feature extraction compute (trainer.precision, trainer.channels_last)."""

    splits: ReidSplits
    loaders: Loaders
    model: ReidModel
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    precision: Precision
    memory_format: torch.memory_format
    # The optimizer of the loss's own parameters (center loss centres), outside the LR schedule; None without.
    loss_optimizer: torch.optim.Optimizer | None = None
    # stage.step: what the stage trains on instead of the image loader (None: the ordinary image step).
    step: Any = None


def build_experiment(cfg: DictConfig) -> Experiment:
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.amp, device)
    splits = instantiate(cfg.dataset).load()
    num_cameras = splits.num_cameras
    if cfg.trainer.limit_eval_queries or cfg.trainer.limit_eval_gallery:
        splits = splits.limit_evaluation(cfg.trainer.limit_eval_queries, cfg.trainer.limit_eval_gallery)
        log.info("evaluating %d queries against %d gallery images (trainer.limit_eval_queries=%s, "
                 "trainer.limit_eval_gallery=%s)", len(splits.query), len(splits.gallery),
                 cfg.trainer.limit_eval_queries, cfg.trainer.limit_eval_gallery)
    log.info("%s", splits.summary())
    step = instantiate(cfg.stage.step) if cfg.stage.step is not None else None
    check_monitor(cfg.trainer.monitor, splits, getattr(step, "monitors", None))
    check_objectives(cfg.trainer.objectives, splits.closed_set, splits.name)
    model = build_model(cfg.backbone, cfg.head, num_classes=splits.num_classes, num_cameras=num_cameras)
    # The loss is built for the model: a center loss keeps one centre per identity in the metric feature's size.
    criterion = instantiate_provided(cfg.loss, num_classes=splits.num_classes,
                                     feature_dim=model.architecture["feature_dim"])
    check_batch = getattr(criterion, "check_batch", None)
    if check_batch is not None:
        check_batch(cfg.data.p, cfg.data.k)
    loaders = build_loaders(splits, cfg.data, seed=cfg.trainer.seed, device=device,
                            num_replicas=distributed.world_size(), rank=distributed.rank())
    if cfg.trainer.sync_bn:
        # The same parameters and buffers, so the state dict (and every checkpoint) keeps its keys.
        distributed.convert_sync_batchnorm(model)
    model.keep_frozen(list(cfg.stage.frozen))
    model.set_freeze_level(cfg.stage.freeze_level)
    memory_format = memory_format_for(model, cfg.trainer.channels_last)
    model.to(device, memory_format=memory_format)
    log.info("model %s + %s on %s; %s", model.architecture["backbone"], model.architecture["head"].rsplit(".", 1)[-1],
             device, model.describe_freezing())
    optimizer = build_optimizer(instantiate(cfg.optimizer), model.trainable_parameters(), device)
    scheduler = instantiate(cfg.scheduler)(optimizer)
    criterion.to(device)
    loss_optimizer = getattr(criterion, "make_optimizer", lambda: None)()
    return Experiment(splits, loaders, model, criterion, optimizer, scheduler, device, precision, memory_format,
                      loss_optimizer, step)


def build_trainer(cfg: DictConfig, experiment: Experiment, run_dir: Path, overrides: list[str],
                  resume: tuple[dict[str, Any], dict[str, Any]] | None = None,
                  start: StageStart | None = None) -> Trainer:
    """The trainer with its standard hooks.

    `resume` is (checkpoint, accepted config changes) to continue from; `start` places a stage after its parent's
    epochs (its weights are loaded by the caller).
    """
    start = start or StageStart()
    max_epochs = stage_max_epochs(cfg, start.initial_epoch)
    config = as_plain_dict(cfg)
    record = RunRecord(run_dir, config, dataset_info(experiment.splits), overrides=overrides)
    record.info.update(max_epochs=max_epochs, lineage=start.lineage)
    evaluator = Evaluator(experiment.loaders.test, experiment.loaders.num_query, experiment.device,
                          experiment.precision, distance=cfg.data.distance,
                          classification=experiment.splits.closed_set, memory_format=experiment.memory_format,
                          batch_transform=experiment.loaders.test_transform)
    record.info["processes"] = distributed.world_size()
    log.info("training step: trainer.precision=%s, channels_last=%s, trainer.compile=%s", experiment.precision.name,
             experiment.memory_format == torch.channels_last, cfg.trainer.compile)
    # Rank 0 logs, writes and decides (early stopping, pruning; the loop broadcasts its decisions); every rank
    # runs the hooks that change what it trains.
    hooks: list[Hook] = []
    if distributed.is_main():
        hooks = [
            ProgressLogger(cfg.trainer.log_every),
            EarlyStopping(cfg.trainer.patience),
            CheckpointSaver(run_dir, config),
            RunRecordHook(record),
        ]
        if cfg.trainer.objectives is not None:
            latency = LatencySettings(device=str(experiment.device), height=cfg.data.height, width=cfg.data.width,
                                      batch_size=cfg.data.test_batch_size, warmup=cfg.trainer.latency_warmup,
                                      repeats=cfg.trainer.latency_repeats, precision=experiment.precision.name,
                                      channels_last=experiment.memory_format == torch.channels_last)
            hooks.insert(-1, ObjectivesHook(cfg.trainer.objectives, run_dir, latency))
            record.info["objectives"] = objectives_record(cfg.trainer.objectives, latency)
        trial = current_trial()
        if trial is not None:
            # Optuna reports intermediate values (and so prunes) only in single-objective studies.
            if len(trial.study.directions) == 1:
                hooks.insert(-1, TrialPruningHook(trial))
            record.info["sweep_trial"] = asdict(current_link())
        # The user's loggers and callbacks come last: each epoch they see its metrics, the best model and the record
        # already saved. They observe and write, so they run on rank 0 only.
        hooks += build_run_hooks(cfg, run_dir, config, overrides)
    if cfg.trainer.transfer_epochs:
        hooks.insert(0, UnfreezeAfter(cfg.trainer.transfer_epochs, start.initial_epoch, cfg.trainer.unfreeze_lr_factor))
    parts: dict[str, Any] = {
        "train_loader": experiment.loaders.train,
        # Rank 0 evaluates the whole query and gallery; every rank gets its figures.
        "evaluate": lambda model: distributed.on_main(lambda: evaluator(model)),
        "batch_transform": experiment.loaders.train_transform,
        "memory_format": experiment.memory_format,
    }
    if experiment.step is not None:
        # The stage's step replaces what it trains on and how it is scored, and runs first as a hook on every rank.
        parts.update(experiment.step.trainer_parts(experiment, cfg.trainer.seed))
        hooks.insert(0, experiment.step)
    trainer = Trainer(
        experiment.model,
        experiment.criterion,
        experiment.optimizer,
        experiment.scheduler,
        hooks=hooks,
        max_epochs=max_epochs,
        eval_every=cfg.trainer.eval_every,
        device=experiment.device,
        precision=experiment.precision,
        seed=cfg.trainer.seed,
        compile=cfg.trainer.compile,
        grad_clip=cfg.trainer.grad_clip,
        limit_train_batches=cfg.trainer.limit_train_batches,
        monitor=cfg.trainer.monitor,
        loss_optimizer=experiment.loss_optimizer,
        **parts,
    )
    trainer.state.epoch = start.initial_epoch
    if resume is not None:
        checkpoint, changes = resume
        trainer.restore(checkpoint)
        record.continue_from(checkpoint["epoch"], checkpoint["global_step"], changes)
        where = f"epoch {checkpoint['epoch']}"
        if checkpoint.get("epoch_progress"):
            where += f" + {checkpoint['epoch_progress']['step']} steps of epoch {checkpoint['epoch'] + 1}"
        log.info("resumed %s after %s (global step %d)", run_dir, where, checkpoint["global_step"])
    return trainer


def build_run_hooks(cfg: DictConfig, run_dir: Path, config: dict[str, Any], overrides: list[str]) -> list[Hook]:
    """The `logger` group's hooks, then the `callbacks` group's, each in its config's order.

    A class gets whichever of HOOK_ARGUMENTS its __init__ names: `run_dir`, `config` (the resolved run config, a
    dict) and `overrides` (the run's command-line overrides). A user error while building one names its key.
    """
    provided = {"run_dir": run_dir, "config": config, "overrides": list(overrides)}
    hooks: list[Hook] = []
    for group in HOOK_GROUPS:
        for name, node in (cfg.get(group) or {}).items():
            key = f"{group}.{name}"
            # Built as a partial and then called: `config` would collide with instantiate's own first parameter.
            build = instantiate(node, _partial_=True)
            accepted = inspect.signature(build.func).parameters
            try:
                hook = build(**{arg: value for arg, value in provided.items() if arg in accepted})
            except Exception as exc:
                error = user_error_in(exc)
                if error is None:
                    raise
                raise ConfigError(f"{key} ({node._target_}): {error}") from exc
            if not isinstance(hook, Hook):
                raise ConfigError(f"{key}._target_={node._target_!r} made a {type(hook).__name__}; expected a "
                                  "subclass of reid.engine.hooks.Hook")
            hooks.append(hook)
    return hooks
