"""Where the commands that use a trained model write: beside the model, in its run directory.

`reid.evaluate`, `reid.visualize`, `reid.extract` and `reid.export` each name their Hydra run dir
`<run dir>/<subfolder>/<date>_<time>[_<dataset option>]` through a resolver registered here, so everything made
from a model stays with the run that made the model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from omegaconf import OmegaConf

from reid.cli import reports_user_errors
from reid.errors import ConfigError
from reid.models.loading import resolve_model_path

MISSING_MODEL = ("model= is missing: expected a reid.train run directory or its best_model.pth / model_final.pth, "
                 "e.g. model=outputs/smoke/runs/<run>")


def model_output_dir(subfolder: str, model: str | None, overrides: Any) -> str:
    """`<run dir>/<subfolder>/<date>_<time>[_<dataset option>]`: an evaluation lives beside the model it scores.

    The run dir is `model` itself or the model file's folder. Hydra resolves this before the job starts, so a
    missing `model=` is reported here, before any directory is made.
    """
    if not model:
        raise ConfigError(MISSING_MODEL)
    path = resolve_model_path(model)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    chosen = [str(o).split("=", 1)[1] for o in overrides or [] if str(o).lstrip("+").startswith("dataset=")]
    name = "_".join([stamp, *chosen])
    parent = path.parent / subfolder
    out, count = parent / name, 1
    while out.exists():
        count += 1
        out = parent / f"{name}_{count}"
    return str(out)


def register_output_resolver(name: str, subfolder: str, program: str) -> None:
    """The resolver conf/<command>.yaml names its hydra.run.dir with; its errors end `program` as user errors."""
    if not OmegaConf.has_resolver(name):
        def resolve(model: str | None, overrides: Any) -> str:
            return model_output_dir(subfolder, model, overrides)

        OmegaConf.register_new_resolver(name, reports_user_errors(program)(resolve), use_cache=True)
