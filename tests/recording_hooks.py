"""A user's own callback, as docs/callbacks.md describes one, selected in tests through a YAML file's `_target_`."""

from __future__ import annotations

import csv
from pathlib import Path

from reid.engine.hooks import EpochResult, Hook, StepInfo


class EpochRecorder(Hook):
    """Writes one line per callback to `path`: what it was called with, and what the run dir held by then."""

    def __init__(self, path: str, run_dir: Path) -> None:
        self.path = Path(path)
        self.run_dir = run_dir
        self.steps = 0

    def _write(self, line: str) -> None:
        with self.path.open("a") as handle:
            handle.write(line + "\n")

    def before_train(self, trainer) -> None:
        self._write(f"before_train epoch={trainer.state.epoch}")

    def before_epoch(self, trainer, epoch: int) -> None:
        self.steps = 0
        self._write(f"before_epoch {epoch}")

    def after_step(self, trainer, info: StepInfo) -> None:
        self.steps += 1

    def after_epoch(self, trainer, result: EpochResult) -> None:
        with (self.run_dir / "metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        self._write(f"after_epoch {result.epoch} steps={self.steps} mAP={result.metrics['mAP']!r} "
                    f"csv_rows={len(rows)} best_model={(self.run_dir / 'best_model.pth').is_file()}")

    def after_train(self, trainer) -> None:
        self._write(f"after_train {trainer.state.stop.kind}")
