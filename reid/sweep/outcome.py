"""How a reid.train job ended, read from its run record: the sweeper's `hydra.sweeper.job_outcome` for reid.

sweeps/plateau.yaml names `run_outcome` by `_target_`; the sweeper calls it with each finished job's run
directory, so pruned and diverged runs are recorded as such and each trial shows its epochs and stop reason.
"""

from __future__ import annotations

from pathlib import Path

from hydra_plugins.reid_optuna_sweeper import JobOutcome
from reid.engine.record import read_model_info
from reid.engine.stopping import DIVERGED, PRUNED


def run_outcome(run_dir: Path) -> JobOutcome:
    """The run record's status (pruned, diverged, out_of_memory, ...), stop reason and epochs trained."""
    info = read_model_info(Path(run_dir)) or {}
    status = info.get("status")
    reason = (info.get("stopping_reason") or {}).get("message")
    failed = f"diverged: {reason or 'the run diverged'}" if status == DIVERGED else None
    return JobOutcome(status=status, pruned=status == PRUNED, failed=failed,
                      user_attrs={"stopping_reason": reason, "epochs_trained": info.get("epochs_trained")})
