"""The config schema: structured configs for the fixed sections, signature checks for `_target_` groups.

Fixed-shape sections (`trainer`, `data`, `stage`) are dataclasses in Hydra's ConfigStore, so a wrong type or
an unknown key fails at composition time with Hydra's own message. Groups that map to classes through
`_target_` (backbone, head, loss, optimizer, scheduler, dataset) are checked against the target's own
signature, so adding a backbone or a loss needs one YAML file and at most one class, never a schema edit.
The hook groups (`logger`, `callbacks`) are dicts of such nodes, each checked the same way.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from reid.engine.precision import CHOICES as PRECISIONS
from reid.engine.precision import effective_precision
from reid.errors import ConfigError

TARGET_GROUPS = ("dataset", "backbone", "head", "loss", "optimizer", "scheduler")
# Arguments the code passes to `_target_` classes itself; a YAML file setting them is an error.
PROVIDED_ARGUMENTS = {"head": ("in_features", "num_classes", "backbone"), "optimizer": ("params",),
                      "scheduler": ("optimizer",), "backbone": ("num_cameras",), "loss": ("num_classes", "feature_dim")}
# Groups of named hooks (conf/logger, conf/callbacks): {name: `_target_` node of a reid.engine.hooks.Hook class}.
HOOK_GROUPS = ("logger", "callbacks")
# What reid.engine.build passes to a hook class whose __init__ names it: the run directory, the resolved config
# (a dict) and the run's command-line overrides; a YAML file setting them is an error.
HOOK_ARGUMENTS = ("run_dir", "config", "overrides")



def instantiate_provided(node: DictConfig, **provided: Any) -> Any:
    """Instantiate a `_target_` node, passing it those of the `provided` arguments (see PROVIDED_ARGUMENTS) that
    its constructor names: a class that needs no camera count or backbone is built without one."""
    from hydra.utils import instantiate

    parameters = inspect.signature(get_object(node._target_)).parameters
    return instantiate(node, **{key: value for key, value in provided.items() if key in parameters})

@dataclass
class TrainerConfig:
    """How the loop runs; every key here is read by `reid.engine`."""

    max_epochs: int = 120
    eval_every: int = 5
    patience: int = 30
    monitor: str = "mAP"
    device: str = "auto"
    precision: str = "auto"
    amp: Optional[bool] = None
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    log_every: int = 20
    grad_clip: Optional[float] = None
    resume: Optional[str] = None
    resume_allow_changes: bool = False
    transfer_epochs: int = 0
    unfreeze_lr_factor: float = 0.1
    limit_train_batches: Optional[int] = None
    limit_eval_queries: Optional[int] = None
    limit_eval_gallery: Optional[int] = None
    debug_stage_epochs: Optional[int] = None
    lock_stale_after: float = 3600.0
    sync_bn: bool = False
    objectives: Optional[List[str]] = None
    latency_warmup: int = 5
    latency_repeats: int = 20


@dataclass
class DataConfig:
    """Input pipeline: size, PK batch composition, augmentation, where it runs, decoded-image cache, workers."""

    height: int = 256
    width: int = 128
    p: int = 16
    k: int = 4
    augment: bool = True
    flip_prob: float = 0.5
    pad: int = 10
    random_erasing_prob: float = 0.5
    num_workers: int = 2
    test_batch_size: int = 128
    distance: str = "euclidean"
    pipeline: str = "auto"
    cache: str = "none"
    cache_max_gb: float = 8.0


@dataclass
class StageConfig:
    """A fine-tuning stage; `freeze_level` 0 trains everything, 1 freezes the backbone, 2 all but the classifier.

    `epochs` is the stage's length (null: until `trainer.max_epochs`, counted globally); `parent` names the stage
    whose newest finished run this one starts from, unless `init_from` gives a run dir or a .pth file. `frozen` names
    modules frozen at every level; `step` replaces what the stage trains on (CLIP-ReID's prompt stage).
    """

    name: str = "full"
    freeze_level: int = 0
    epochs: Optional[int] = None
    parent: Optional[str] = None
    init_from: Optional[str] = None
    # Modules frozen whatever freeze_level says (dotted names, e.g. head.prompt_learner).
    frozen: List[str] = field(default_factory=list)
    # What the stage trains on, when not the model on the image loader: a `_target_` class such as
    # reid.engine.prompt_learning.PromptLearning (CLIP-ReID's prompt stage); null: the ordinary image step.
    step: Optional[Dict[str, Any]] = None


@dataclass
class ReidConfig:
    """The top-level schema; `_target_` groups stay open dicts and are checked by `validate_targets`."""

    # `sweep` is an optional group (conf/sweep -> sweeps/), so `--multirun sweep=plateau` needs no `+`.
    defaults: List[Any] = field(default_factory=lambda: [{"sweep": None}, "_self_"])
    experiment_name: str = "default"
    dataset: Any = None
    backbone: Any = None
    head: Any = None
    loss: Any = None
    optimizer: Any = None
    scheduler: Any = None
    stage: StageConfig = field(default_factory=StageConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    data_dir: str = "data"
    pipeline: Optional[Dict[str, Any]] = None
    # HOOK_GROUPS: user-defined named `_target_` nodes, checked by `validate_targets`.
    logger: Dict[str, Any] = field(default_factory=dict)
    callbacks: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateConfig:
    """`python -m reid.evaluate` (conf/evaluate.yaml): the model comes from its file, so only how to score it is
    configured here. `dataset` null: the data the run was evaluated on during training (its recorded dataset)."""

    model: Optional[str] = None
    dataset: Any = None
    data_dir: str = "data"
    # null: the run's data.distance
    distance: Optional[str] = None
    flip: bool = False
    rerank: bool = False
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    device: str = "auto"
    precision: str = "auto"
    # null: the run's data.test_batch_size / data.num_workers
    batch_size: Optional[int] = None
    num_workers: Optional[int] = None


@dataclass
class VisualizeConfig(EvaluateConfig):
    """`python -m reid.visualize` (conf/visualize.yaml): an evaluation, drawn. `max_queries` null: every query."""

    top_k: int = 10
    max_queries: Optional[int] = None
    per_page: int = 50
    tile_height: int = 128
    tile_width: int = 64


def register_configs() -> None:
    """Store the schemas so YAML files can extend them, and the resolver that picks the run directory."""
    from reid.cli import reports_user_errors
    from reid.engine.resume import run_dir_resolver

    if not OmegaConf.has_resolver("reid_run_dir"):
        # Hydra resolves the run directory before the job starts, so a bad trainer.resume is reported here.
        OmegaConf.register_new_resolver("reid_run_dir", reports_user_errors("reid.train")(run_dir_resolver),
                                        use_cache=True)
    store = ConfigStore.instance()
    store.store(name="reid_schema", node=ReidConfig)
    store.store(name="reid_evaluate_schema", node=EvaluateConfig)
    store.store(name="reid_visualize_schema", node=VisualizeConfig)


def _type_matches(value: Any, annotation: Any) -> bool:
    """Whether a config value can be passed for a parameter annotated with `annotation`."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is dict or annotation is dict:
        return isinstance(value, (dict, DictConfig))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_target_node(node: DictConfig, key: str, provided: tuple[str, ...] = ()) -> None:
    """Check one `_target_` node's keys and value types against the target's signature.

    `provided` names the arguments the code passes itself (such as `num_classes`), which the YAML must not set.
    """
    target_path = node.get("_target_")
    if not target_path:
        raise ConfigError(f"{key}: expected a `_target_` naming the class to build, got keys {list(node.keys())}")
    try:
        target = get_object(target_path)
    except Exception as exc:
        why = " ".join(str(exc).splitlines())  # one line, as every user error is reported
        raise ConfigError(f"{key}._target_={target_path!r} cannot be imported: {why}") from exc
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:
        hints = {}
    params = signature.parameters
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [name for name, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for name in node.keys():
        if str(name).startswith("_"):
            continue
        if name in provided:
            raise ConfigError(f"{key}.{name} is set by reid itself and must not be configured")
        if name not in params:
            if accepts_kwargs:
                continue
            choices = ", ".join(v for v in valid if v not in provided) or "(none)"
            raise ConfigError(f"{key}.{name} is not an argument of {target_path}; valid keys: {choices}")
        value = OmegaConf.to_object(node[name]) if OmegaConf.is_config(node[name]) else node[name]
        annotation = hints.get(name, params[name].annotation)
        if value is not None and not _type_matches(value, annotation):
            raise ConfigError(
                f"{key}.{name}={value!r}: expected {_describe(annotation)} (argument of {target_path})"
            )


def validate_targets(cfg: DictConfig, provided: dict[str, tuple[str, ...]] = PROVIDED_ARGUMENTS) -> None:
    """Check every `_target_` group before anything is built, so a typo fails before training."""
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if node is None:
            raise ConfigError(f"config group `{group}` is missing; choose one with `{group}=<option>`")
        check_target_node(node, group, provided.get(group, ()))
    for group in HOOK_GROUPS:
        for name, node in (cfg.get(group) or {}).items():
            if not isinstance(node, DictConfig):
                raise ConfigError(f"{group}.{name}={node!r}: expected a node with a `_target_` naming a hook class")
            check_target_node(node, f"{group}.{name}", HOOK_ARGUMENTS)
    if cfg.stage.get("step") is not None:
        check_target_node(cfg.stage.step, "stage.step")
    if cfg.stage.epochs is not None and cfg.stage.epochs < 1:
        raise ConfigError(f"stage.epochs={cfg.stage.epochs}: expected an integer >= 1, or null for 'the rest'")
    if cfg.trainer.transfer_epochs < 0:
        raise ConfigError(f"trainer.transfer_epochs={cfg.trainer.transfer_epochs}: expected an integer >= 0")
    if cfg.stage.freeze_level not in (0, 1, 2):
        raise ConfigError(
            f"stage.freeze_level={cfg.stage.freeze_level}: expected 0 (nothing frozen), "
            "1 (backbone frozen) or 2 (all but the classifier frozen)"
        )
    if cfg.data.distance not in ("euclidean", "cosine"):
        raise ConfigError(f"data.distance={cfg.data.distance!r}: expected 'euclidean' or 'cosine'")
    if cfg.data.pipeline not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"data.pipeline={cfg.data.pipeline!r}: expected 'auto' (gpu on a CUDA device, else cpu), "
                          "'cpu' (augment in the loader workers) or 'gpu' (augment whole batches on the device)")
    if cfg.data.cache not in ("none", "ram", "disk"):
        raise ConfigError(f"data.cache={cfg.data.cache!r}: expected 'none' (decode at every use), 'ram' or 'disk' "
                          "(decode once)")
    if cfg.data.cache_max_gb < 0:
        raise ConfigError(f"data.cache_max_gb={cfg.data.cache_max_gb}: expected a size in GB >= 0")
    if effective_precision(cfg.trainer.precision, cfg.trainer.amp) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={cfg.trainer.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if cfg.trainer.device not in ("auto", "cpu", "cuda") and not str(cfg.trainer.device).startswith("cuda:"):
        raise ConfigError(f"trainer.device={cfg.trainer.device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    for name in ("max_epochs", "eval_every", "log_every"):
        if cfg.trainer[name] < 1:
            raise ConfigError(f"trainer.{name}={cfg.trainer[name]}: expected an integer >= 1")
    for name in ("limit_train_batches", "limit_eval_queries", "limit_eval_gallery", "debug_stage_epochs"):
        if cfg.trainer[name] is not None and cfg.trainer[name] < 1:
            raise ConfigError(f"trainer.{name}={cfg.trainer[name]}: expected an integer >= 1, or null for no limit")
    if cfg.trainer.latency_warmup < 0 or cfg.trainer.latency_repeats < 1:
        raise ConfigError(f"trainer.latency_warmup={cfg.trainer.latency_warmup}, trainer.latency_repeats="
                          f"{cfg.trainer.latency_repeats}: expected warm-up >= 0 and repeats >= 1")
    for name in ("p", "k", "height", "width", "test_batch_size"):
        if cfg.data[name] < 1:
            raise ConfigError(f"data.{name}={cfg.data[name]}: expected an integer >= 1")


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested plain dicts as {"dotted.key": leaf value}, the form overrides and config diffs speak."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def as_plain_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain python containers (safe for JSON and `weights_only` checkpoints)."""
    return typing.cast(dict, OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


__all__ = [
    "PROVIDED_ARGUMENTS",
    "HOOK_GROUPS",
    "HOOK_ARGUMENTS",
    "ReidConfig",
    "TrainerConfig",
    "DataConfig",
    "StageConfig",
    "EvaluateConfig",
    "VisualizeConfig",
    "register_configs",
    "validate_targets",
    "check_target_node",
    "as_plain_dict",
    "flatten_config",
]
