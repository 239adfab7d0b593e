"""Finding the run to resume, and refusing to resume it under a silently different config."""

from __future__ import annotations

import inspect
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import OmegaConf

from reid.checkpoint import LAST_CHECKPOINT
from reid.config import TARGET_GROUPS, ReidConfig, flatten_config
from reid.engine import distributed
from reid.engine.precision import fold_amp_alias
from reid.engine.record import read_model_info
from reid.engine.run_lock import acquire
from reid.engine.stopping import PRUNED
from reid.errors import ConfigError

OUTPUTS = Path("outputs")
# Keys that name how to resume rather than what to train; they may differ between the two invocations.
RESUME_KEYS = ("trainer.resume", "trainer.resume_allow_changes", "trainer.lock_stale_after")
# Loggers only watch a run: a resumed run may add, drop or change them (logger=tensorboard on resume).
UNCOMPARED_PREFIXES = ("logger.",)


FINISHED = "finished"
# Statuses of a run whose result stands (RunRecord.finish): its directory is never trained in again by itself.
ENDED_STATUSES = (FINISHED, PRUNED)


def _finished(run_dir: Path) -> bool:
    return (read_model_info(run_dir) or {}).get("status") == FINISHED


def interrupted_run(run_dir: Path) -> Path | None:
    """The run `run_dir` already holds, to continue without trainer.resume; None for a fresh directory.

    A run directory is reused only when the same job starts again in it: a requeued SLURM/submitit sweep trial
    (same trial directory), or a rerun into a fixed `hydra.run.dir`. An unfinished run there (killed, stopped by a
    signal, an error or divergence) is continued from its last checkpoint; one that ended (finished, pruned) is
    refused, so a result is never trained over.
    """
    info = read_model_info(run_dir) or {}
    status = info.get("status")
    if status in ENDED_STATUSES:
        reason = (info.get("stopping_reason") or {}).get("message") or status
        raise ConfigError(
            f"{run_dir} already holds a run that ended ({status}: {reason}); reid.train does not train over it. "
            "Give the new run a directory of its own (hydra.run.dir, or hydra.sweep.dir for a sweep), or continue "
            f"this one on purpose with trainer.resume={Path(run_dir).resolve()}"
        )
    return Path(run_dir).resolve() if (Path(run_dir) / LAST_CHECKPOINT).is_file() else None


def find_latest_run(experiment_name: str, outputs: Path = OUTPUTS) -> Path:
    """The newest run of `experiment_name` that has a last checkpoint and did not finish."""
    root = outputs / experiment_name
    candidates = [path.parent for path in root.rglob(LAST_CHECKPOINT)] if root.is_dir() else []
    resumable = [run for run in candidates if not _finished(run)]
    if not resumable:
        raise ConfigError(
            f"trainer.resume=latest: no resumable run of experiment {experiment_name!r} under {root}/ "
            f"(looked for {LAST_CHECKPOINT} in runs that have not finished; found {len(candidates)} checkpoint(s) "
            "in finished runs). Pass trainer.resume=<run dir> to continue a specific run."
        )
    return max(resumable, key=lambda run: (run / LAST_CHECKPOINT).stat().st_mtime)


def resolve_resume_dir(resume: str, experiment_name: str) -> Path:
    """`latest` or a run directory, checked to hold a resumable checkpoint."""
    run_dir = find_latest_run(experiment_name) if resume == "latest" else Path(resume)
    if not (run_dir / LAST_CHECKPOINT).is_file():
        raise ConfigError(
            f"trainer.resume={resume}: {run_dir} has no {LAST_CHECKPOINT}; expected the directory of a run "
            "started by `python -m reid.train` (or `latest`)"
        )
    return run_dir.resolve()


PIPELINE_STATE = "PIPELINE.json"


