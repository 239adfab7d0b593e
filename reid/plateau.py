"""`python -m reid.plateau <run dir>`: why did this run stall, and what to run next.

Reads the run's training_history.json and model_info.json, names each pattern it finds with the numbers that
show it, writes PLATEAU_DIAGNOSIS.txt into the run directory and prints the next command: the plateau sweep
(most likely fix first), a plain "train longer" when that is the only finding, or nothing for a healthy run.
Exit status: 0 after a diagnosis (healthy or not), 2 for a bad argument or an unreadable run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from reid.cli import reports_user_errors
from reid.selection.diagnosis import DIAGNOSIS_TXT, Thresholds, diagnose, load_run, write_diagnosis
from reid.selection.records import SelectionError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reid.plateau",
        description=f"Diagnose a stalled run and write {DIAGNOSIS_TXT} into its directory. Patterns: CE near "
                    "ln(num_classes), triplet loss at its margin, CE far above the weighted triplet term, the "
                    "monitored metric (trainer.monitor, mAP by default) flat while the loss falls, an LR drop before "
                    "the loss settled, the monitored metric still rising at the end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, help="a run directory written by `python -m reid.train`")
    thresholds = parser.add_argument_group("thresholds")
    defaults = Thresholds()
    for item in fields(Thresholds):
        kind = int if item.type in (int, "int") else float
        thresholds.add_argument(f"--{item.name.replace('_', '-')}", dest=item.name, type=kind,
                                default=getattr(defaults, item.name), metavar=kind.__name__.upper(),
                                help=item.metadata["help"])
    return parser


@reports_user_errors("reid.plateau")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        thresholds = Thresholds(**{item.name: getattr(args, item.name) for item in fields(Thresholds)})
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run = load_run(args.run_dir)
    except SelectionError as exc:
        parser.error(str(exc))
    diagnosis = diagnose(run, thresholds)
    path = write_diagnosis(diagnosis)
    print(diagnosis.render())
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
