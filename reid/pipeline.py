"""`python -m reid.train pipeline=three_stage`: run a list of stages, each from the previous stage's best model.

Each stage is an ordinary run with its own record, in `<pipeline dir>/<k>_<stage>/`. `PIPELINE.json` and
`PIPELINE_SUMMARY.txt` beside them track the chain, so rerunning the same command skips finished stages and
resumes the one that was interrupted or failed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from reid.checkpoint import LAST_CHECKPOINT, atomic_write_text
from reid.config import flatten_config
from reid.engine.objectives import objective_tuple
from reid.engine.record import read_model_info
from reid.engine.resume import PIPELINE_STATE
from reid.engine.run_lock import hold_run_dir
from reid.errors import ConfigError

log = logging.getLogger("reid")

SUMMARY_TXT = "PIPELINE_SUMMARY.txt"
# `pipeline.<stage>.<key>=v` names keys that may not exist yet (Hydra accepts those only with a leading `+`) or that
# a preset already set (experiment=clipreid_rn50_market1501 sets pipeline.finetune.*): `++` adds or overrides.
_STAGE_OVERRIDE = re.compile(r"^pipeline\.(?!name=|stages=|name\.|stages\.)\w+\.\S+=")


def allow_stage_overrides(argv: list[str]) -> list[str]:
    """Let users write `pipeline.stage2.optimizer.lr=4e-5` without Hydra's `++` (add, or override a preset's)."""
    return [f"++{arg}" if _STAGE_OVERRIDE.match(arg) else arg for arg in argv]


def _is_pipeline_override(override: str) -> bool:
    return override.lstrip("+~").startswith("pipeline")


def _override_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, str)) else ("null" if value is None else str(value))


def stage_overrides(cfg: DictConfig, base: list[str], stage: str, init_from: Path | None) -> list[str]:
    """The overrides of one stage: the command's own, the stage preset, then `pipeline.<stage>.*` keys."""
    node = cfg.pipeline.get(stage)
    own = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    overrides = [*base, f"stage={stage}", *(f"{k}={_override_value(v)}" for k, v in flatten_config(own).items())]
    if init_from is not None:
        overrides.append(f"stage.init_from={init_from}")
    return overrides


def _status(stage_dir: Path) -> str | None:
    return (read_model_info(stage_dir) or {}).get("status")


