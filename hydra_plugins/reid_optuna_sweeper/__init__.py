"""An Optuna sweeper for any Hydra app: `override hydra/sweeper: reid_optuna` (see docs/sweeps.md).

The package imports only hydra, omegaconf and optuna. A job reaches its trial with `current_trial()`; an app
plugs in named variants (`Variant`) and its own reading of a job's record (`JobOutcome`) through config.
With `processes_per_trial` above 1 each trial's job runs the app under torchrun (`_torchrun`); rank 0's return
value reaches the sweep through a file. Modules with a leading underscore are internal (Hydra's plugin scan
leaves them alone).
"""

from hydra_plugins.reid_optuna_sweeper._errors import SweepConfigError
from hydra_plugins.reid_optuna_sweeper._job import TrialLink, current_link, current_trial
from hydra_plugins.reid_optuna_sweeper._outcome import JobOutcome
from hydra_plugins.reid_optuna_sweeper._variants import Variant
from hydra_plugins.reid_optuna_sweeper._workers import busy_fractions

__all__ = ["JobOutcome", "SweepConfigError", "TrialLink", "Variant", "busy_fractions", "current_link",
           "current_trial"]
