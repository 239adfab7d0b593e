"""Reading run records for post-hoc selection: from run directories found recursively, or from an Optuna study.

Selection runs over outputs written by many runs, some still going, some killed, some copied by hand. So every
record is validated field by field: a damaged one becomes a `DamagedRecord` naming what is wrong, a partial one
keeps what it has plus a note. Nothing here raises on a bad record; `SelectionError` is only for bad arguments
(a directory that does not exist, a storage that cannot be opened, an unknown study).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reid.checkpoint import BEST_MODEL
from reid.engine.record import CSV_COLUMNS, HISTORY_JSON, MODEL_INFO_JSON, OPTIONAL_COLUMNS
from reid.engine.stopping import (
    COMPLETED,
    DIVERGED,
    DIVERGED_SCORE,
    EARLY_STOPPING,
    ERROR,
    INTERRUPTED,
    OUT_OF_MEMORY,
)
from reid.errors import ReidError

PRUNED = "pruned"
RUNNING = "running"
# Stop kinds whose runs are never deployed: listed apart from the ranking, with their reasons.
FAILED_KINDS = frozenset({DIVERGED, ERROR, OUT_OF_MEMORY, PRUNED})
METRIC_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")
# Figures only closed-set runs record (the classifier on the held-out images); read when present.
OPTIONAL_METRIC_KEYS = tuple(OPTIONAL_COLUMNS)
DEFAULT_MONITOR = "mAP"
JOURNAL_SUFFIXES = (".log", ".journal")
STOP_KINDS = FAILED_KINDS | {COMPLETED, EARLY_STOPPING, INTERRUPTED}
# Override and config keys that say how a job was launched, not what it trained (`sweep_trial.`: older records).
BOOKKEEPING_PREFIXES = ("hydra.", "sweep_trial.")
SAMPLED = "sampled"


class SelectionError(ReidError, ValueError):
    """An argument of `reid.select` or `reid.plateau` cannot be used (missing directory, bad storage, ...)."""


class _Invalid(Exception):
    """One field of one record is unusable; caught per record and turned into a `DamagedRecord`."""


@dataclass
class RunSummary:
    """What selection needs from one run, taken from its own `model_info.json` (plus its history for plots).

    `monitor` is the metric that picked the run's best epoch (records from before `trainer.monitor`: mAP).
    """

    label: str
    path: Path | None
    status: str
    best_map: float | None
    best_epoch: int | None
    best_metrics: dict[str, float | None]
    epochs_trained: int | None
    max_epochs: int | None
    stop_kind: str | None
    stop_message: str
    training_seconds: float | None
    still_improving: bool | None
    overrides: list[str] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trial_number: int | None = None
    monitor: str = DEFAULT_MONITOR
    # The sweeper's link to the job's trial: model_info.json's `sweep_trial` (older records: the config's).
    sweep_link: dict[str, Any] | None = None
    # trainer.objectives of a finished run, in their order: values and "maximize"/"minimize" by name.
    objectives: dict[str, float] = field(default_factory=dict)
    objective_directions: dict[str, str] = field(default_factory=dict)

    @property
    def in_progress(self) -> bool:
        return self.status == RUNNING

    @property
    def best_model(self) -> Path | None:
        return None if self.path is None else self.path / BEST_MODEL

    def metric(self, name: str) -> float | None:
        """A figure at the run's best epoch (picked by its monitor), i.e. what `best_model.pth` delivers."""
        if name == "mAP":
            return self.best_map
        return self.best_metrics.get(name)

    def evaluations(self, name: str = "mAP") -> list[tuple[int, float]]:
        """(epoch, figure `name`) of every evaluated epoch in the history, for curves and trends."""
        points = []
        for row in self.history:
            value = row.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(row.get("epoch"), int):
                points.append((row["epoch"], float(value)))
        return points


@dataclass
class DamagedRecord:
    """A run directory whose record cannot be ranked, with every problem found."""

    label: str
    path: Path
    problems: list[str]