@contextmanager
def _stage_log(stage_dir: Path) -> Iterator[None]:
    """Each stage gets its own log.txt, while the pipeline's log keeps everything."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(stage_dir / "log.txt")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class Pipeline:
    """Runs the stages of `cfg.pipeline` in order inside the Hydra job's directory."""

    def __init__(self, cfg: DictConfig, pipeline_dir: Path, overrides: list[str]) -> None:
        stages = list(cfg.pipeline.get("stages") or [])
        if not stages:
            raise ConfigError("pipeline.stages: expected a non-empty list of stage names, "
                              "e.g. [stage1, stage2, stage3]")
        self.cfg = cfg
        self.dir = pipeline_dir
        self.name = str(cfg.pipeline.get("name", "pipeline"))
        self.stages = [str(s) for s in stages]
        self.overrides = overrides
        self.base = [o for o in overrides if not _is_pipeline_override(o)]
        self.state = self._load_state()

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.dir / PIPELINE_STATE).read_text())
        except (OSError, ValueError):
            state = {}
        return {"pipeline": self.name, "stages": self.stages, "overrides": self.overrides, "status": "running",
                "results": state.get("results", {}), "started": state.get("started") or _now()}

    def _save(self) -> None:
        atomic_write_text(self.dir / PIPELINE_STATE, json.dumps(self.state, indent=2) + "\n")
        atomic_write_text(self.dir / SUMMARY_TXT, self.summary())

    def stage_dir(self, index: int, stage: str) -> Path:
        return self.dir / f"{index}_{stage}"

    def run(self) -> float | tuple[float, ...]:
        """Run or resume every stage; returns what the final stage's train() returns: its best monitored metric
        (trainer.monitor), or its trainer.objectives."""
        from reid.train import train

        self._save()
        previous: Path | None = None
        value: float | tuple[float, ...] = float("nan")
        for index, stage in enumerate(self.stages, start=1):
            stage_dir = self.stage_dir(index, stage)
            overrides = stage_overrides(self.cfg, self.base, stage, previous)
            if _status(stage_dir) == "finished":
                log.info("pipeline %s: stage %d/%d %s already finished, skipping", self.name, index, len(self.stages),
                         stage)
                value = self._recorded_value(self._record_result(stage, stage_dir))
                previous = stage_dir
                continue
            if (stage_dir / LAST_CHECKPOINT).is_file():
                overrides.append(f"trainer.resume={stage_dir.resolve()}")
                log.info("pipeline %s: resuming stage %d/%d %s", self.name, index, len(self.stages), stage)
            else:
                log.info("pipeline %s: stage %d/%d %s", self.name, index, len(self.stages), stage)
            stage_cfg = compose(config_name="config", overrides=overrides)
            self.state["results"][stage] = {"run_dir": str(stage_dir.resolve()), "status": "running"}
            self._save()
            try:
                with _stage_log(stage_dir):
                    value = train(stage_cfg, run_dir=stage_dir, overrides=overrides)
            except BaseException as exc:
                self.state["results"][stage].update(status=_status(stage_dir) or "error",
                                                    error=str(exc) or type(exc).__name__)
                self.state["status"] = f"stopped in {stage}"
                self._save()
                raise
            result = self._record_result(stage, stage_dir)
            if result["status"] != "finished":
                self.state["status"] = f"stopped in {stage}: {result['stopping_reason']}"
                self._save()
                return value
            self._save()
            previous = stage_dir
        final = self.state["results"][self.stages[-1]]
        self.state.update(status="finished", ended=_now(), monitor=final["monitor"],
                          best_value=value if self.cfg.trainer.objectives is None else final["best_value"],
                          best_map=final["best_map"])
        if "objectives" in final:
            self.state["objectives"] = final["objectives"]
        self._save()
        return value

    def _record_result(self, stage: str, stage_dir: Path) -> dict[str, Any]:
        info = read_model_info(stage_dir)
        if info is None:
            raise RuntimeError(f"stage run {stage_dir} ended without a readable model_info.json")
        result = {"run_dir": str(stage_dir.resolve()), "status": info["status"],
                  "monitor": info.get("monitor", "mAP"), "best_value": info.get("best_value", info["best_map"]),
                  "best_map": info["best_map"],
                  "best_epoch": info["best_epoch"], "epochs_trained": info["epochs_trained"],
                  "stopping_reason": info["stopping_reason"]["message"]}
        if "objectives" in info:
            result["objectives"] = info["objectives"]["values"]
        self.state["results"][stage] = result
        return result

    def _recorded_value(self, result: dict[str, Any]) -> float | tuple[float, ...]:
        """What a finished stage returned, read back from its record (train()'s return value)."""
        names = self.cfg.trainer.objectives
        return result["best_value"] if names is None else objective_tuple(result.get("objectives"), names)

    def summary(self) -> str:
        lines = [f"Pipeline {self.name}: {' -> '.join(self.stages)}", f"Status: {self.state['status']}",
                 f"Directory: {self.dir.resolve()}", "",
                 f"{'stage':<10} {'status':<16} {'best mAP':>9} {'best epoch':>11} {'epochs':>7}  run"]
        for index, stage in enumerate(self.stages, start=1):
            result = self.state["results"].get(stage, {})
            best = result.get("best_map")
            lines.append(
                f"{stage:<10} {result.get('status', 'pending'):<16} "
                f"{(f'{best:.4f}' if isinstance(best, float) else '-'):>9} {str(result.get('best_epoch', '-')):>11} "
                f"{str(result.get('epochs_trained', '-')):>7}  {self.stage_dir(index, stage)}"
            )
        return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def run_pipeline(cfg: DictConfig) -> float | tuple[float, ...]:
    """Run the pipeline in the Hydra job's directory, which this process owns meanwhile (each stage's too)."""
    hydra_cfg = HydraConfig.get()
    pipeline_dir = Path(hydra_cfg.runtime.output_dir)
    with hold_run_dir(pipeline_dir, cfg.trainer.lock_stale_after):
        return Pipeline(cfg, pipeline_dir, list(hydra_cfg.overrides.task)).run()
