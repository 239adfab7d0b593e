"""Post-hoc model selection and plateau diagnosis over finished (or running) run records.

`python -m reid.select` ranks runs and writes the BEST_MODEL_SELECTION reports; `python -m reid.plateau` names
what stalled one run. `model_from_payload` rebuilds a selected `best_model.pth` for inference.
"""

from reid.selection.ranking import RANK_METRICS, Ranking, default_metric, rank_runs, sort_key
from reid.selection.records import (
    DamagedRecord,
    RunCollection,
    RunSummary,
    SelectionError,
    load_run_dirs,
    load_study,
    model_from_payload,
    read_run_dir,
)
from reid.selection.report import REPORT_STEM, write_reports

__all__ = [
    "DamagedRecord",
    "RANK_METRICS",
    "REPORT_STEM",
    "Ranking",
    "RunCollection",
    "RunSummary",
    "SelectionError",
    "default_metric",
    "load_run_dirs",
    "load_study",
    "model_from_payload",
    "rank_runs",
    "read_run_dir",
    "sort_key",
    "write_reports",
]
