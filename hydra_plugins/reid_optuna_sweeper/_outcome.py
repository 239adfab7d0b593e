"""How a job ended, beyond its return value: the hook through which an app tells the sweeper more.

`hydra.sweeper.job_outcome` names a callable (`_target_`) called with the job's output directory after the
job returns; it reads whatever record the app writes there (reid reads its run record). Without one, the
return value and the job's exception (`optuna.TrialPruned` included) decide alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobOutcome:
    """What the app's record says about one job.

    `status` is the app's own word for how the job ended ("pruned", "diverged", "out_of_memory", ...): it
    prefixes the trial's `fail_reason`. `pruned` records the trial PRUNED; `failed` (a reason) records it FAIL
    although the job returned a value. `user_attrs` are stored on the trial as they are.
    """

    status: str | None = None
    pruned: bool = False
    failed: str | None = None
    user_attrs: dict[str, Any] = field(default_factory=dict)
