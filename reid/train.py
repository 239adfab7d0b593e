"""The training entrypoint: `python -m reid.train [group=option ...] [key=value ...]`.

Returns the run's best value of `trainer.monitor` (mAP by default) so a Hydra sweeper can optimize it; a
diverged run returns -1.0, which ranks last, never NaN. With `trainer.objectives` it returns their values (a
tuple for several, for a multi-objective sweep; reid.engine.objectives); a diverged run's are NaN, a failed trial.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from reid.checkpoint import LAST_CHECKPOINT, check_architecture, load_initial_weights, load_training_checkpoint
from reid.cli import exit_on_user_error
from reid.config import as_plain_dict, register_configs, validate_targets
from reid.engine import distributed
from reid.engine.build import build_experiment, build_trainer
from reid.engine.objectives import objective_tuple
from reid.engine.resume import check_resume_config, interrupted_run, resolve_resume_dir
from reid.engine.run_lock import hold_run_dir
from reid.engine.stages import resolve_stage_start
from reid.engine.stopping import DIVERGED, DIVERGED_SCORE, RunInterrupted, pass_on_signal
from reid.engine.trainer import TrainState
from reid.errors import ConfigError
from reid.pipeline import allow_stage_overrides, run_pipeline
from reid.utils.seed import configure_determinism, seed_everything

log = logging.getLogger("reid")

PROGRAM = "reid.train"

# The repository's conf/ directory, by absolute path so the entrypoint works however it is imported.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

register_configs()


def score(state: TrainState, objectives: Sequence[str] | None = None) -> float | tuple[float, ...]:
    """The value a sweeper optimizes: the best monitored metric, or a value below any of them (all lie in [0, 1])
    for a diverged or unscored run. With `objectives` (trainer.objectives): their values in that order, NaN for
    each one the run did not produce (diverged, unscored), which the sweeper records as a FAIL; a single objective
    comes as a plain number, the form a single-direction sweep expects."""
    if objectives is not None:
        values = objective_tuple(state.objectives, objectives)
        return values[0] if len(values) == 1 else values
    if state.stop is not None and state.stop.kind == DIVERGED:
        return DIVERGED_SCORE
    if state.best_value is None or not math.isfinite(state.best_value):
        return DIVERGED_SCORE
    return float(state.best_value)


def train(cfg: DictConfig, run_dir: str | Path | None = None,
          overrides: list[str] | None = None) -> float | tuple[float, ...]:
    """Build everything from `cfg`, train, write the run record into `run_dir`, return the score (with
    trainer.objectives: their values, a tuple for several).

    `overrides` are the command-line overrides recorded for the run (default: the Hydra job's). The process owns
    `run_dir` while it trains: another one training there makes this refuse with RunDirLocked. Under torchrun,
    rank 0 owns it for all the ranks, which share it.
    """
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if run_dir is None:
        if hydra_cfg is None:
            raise ValueError("train() needs run_dir when called outside a Hydra job")
        run_dir = hydra_cfg.runtime.output_dir
    run_dir = Path(run_dir)
    if overrides is None:
        overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    if not distributed.is_main():
        return _train_in(cfg, run_dir, overrides)
    with hold_run_dir(run_dir, cfg.trainer.lock_stale_after):
        return _train_in(cfg, run_dir, overrides)


def _train_in(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> float | tuple[float, ...]:
    validate_targets(cfg)
    configure_determinism(cfg.trainer.deterministic)
    seed_everything(cfg.trainer.seed)
    try:
        resume = load_resume_point(cfg, run_dir)
        start = resolve_stage_start(cfg)
        experiment = build_experiment(cfg)
        if resume is not None:
            check_architecture(experiment.model.architecture, resume[0].get("architecture"), run_dir / LAST_CHECKPOINT)
        elif start.init_path is not None:
            left_out = load_initial_weights(start.init_path, experiment.model, experiment.model.architecture)
            log.info("stage %s starts from %s after epoch %d%s", cfg.stage.name, start.init_path, start.initial_epoch,
                     f"; left at initial values: {', '.join(left_out)}" if left_out else "")
    except Exception as exc:
        log.error("could not set up the run: %s", exc)
        raise
    trainer = build_trainer(cfg, experiment, run_dir, overrides, resume, start)
    log.info("run directory: %s", run_dir.resolve())
    restore_signal_handlers = trainer.handle_signals()
    try:
        state = trainer.fit()
    finally:
        restore_signal_handlers()
    return score(state, cfg.trainer.objectives)


def load_resume_point(cfg: DictConfig, run_dir: Path) -> tuple[dict, dict] | None:
    """The checkpoint to continue from and the config changes the user accepted: trainer.resume's run, or without
    it the interrupted run `run_dir` already holds (a requeued sweep trial's job: `interrupted_run`)."""
    if cfg.trainer.resume:
        resume_dir = resolve_resume_dir(cfg.trainer.resume, cfg.experiment_name)
        if resume_dir != run_dir.resolve():
            raise ConfigError(f"trainer.resume={cfg.trainer.resume} resolves to {resume_dir}, but this run writes "
                              f"to {run_dir}; a resumed run continues in its own directory")
    else:
        resume_dir = interrupted_run(run_dir)
        if resume_dir is None:
            return None
    checkpoint = load_training_checkpoint(resume_dir / LAST_CHECKPOINT)
    try:
        changes = check_resume_config(checkpoint["config"], as_plain_dict(cfg), cfg.trainer.resume_allow_changes,
                                      resume_dir)
    except ConfigError as exc:
        if cfg.trainer.resume:
            raise
        raise ConfigError(f"{exc} This directory already holds that run; give a new run a directory of its own "
                          "(hydra.run.dir, or hydra.sweep.dir for a sweep)") from None
    if not cfg.trainer.resume:
        progress = checkpoint.get("epoch_progress") or {}
        log.info("continuing the interrupted run in %s from epoch %d step %d", resume_dir, checkpoint["epoch"] + 1,
                 progress.get("step", 0))
    return checkpoint, changes


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    try:
        if cfg.pipeline:
            if distributed.world_size() > 1:
                raise ConfigError(f"pipeline={cfg.pipeline.name}: a pipeline runs in one process; start it without "
                                  "torchrun, or train its stages one by one (stage=...) under torchrun")
            return run_pipeline(cfg)
        return train(cfg)
    except RunInterrupted as stop:
        # The checkpoint is saved: a job runner's own handler gets the signal now (submitit requeues the job on
        # SIGUSR2, into the same directory, where the run continues). Otherwise exit non-zero like any interrupted
        # program (130 for Ctrl+C, 143 for SIGTERM, 140 for SIGUSR2); the record says how to resume.
        pass_on_signal(stop.signum)
        raise SystemExit(128 + stop.signum) from None
    except Exception as exc:
        # A single run ends on the user's mistake with its message; in a sweep the sweeper records the failure.
        if HydraConfig.get().mode == RunMode.RUN:
            exit_on_user_error(exc, PROGRAM)
        raise


if __name__ == "__main__":
    # Under torchrun the processes join before Hydra picks the run directory, which rank 0 chooses for all.
    distributed.init_from_env()
    sys.argv = allow_stage_overrides(sys.argv) + distributed.hydra_overrides()
    main()