@dataclass
class RunCollection:
    runs: list[RunSummary] = field(default_factory=list)
    damaged: list[DamagedRecord] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def extend(self, other: RunCollection) -> None:
        """Add `other`'s records, skipping run directories already present (a study and its sweep dir overlap)."""
        seen = {run.path.resolve() for run in self.runs if run.path is not None}
        seen |= {record.path.resolve() for record in self.damaged}
        self.runs += [run for run in other.runs if run.path is None or run.path.resolve() not in seen]
        self.damaged += [record for record in other.damaged if record.path.resolve() not in seen]
        self.sources += other.sources

    def __len__(self) -> int:
        return len(self.runs) + len(self.damaged)


def user_overrides(overrides: list[str]) -> list[str]:
    """The overrides a person chose, without the ones a sweeper adds to link a job to its trial."""
    return [item for item in overrides if not item.lstrip("+~").startswith(BOOKKEEPING_PREFIXES)]


def parse_number(value: Any, key: str, where: str) -> float | None:
    """A JSON figure: a number, null, or the strings "nan"/"inf" that the run record writes for non-finite values."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Invalid(f"{where}: {key}={value!r} is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        return float(value.strip().lower().replace("infinity", "inf"))
    raise _Invalid(f"{where}: {key}={value!r} is not a number")


def _parse_int(value: Any, key: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise _Invalid(f"{where}: {key}={value!r} is not a whole number")
    return int(value)


def _read_json(path: Path) -> Any:
    """Parsed JSON, or `_Invalid` saying why the file cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _Invalid(f"{path.name} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _Invalid(f"{path.name} cannot be read: {exc}") from exc
    if not text.strip():
        raise _Invalid(f"{path.name} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Invalid(f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc


def read_json(path: Path) -> Any:
    """Parsed JSON of a file a command was pointed at; `SelectionError` names the file and what is wrong."""
    try:
        return _read_json(Path(path))
    except _Invalid as exc:
        raise SelectionError(f"{Path(path).parent}: {exc}") from None


def read_history(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The per-epoch rows of `training_history.json` with numbers parsed, plus notes on anything unusable."""
    try:
        data = _read_json(run_dir / HISTORY_JSON)
    except _Invalid as exc:
        return [], [f"{exc}: no mAP curve"]
    if not isinstance(data, dict) or not isinstance(data.get("epochs"), list):
        return [], [f"{HISTORY_JSON} has no 'epochs' list: no mAP curve"]
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for index, raw in enumerate(data["epochs"]):
        where = f"{HISTORY_JSON} epochs[{index}]"
        try:
            if not isinstance(raw, dict):
                raise _Invalid(f"{where} is a {type(raw).__name__}, expected an object")
            row: dict[str, Any] = {"epoch": _parse_int(raw.get("epoch"), "epoch", where)}
            if row["epoch"] is None:
                raise _Invalid(f"{where} has no 'epoch'")
            for key, value in raw.items():
                if key == "epoch":
                    continue
                numeric = key in CSV_COLUMNS or key in OPTIONAL_COLUMNS or key.startswith("loss")
                row[key] = parse_number(value, key, where) if numeric else value
        except _Invalid as exc:
            notes.append(f"{exc}; row skipped")
            continue
        rows.append(row)
    return rows, notes


def _last_eval_is_best(history: list[dict[str, Any]], best_epoch: int | None) -> bool | None:
    evaluated = [row["epoch"] for row in history if row.get("mAP") is not None]
    if not evaluated or best_epoch is None:
        return None
    return evaluated[-1] == best_epoch


def _stop_reason(info: dict[str, Any], where: str) -> tuple[str | None, str]:
    reason = info.get("stopping_reason")
    if reason is None:
        return None, ""
    if isinstance(reason, str):
        return reason, reason
    if not isinstance(reason, dict) or not isinstance(reason.get("kind"), str):
        raise _Invalid(f"{where}: stopping_reason={reason!r} is not an object with a 'kind'")
    return reason["kind"], str(reason.get("message") or reason["kind"])


def summarize_model_info(info: Any, label: str, path: Path | None, where: str) -> RunSummary:
    """Validate a parsed `model_info.json` and turn it into a summary; `_Invalid` names the first bad field."""
    if not isinstance(info, dict):
        raise _Invalid(f"{where} holds a JSON {type(info).__name__}, expected an object")
    if "best_map" not in info:
        raise _Invalid(f"{where} has no 'best_map' key")
    notes: list[str] = []
    best_map = parse_number(info["best_map"], "best_map", where)
    raw_metrics = info.get("best_metrics") or {}
    if not isinstance(raw_metrics, dict):
        raise _Invalid(f"{where}: best_metrics={raw_metrics!r} is not an object")
    keys = METRIC_KEYS + tuple(key for key in OPTIONAL_METRIC_KEYS if key in raw_metrics)
    best_metrics = {key: parse_number(raw_metrics.get(key), f"best_metrics.{key}", where) for key in keys}
    if best_metrics["rank1"] is None and info.get("best_rank1") is not None:
        best_metrics["rank1"] = parse_number(info["best_rank1"], "best_rank1", where)
    best_metrics["mAP"] = best_map
    status = info.get("status")
    if not isinstance(status, str):
        notes.append(f"status={status!r} is not a string; treated as 'unknown'")
        status = "unknown"
    stop_kind, stop_message = _stop_reason(info, where)
    overrides = info.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        notes.append(f"overrides={overrides!r} is not a list of strings; ignored")
        overrides = []
    overrides = user_overrides(overrides)
    hyperparameters = info.get("hyperparameters", {})
    if not isinstance(hyperparameters, dict):
        notes.append("hyperparameters is not an object; ignored")
        hyperparameters = {}
    timings = info.get("timings") if isinstance(info.get("timings"), dict) else {}
    still_improving = info.get("still_improving")
    if still_improving is not None and not isinstance(still_improving, bool):
        raise _Invalid(f"{where}: still_improving={still_improving!r} is not true/false")
    variant = info.get("variant")
    objectives, directions = _objectives(info.get("objectives"), where)
    monitor = info.get("monitor", DEFAULT_MONITOR)
    if not isinstance(monitor, str) or not monitor:
        notes.append(f"monitor={monitor!r} is not a metric name; treated as {DEFAULT_MONITOR!r}")
        monitor = DEFAULT_MONITOR
    return RunSummary(
        label=label,
        path=path,
        status=status,
        best_map=best_map,
        best_epoch=_parse_int(info.get("best_epoch"), "best_epoch", where),
        best_metrics=best_metrics,
        epochs_trained=_parse_int(info.get("epochs_trained"), "epochs_trained", where),
        max_epochs=_parse_int(info.get("max_epochs"), "max_epochs", where),
        stop_kind=stop_kind,
        stop_message=stop_message,
        training_seconds=parse_number(timings.get("total_seconds"), "timings.total_seconds", where),
        still_improving=still_improving,
        overrides=list(overrides),
        hyperparameters=hyperparameters,
        variant=str(variant) if variant not in (None, "") else None,
        notes=notes,
        monitor=monitor,
        sweep_link=info.get("sweep_trial") if isinstance(info.get("sweep_trial"), dict) else None,
        objectives=objectives,
        objective_directions=directions,
    )


def _objectives(record: Any, where: str) -> tuple[dict[str, float], dict[str, str]]:
    """The run record's `objectives` (names, directions, values) as values and directions by name; empty for a
    run without them or one that did not produce them (not finished)."""
    if record is None:
        return {}, {}
    if not isinstance(record, dict) or not isinstance(record.get("names"), list):
        raise _Invalid(f"{where}: objectives={record!r} is not an object with a 'names' list")
    values, directions = record.get("values"), record.get("directions") or {}
    if values is None:
        return {}, {}
    if not isinstance(values, dict) or not isinstance(directions, dict):
        raise _Invalid(f"{where}: objectives.values and objectives.directions must be objects")
    parsed: dict[str, float] = {}
    for name in record["names"]:
        value = parse_number(values.get(name), f"objectives.values.{name}", where)
        if directions.get(name) not in ("maximize", "minimize"):
            raise _Invalid(f"{where}: objectives.directions.{name}={directions.get(name)!r}, expected maximize or "
                           "minimize")
        if value is not None:
            parsed[str(name)] = value
    return parsed, {str(name): directions[name] for name in record["names"]}


def read_run_dir(run_dir: Path, label: str | None = None) -> RunSummary | DamagedRecord:
    """One run directory's record; never raises for a bad record."""
    run_dir = Path(run_dir)
    label = label or run_dir.name
    try:
        info = _read_json(run_dir / MODEL_INFO_JSON)
        summary = summarize_model_info(info, label, run_dir, MODEL_INFO_JSON)
    except _Invalid as exc:
        problems = [str(exc)]
        if (run_dir / HISTORY_JSON).is_file():
            problems.append(f"{HISTORY_JSON} exists, but figures are only taken from {MODEL_INFO_JSON}")
        return DamagedRecord(label, run_dir, problems)
    summary.history, history_notes = read_history(run_dir)
    summary.notes += history_notes
    if summary.still_improving is None:
        summary.still_improving = _last_eval_is_best(summary.history, summary.best_epoch)
    if summary.best_map is not None and not (run_dir / BEST_MODEL).is_file():
        summary.notes.append(f"{BEST_MODEL} is missing")
    return summary


def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Every directory below `roots` holding a run record (model_info.json or training_history.json)."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise SelectionError(f"{root}: no such directory")
        if not root.is_dir():
            raise SelectionError(f"{root}: not a directory (give a run, sweep or outputs directory)")
        for current, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if MODEL_INFO_JSON in files or HISTORY_JSON in files:
                found.add(Path(current).resolve())
    return sorted(found)


def _labels(run_dirs: list[Path]) -> dict[Path, str]:
    """Short unique names: each path relative to the deepest folder all of them share."""
    if not run_dirs:
        return {}
    if len(run_dirs) == 1:
        return {run_dirs[0]: run_dirs[0].name}
    common = Path(os.path.commonpath([str(path) for path in run_dirs]))
    return {path: (path.relative_to(common).as_posix() if path != common else path.name) for path in run_dirs}


def load_run_dirs(roots: list[Path]) -> RunCollection:
    """All records below the given directories, with variant names from the sweep study that launched them."""
    run_dirs = find_run_dirs(roots)
    labels = _labels(run_dirs)
    collection = RunCollection(sources=[str(Path(root).resolve()) for root in roots])
    for run_dir in run_dirs:
        record = read_run_dir(run_dir, labels[run_dir])
        if isinstance(record, DamagedRecord):
            collection.damaged.append(record)
        else:
            collection.runs.append(record)
    attach_sweep_trials(collection.runs)
    return collection


def _trial_link(run: RunSummary) -> tuple[str, str, int] | None:
    """(storage, study, trial number) of a job launched by the reid Optuna sweeper.

    Jobs record it in model_info.json as `sweep_trial`; records from before the sweeper passed it outside the
    config hold it in their config's `sweep_trial` node.
    """
    link = run.sweep_link or run.hyperparameters.get("sweep_trial")
    if not isinstance(link, dict):
        return None
    storage, study, number = link.get("storage"), link.get("study_name"), link.get("trial_number")
    if isinstance(storage, str) and storage and isinstance(study, str) and study and isinstance(number, int):
        return storage, study, number
    return None


def attach_sweep_trials(runs: list[RunSummary]) -> None:
    """Give sweep jobs found as directories their trial's variant name, read from the study they name."""
    import optuna

    linked: dict[tuple[str, str], list[tuple[RunSummary, int]]] = {}
    for run in runs:
        link = _trial_link(run)
        if link is not None and run.variant is None:
            linked.setdefault(link[:2], []).append((run, link[2]))
    for (storage, study_name), members in linked.items():
        if "://" not in storage and not Path(storage).is_file():
            for run, _ in members:
                run.notes.append(f"variant name unknown: its sweep's study storage {storage} no longer exists")
            continue
        try:
            study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
            trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
        except Exception as exc:  # any unreadable storage only costs the variant names, never the selection
            for run, _ in members:
                run.notes.append(f"variant name unknown: study {study_name!r} in {storage} cannot be read ({exc})")
            continue
        for run, number in members:
            trial = trials.get(number)
            if trial is not None and trial.user_attrs.get("variant"):
                run.variant = str(trial.user_attrs["variant"])
                run.trial_number = number


def open_storage(spec: str) -> Any:
    """An Optuna storage from a URL (sqlite:///..., postgresql://...), a journal file (.log/.journal) or a .db file.

    A file that does not exist is refused: Optuna would silently create an empty storage.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in spec:
        if spec.startswith("sqlite:///"):
            db_file = Path(spec[len("sqlite:///"):])
            if not db_file.is_file():
                raise SelectionError(f"--storage {spec}: the database file {db_file} does not exist")
        return spec
    path = Path(spec)
    if not path.is_file():
        raise SelectionError(f"--storage {spec}: no such file (give a sqlite:/// URL, a .db file or a .log/.journal "
                             "journal file)")
    if path.suffix in JOURNAL_SUFFIXES:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return f"sqlite:///{path.resolve()}"


def _trial_stop(attrs: dict[str, Any]) -> tuple[str | None, str]:
    """The stop kind and message a sweeper recorded: a {kind, message} object, or text like 'diverged: ...'."""
    for key in ("fail_reason", "stopping_reason"):
        reason = attrs.get(key)
        if isinstance(reason, dict) and isinstance(reason.get("kind"), str):
            return reason["kind"], str(reason.get("message") or reason["kind"])
        if isinstance(reason, str) and reason:
            prefix = reason.split(":", 1)[0].strip()
            return (prefix if prefix in STOP_KINDS else None), reason
    return None, ""


def _trial_monitor(attrs: dict[str, Any]) -> str:
    """The `trainer.monitor` among a trial's recorded overrides (the metric its objective value is), else mAP."""
    overrides = attrs.get("overrides") if isinstance(attrs.get("overrides"), list) else []
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") == "trainer.monitor" and value:
            return value
    return DEFAULT_MONITOR


def _trial_objectives(attrs: dict[str, Any]) -> list[str] | None:
    """The `trainer.objectives` among a trial's recorded overrides (what its values are), else None."""
    overrides = attrs.get("overrides") if isinstance(attrs.get("overrides"), list) else []
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") == "trainer.objectives" and value.startswith("["):
            return [name.strip() for name in value.strip("[]").split(",") if name.strip()]
    return None


def attach_trial_objectives(record: RunSummary, trial: Any, directions: list[str]) -> None:
    """A multi-objective trial known only from the study: its values, named by its trainer.objectives."""
    if record.objectives or trial.values is None or len(trial.values) < 2:
        return
    names = _trial_objectives(trial.user_attrs)
    if names is None or len(names) != len(trial.values):
        names = [f"objective_{index}" for index in range(len(trial.values))]
    record.objectives = {name: float(value) for name, value in zip(names, trial.values)}
    record.objective_directions = dict(zip(names, directions))
    figures = {name: value for name, value in record.objectives.items() if name in record.best_metrics}
    if figures:
        record.best_metrics.update(figures)
        record.best_map = record.best_metrics.get("mAP")
        record.status = "finished"


def _summary_from_trial_values(trial: Any, label: str) -> RunSummary:
    """A run known only from the study: its objective value (its best monitored metric, or -1.0 if diverged),
    params and state."""
    value = trial.value if trial.values is not None and len(trial.values) == 1 else None
    diverged = value is not None and (value == DIVERGED_SCORE or not math.isfinite(value))
    monitor = _trial_monitor(trial.user_attrs)
    figure = None if diverged else value
    return RunSummary(
        label=label,
        path=None,
        status="finished" if value is not None else "unknown",
        best_map=figure if monitor == "mAP" else None,
        best_epoch=None,
        best_metrics={key: None for key in METRIC_KEYS} | {monitor: figure},
        epochs_trained=None,
        max_epochs=None,
        stop_kind=DIVERGED if diverged else None,
        stop_message=f"objective value {value} (the sweep's score for a diverged run)" if diverged else "",
        training_seconds=trial.duration.total_seconds() if trial.duration is not None else None,
        still_improving=None,
        overrides=[f"{key}={value}" for key, value in trial.params.items()],
        notes=["no run directory recorded: figures are the trial's objective value only"],
        monitor=monitor,
    )


def summarize_trial(trial: Any) -> RunSummary | DamagedRecord:
    """One Optuna trial: its run directory's record when `user_attrs['run_dir']` has one, else its own values."""
    import optuna

    state = optuna.trial.TrialState
    attrs = trial.user_attrs
    label = f"trial {trial.number}"
    run_dir = attrs.get("run_dir")
    record: RunSummary | DamagedRecord
    if isinstance(run_dir, str) and (Path(run_dir) / MODEL_INFO_JSON).is_file():
        record = read_run_dir(Path(run_dir), label)
        if isinstance(record, DamagedRecord):
            return record
    else:
        record = _summary_from_trial_values(trial, label)
        if isinstance(run_dir, str):
            record.notes.insert(0, f"run_dir {run_dir} has no {MODEL_INFO_JSON}")
    record.trial_number = trial.number
    if attrs.get("variant"):
        record.variant = str(attrs["variant"])
    if isinstance(attrs.get("overrides"), list) and all(isinstance(item, str) for item in attrs["overrides"]):
        record.overrides = user_overrides(attrs["overrides"])
    kind, message = _trial_stop(attrs)
    if trial.state == state.PRUNED:
        if record.stop_kind != PRUNED:
            record.stop_message = message or f"pruned by the sweep (trial {trial.number})"
        record.stop_kind = record.status = PRUNED
    elif trial.state == state.FAIL and record.stop_kind not in FAILED_KINDS:
        record.stop_kind = kind if kind in FAILED_KINDS else ERROR
        record.stop_message = message or "the trial failed (Optuna state FAIL)"
        record.status = record.stop_kind
    elif trial.state in (state.RUNNING, state.WAITING):
        record.status = RUNNING
    elif record.stop_kind is None and kind is not None:
        record.stop_kind, record.stop_message = kind, message
    return record


def load_study(storage: str, study_name: str | None) -> RunCollection:
    """Every trial of a study; with no `study_name`, the storage's only study."""
    import optuna

    handle = open_storage(storage)
    try:
        names = optuna.study.get_all_study_names(storage=handle)
    except Exception as exc:  # optuna raises backend-specific errors for an unreadable database
        raise SelectionError(f"--storage {storage}: cannot be read as an Optuna storage ({exc})") from exc
    if study_name is None:
        if len(names) != 1:
            raise SelectionError(f"--storage {storage} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                                 "name one with --study")
        study_name = names[0]
    elif study_name not in names:
        raise SelectionError(f"--study {study_name!r} is not in {storage}; its studies: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=study_name, storage=handle)
    collection = RunCollection(sources=[f"Optuna study {study_name!r} in {storage}"])
    directions = [direction.name.lower() for direction in study.directions]
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("stale"):
            continue  # an attempt whose sweep process died; the sweeper enqueued its retry as another trial
        record = summarize_trial(trial)
        if isinstance(record, DamagedRecord):
            collection.damaged.append(record)
        else:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                attach_trial_objectives(record, trial, directions)
            collection.runs.append(record)
    return collection


def model_from_payload(payload: dict[str, Any]) -> tuple[Any, Any]:
    """Rebuild the model of a `best_model.pth` payload (already loaded with `weights_only=True`) for inference.

    Returns `(model, transform)`: the model in eval mode, whose forward gives embeddings, and the test-time
    transform that turns a PIL image into its input tensor. Pretrained-weight downloads are switched off: the
    file's own weights replace every tensor anyway.
    """
    from omegaconf import OmegaConf

    from reid.data.transforms import eval_transform
    from reid.models import build_model

    if not isinstance(payload, dict) or not {"state_dict", "architecture", "meta"} <= set(payload):
        raise SelectionError("expected the contents of a reid best_model.pth (keys state_dict, architecture, meta)")
    cfg = OmegaConf.create(payload["meta"]["config"])
    if "pretrained" in cfg.backbone:
        cfg.backbone.pretrained = False
    if "weights" in cfg.backbone:
        cfg.backbone.weights = None
    model = build_model(cfg.backbone, cfg.head, num_classes=payload["architecture"]["num_classes"],
                        num_cameras=payload["architecture"].get("num_cameras"))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, eval_transform(cfg.data.height, cfg.data.width)
