"""The run record: the one place that writes metrics.csv, training_history.json, model_info.json and
STOPPING_REASON.txt. Every file is rewritten atomically after each epoch, so a run that is still going,
or one killed at any moment, leaves complete, parseable files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reid.checkpoint import BEST_MODEL, FINAL_MODEL, LAST_CHECKPOINT, atomic_write_text
from reid.engine.evaluator import CLASSIFICATION_METRICS
from reid.engine.hooks import EpochResult, Hook
from reid.engine.stopping import COMPLETED, DIVERGED, EARLY_STOPPING, ERROR, INTERRUPTED, OUT_OF_MEMORY, StopReason
from reid.utils.env import library_versions

if TYPE_CHECKING:
    from reid.engine.trainer import Trainer

METRICS_CSV = "metrics.csv"
HISTORY_JSON = "training_history.json"
MODEL_INFO_JSON = "model_info.json"
STOPPING_REASON_TXT = "STOPPING_REASON.txt"

CSV_COLUMNS = ["epoch", "lr", "loss", "loss_ce", "loss_tri", "train_top1", "mAP", "rank1", "rank5", "rank10", "mINP",
               "epoch_time"]
# Columns only closed-set runs have; metrics.csv places them before epoch_time.
OPTIONAL_COLUMNS = list(CLASSIFICATION_METRICS)


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as strings so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_model_info(run_dir: Path) -> dict[str, Any] | None:
    """A run's model_info.json, or None when it is missing or unreadable (a run killed before its first write)."""
    try:
        return json.loads((Path(run_dir) / MODEL_INFO_JSON).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def key_hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The handful of settings a person looks at first."""
    def short(node: dict[str, Any]) -> str:
        return str(node.get("_target_", "?")).rsplit(".", 1)[-1]

    backbone, optimizer, loss, data = config["backbone"], config["optimizer"], config["loss"], config["data"]
    scheduler = config["scheduler"]
    return {
        "backbone": backbone.get("model_name", short(backbone)),
        "pretrained": backbone.get("pretrained"),
        "head": short(config["head"]),
        "loss": {k: v for k, v in loss.items() if not k.startswith("_")},
        "optimizer": short(optimizer),
        "lr": optimizer.get("lr"),
        "weight_decay": optimizer.get("weight_decay"),
        "scheduler": {"name": short(scheduler), **{k: v for k, v in scheduler.items() if not k.startswith("_")}},
        "batch": f"P={data['p']} x K={data['k']} = {data['p'] * data['k']}",
        "input_size": f"{data['height']}x{data['width']}",
        "max_epochs": config["trainer"]["max_epochs"],
        "freeze_level": config["stage"]["freeze_level"],
        "seed": config["trainer"]["seed"],
    }


def resume_command(info: dict[str, Any]) -> str:
    """The command that continues this run in its own directory."""
    overrides = [o for o in info.get("overrides", []) if not o.startswith(("trainer.resume=", "+trainer.resume="))]
    return shlex.join(["python", "-m", "reid.train", *overrides, f"trainer.resume={info['run_dir']}"])


def recommendation(stop: StopReason, info: dict[str, Any]) -> str:
    """What to do next, given how the run ended."""
    still_improving = info.get("still_improving", False)
    monitor = info.get("monitor", "mAP")
    if stop.kind == DIVERGED:
        return ("The loss became NaN/Inf. Lower the learning rate (e.g. optimizer.lr=<half of now>) or clip "
                "gradients (trainer.grad_clip=5.0); AMP overflow can also cause it. best_model.pth from before "
                "the divergence is kept.")
    if stop.kind == OUT_OF_MEMORY:
        return ("Use a smaller batch (data.p / data.k), mixed precision (AMP) on CUDA (trainer.precision=bf16-mixed "
                "or 16-mixed), or a smaller input size (data.height / data.width).")
    if stop.kind == INTERRUPTED:
        return ("The run was stopped; its checkpoint is saved. Resume it exactly where it stopped with:\n"
                f"  {resume_command(info)}")
    if stop.kind == ERROR:
        return "Fix the error above and rerun; the log (log.txt) has the full traceback."
    if still_improving:
        return (f"{monitor} was still improving at the last evaluation: more epochs may pay "
                "(raise trainer.max_epochs). Deploy best_model.pth meanwhile.")
    if stop.kind in (EARLY_STOPPING, COMPLETED):
        return (f"The run converged. Deploy best_model.pth. If its {monitor} is too low, try a higher learning rate, "
                "a cosine schedule or a different loss balance.")
    return "Deploy best_model.pth."


class RunRecord:
    """Writes and updates the record files of one run directory."""

    def __init__(self, run_dir: Path, config: dict[str, Any], dataset: dict[str, Any], command: list[str] | None = None,
                 overrides: list[str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.dataset = dataset
        self.started = time.time()
        self.previous_seconds = 0.0
        self.info: dict[str, Any] = {
            "status": "running",
            "run_dir": str(self.run_dir.resolve()),
            "experiment_name": config.get("experiment_name"),
            "stage": config["stage"]["name"],
            "command": command if command is not None else [sys.executable, *sys.argv],
            "overrides": overrides or [],
            "monitor": config["trainer"].get("monitor", "mAP"),
            "best_value": None,
            "best_map": None,
            "best_epoch": None,
            "best_rank1": None,
            "best_metrics": None,
            "epochs_trained": 0,
            "max_epochs": config["trainer"]["max_epochs"],
            "stopping_reason": None,
            "dataset": dataset,
            "num_classes": dataset.get("num_classes"),
            "hyperparameters": config,
            "key_hyperparameters": key_hyperparameters(config),
            "files": {"best_model": BEST_MODEL, "final_model": FINAL_MODEL, "last_checkpoint": LAST_CHECKPOINT},
            "timings": {"started": _now(), "ended": None, "total_seconds": 0.0, "mean_epoch_seconds": None},
            "resumes": [],
            "versions": library_versions(),
        }

    def start(self) -> None:
        write_json(self.run_dir / MODEL_INFO_JSON, self.info)

    def continue_from(self, epoch: int, global_step: int, changes: dict[str, Any]) -> None:
        """Carry the existing record of a resumed run forward and log this resume in it."""
        previous = read_model_info(self.run_dir) or {}
        self.info["timings"]["started"] = previous.get("timings", {}).get("started", self.info["timings"]["started"])
        self.previous_seconds = float(previous.get("timings", {}).get("total_seconds") or 0.0)
        self.info["resumes"] = list(previous.get("resumes", [])) + [{
            "time": _now(),
            "from_epoch": epoch,
            "from_step": global_step,
            "command": self.info["command"],
            "config_changes": changes,
        }]

    def update(self, trainer: Trainer) -> None:
        """Rewrite the per-epoch files from the state's history (the checkpointed truth)."""
        state = trainer.state
        history = state.history
        self._write_csv(history)
        write_json(self.run_dir / HISTORY_JSON, {"epochs": history})
        times = [row["epoch_time"] for row in history]
        self.info.update(
            monitor=state.monitor,
            best_value=state.best_value,
            best_map=state.best_map,
            best_epoch=state.best_epoch or None,
            best_rank1=(state.best_metrics or {}).get("rank1"),
            best_metrics=state.best_metrics,
            epochs_trained=state.epoch,
            global_step=state.global_step,
        )
        self.info["training_step"] = trainer.step_settings()
        if "objectives" in self.info:
            self.info["objectives"]["values"] = state.objectives
        self.info["timings"].update(
            total_seconds=round(self.previous_seconds + time.time() - self.started, 3),
            mean_epoch_seconds=round(sum(times) / len(times), 3) if times else None,
        )
        write_json(self.run_dir / MODEL_INFO_JSON, self.info)

    def _write_csv(self, history: list[dict[str, Any]]) -> None:
        present = {key for row in history for key in row}
        columns = CSV_COLUMNS[:-1] + [key for key in OPTIONAL_COLUMNS if key in present] + CSV_COLUMNS[-1:]
        for row in history:
            columns.extend(key for key in row if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
        atomic_write_text(self.run_dir / METRICS_CSV, buffer.getvalue())

    def finish(self, trainer: Trainer) -> None:
        state = trainer.state
        stop = state.stop or StopReason.error(RuntimeError("stopped for an unknown reason"))
        self.update(trainer)
        still_improving = bool(state.history) and state.best_epoch == _last_eval_epoch(state.history, state.monitor)
        self.info.update(
            status="finished" if stop.kind in (COMPLETED, EARLY_STOPPING) else stop.kind,
            stopping_reason=stop.to_dict(),
            still_improving=still_improving,
        )
        self.info["timings"]["ended"] = _now()
        write_json(self.run_dir / MODEL_INFO_JSON, self.info)
        atomic_write_text(self.run_dir / STOPPING_REASON_TXT, self.stopping_reason_text(stop, trainer))

    def stopping_reason_text(self, stop: StopReason, trainer: Trainer) -> str:
        state = trainer.state
        info = self.info
        best = state.best_value
        lines = [f"Training stopped: {stop.message}", ""]
        label = f"Best {state.monitor}:"
        if best is None:
            lines.append(f"{label:<17}none (no evaluation finished)")
        else:
            metrics = state.best_metrics or {}
            others = [f"{name} {metrics[key]:.4f}" for key, name in (("mAP", "mAP"), ("rank1", "rank-1"))
                      if key != state.monitor and metrics.get(key) is not None]
            lines.append(f"{label:<17}{best:.4f} at epoch {state.best_epoch}"
                         + (f" ({', '.join(others)})" if others else ""))
            if state.monitor != "mAP":
                lines.append(f"{'Monitored by:':<17}trainer.monitor={state.monitor}")
        lines += [
            f"Epochs trained:  {state.epoch} of {info['max_epochs']}",
            f"Run directory:   {info['run_dir']}",
        ]
        if (self.run_dir / BEST_MODEL).exists():
            lines.append(f"Best model:      {(self.run_dir / BEST_MODEL).resolve()}")
        lines += ["", "Key hyperparameters:"]
        for key, value in info["key_hyperparameters"].items():
            lines.append(f"  {key:<14} {value}")
        lines += ["", "Recommendation:", f"  {recommendation(stop, info)}", ""]
        return "\n".join(lines)


def _last_eval_epoch(history: list[dict[str, Any]], monitor: str = "mAP") -> int | None:
    evaluated = [row["epoch"] for row in history if row.get(monitor) is not None]
    return evaluated[-1] if evaluated else None


class RunRecordHook(Hook):
    def __init__(self, record: RunRecord) -> None:
        self.record = record

    def before_train(self, trainer: Trainer) -> None:
        self.record.start()

    def after_epoch(self, trainer: Trainer, result: EpochResult) -> None:
        self.record.update(trainer)

    def after_train(self, trainer: Trainer) -> None:
        self.record.finish(trainer)
