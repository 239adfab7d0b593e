"""`python -m reid.select <dir> [<dir> ...]`: which model to deploy, after a sweep or a week of single runs.

Reads every run record below the given directories (or an Optuna study), ranks the runs by their own
`model_info.json` figures and writes BEST_MODEL_SELECTION.{txt,md,csv,png} into the first directory (or --out).
Exit status: 0 with a winner, 1 when nothing could be ranked, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reid.cli import reports_user_errors
from reid.selection.ranking import RANK_METRICS, default_metric, rank_runs
from reid.selection.records import RunCollection, SelectionError, load_run_dirs, load_study
from reid.selection.report import render_text, write_reports


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reid.select",
        description="Rank training runs and write BEST_MODEL_SELECTION.{txt,md,csv,png}. Rule: best mAP (or the "
                    "runs' own trainer.monitor when they share one); ties go to the higher rank-1, then to fewer "
                    "epochs trained. Failed, pruned and diverged runs are listed apart; damaged records are listed "
                    "with what is wrong.",
    )
    parser.add_argument("dirs", nargs="*", type=Path, metavar="DIR",
                        help="run, sweep or outputs directories, searched recursively for run records")
    parser.add_argument("--storage", help="an Optuna storage to read instead of (or besides) directories: a URL "
                                          "such as sqlite:///study.db, a .db file, or a .log/.journal journal file")
    parser.add_argument("--study", help="the study name in --storage (needed when it holds more than one)")
    parser.add_argument("--metric", choices=RANK_METRICS,
                        help="what ranks the runs (default: the trainer.monitor the runs recorded when they all "
                             "share one, else mAP; val_top1 exists for closed-set runs); the other figures break "
                             "ties")
    parser.add_argument("--out", type=Path, help="where to write the reports (default: the first DIR, or the "
                                                  "current directory with only --storage)")
    parser.add_argument("--quiet", action="store_true", help="print only the winner's path, not the whole report")
    return parser


@reports_user_errors("reid.select")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dirs and not args.storage:
        parser.error("give at least one DIR or --storage")
    if args.study and not args.storage:
        parser.error("--study needs --storage")
    try:
        collection = RunCollection()
        if args.storage:
            collection.extend(load_study(args.storage, args.study))
        if args.dirs:
            collection.extend(load_run_dirs(list(args.dirs)))
    except SelectionError as exc:
        parser.error(str(exc))
    if not len(collection):
        where = ", ".join(collection.sources)
        print(f"reid.select: no run records (model_info.json / training_history.json) found in {where}",
              file=sys.stderr)
        return 1
    metric = args.metric
    if metric is None:
        metric, note = default_metric(collection)
        if note:
            print(f"reid.select: {note}", file=sys.stderr)
    ranking = rank_runs(collection, metric)
    out_dir = args.out or (args.dirs[0] if args.dirs else Path.cwd())
    paths = write_reports(ranking, out_dir)
    if args.quiet:
        winner = ranking.winner
        print("no winner" if winner is None else winner.best_model or winner.label)
    else:
        print(render_text(ranking))
        print("Wrote " + ", ".join(str(path) for path in paths.values()))
    return 0 if ranking.winner is not None else 1


if __name__ == "__main__":
    sys.exit(main())