def find_unfinished_pipeline(experiment_name: str, pipeline_name: str, overrides: list[str],
                             outputs: Path = OUTPUTS) -> Path | None:
    """The newest unfinished run of the same pipeline command, which a rerun continues."""
    root = outputs / experiment_name / "pipelines"
    matches = []
    for state_file in root.glob(f"*/{PIPELINE_STATE}") if root.is_dir() else []:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("pipeline") == pipeline_name and state.get("overrides") == overrides \
                and state.get("status") != "finished":
            matches.append(state_file.parent)
    return max(matches, key=lambda run: (run / PIPELINE_STATE).stat().st_mtime) if matches else None


def choose_run_dir(resume: str | None, experiment_name: str, stage_name: str, pipeline_name: str | None,
                   overrides: list[str]) -> Path:
    """A resumed run's own directory, an unfinished pipeline's own (same command), or a fresh one."""
    if resume:
        return resolve_resume_dir(resume, experiment_name)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if pipeline_name:
        unfinished = find_unfinished_pipeline(experiment_name, pipeline_name, overrides)
        return unfinished or OUTPUTS / experiment_name / "pipelines" / f"{stamp}_{pipeline_name}"
    return OUTPUTS / experiment_name / "runs" / f"{stamp}_{stage_name}"


def run_dir_resolver(resume: str | None, experiment_name: str, stage_name: str, pipeline_name: str | None,
                     overrides: Any, lock_stale_after: float) -> str:
    """Hydra's run directory, claimed for this process before Hydra creates anything in it.

    Claimed until the process exits (train() and pipelines also hold it while they run), so a second process
    resuming the same run, or rerunning the same pipeline command, refuses with RunDirLocked and touches nothing.
    """
    def claim() -> Path:
        run_dir = choose_run_dir(resume, experiment_name, stage_name, pipeline_name, [str(o) for o in overrides])
        acquire(run_dir, lock_stale_after)
        return run_dir

    # Under torchrun rank 0 chooses (its clock names a new run) and owns the directory; the other ranks share it.
    return str(distributed.on_main(claim))


def schema_defaults() -> dict[str, Any]:
    """The structured config's default of every fixed-section key (`trainer.*`, `data.*`, ...), flattened."""
    return flatten_config(OmegaConf.to_container(OmegaConf.structured(ReidConfig)))


def target_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor default of every argument of the `_target_` groups' classes in `config`, flattened
    (`backbone.last_stride`: None)."""
    defaults: dict[str, Any] = {}
    for group in TARGET_GROUPS:
        node = config.get(group)
        try:
            parameters = inspect.signature(get_object(node["_target_"])).parameters
        except Exception:  # noqa: BLE001 - no importable target: no defaults to add
            continue
        defaults.update({f"{group}.{name}": p.default for name, p in parameters.items()
                         if p.default is not inspect.Parameter.empty})
    return defaults


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Keys whose values differ between the checkpoint's config and the current one: {key: {old, new}}.

    A key the checkpoint's config lacks is no change while it holds its default (the schema's, or its `_target_`
    class's): it was added to reid after the checkpoint was written (e.g. `trainer.monitor`, `backbone.last_stride`),
    and that default is how the old run behaved. The older `trainer.amp` switch is compared as the
    `trainer.precision` it stands for.
    """
    old, new = fold_amp_alias(flatten_config(saved)), fold_amp_alias(flatten_config(current))
    defaults = {**target_defaults(current), **schema_defaults()}
    for key in set(new) - set(old):
        if key in defaults and defaults[key] == new[key]:
            old[key] = new[key]
    keys = sorted(key for key in (set(old) | set(new)) - set(RESUME_KEYS) if not key.startswith(UNCOMPARED_PREFIXES))
    return {key: {"old": old.get(key), "new": new.get(key)} for key in keys if old.get(key) != new.get(key)}


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], allow_changes: bool,
                        run_dir: Path) -> dict[str, dict[str, Any]]:
    changes = config_changes(saved, current)
    if changes and not allow_changes:
        listed = "; ".join(f"{key}: {change['old']!r} -> {change['new']!r}" for key, change in changes.items())
        raise ConfigError(
            f"cannot resume {run_dir}: the config differs from the checkpoint's in {len(changes)} key(s): {listed}. "
            "Resume with the same overrides, or pass trainer.resume_allow_changes=true to accept the changes."
        )
    return changes
