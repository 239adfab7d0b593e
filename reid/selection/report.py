"""The BEST_MODEL_SELECTION files: .txt for a person, .md for a wiki or PR, .csv for pandas, .png for the curves.

Everything is rendered in memory first and then each file is replaced atomically, so a rerun never leaves a
half-written report or a mix of old and new files behind a failure in rendering.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd

from reid.checkpoint import atomic_write, atomic_write_text
from reid.selection.pareto import PARETO_STEM, ParetoFront, direction_label, pareto_front, render_pareto_plot
from reid.selection.ranking import METRIC_NAMES, TIE_BREAKS, Ranking, improvement_text, margin_text, why_winner
from reid.selection.records import RunSummary

REPORT_STEM = "BEST_MODEL_SELECTION"
NO_MODEL_PATH = "This run is known only from the Optuna study; the location of its best_model.pth was not recorded."
TABLE_COLUMNS = ("rank", "run", "variant", "mAP", "R1", "R5", "best epoch", "epochs", "stopping reason", "time")
NUMERIC_COLUMNS = {"rank", "mAP", "R1", "R5", "best epoch", "epochs", "time", *METRIC_NAMES.values()}
FIGURE_COLUMNS = {"mAP": "mAP", "rank1": "R1", "rank5": "R5"}
CSV_COLUMNS = ("rank", "group", "run", "variant", "status", "monitor", "mAP", "rank1", "rank5", "rank10", "mINP",
               "val_top1", "val_top5", "val_loss", "best_epoch", "epochs_trained", "max_epochs", "stopping_reason",
               "stopping_message", "training_seconds", "still_improving", "winner", "trial", "run_dir", "best_model",
               "problems")


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _stop_column(run: RunSummary) -> str:
    if run.in_progress:
        return "running"
    return run.stop_kind or run.status


def _epochs(run: RunSummary) -> str:
    if run.epochs_trained is None:
        return "-"
    return f"{run.epochs_trained}/{run.max_epochs}" if run.max_epochs else str(run.epochs_trained)


def table_columns(metric: str) -> tuple[str, ...]:
    """`TABLE_COLUMNS`, with the ranking metric's own column before mAP when the table would not show it."""
    if metric in FIGURE_COLUMNS:
        return TABLE_COLUMNS
    index = TABLE_COLUMNS.index("mAP")
    return (*TABLE_COLUMNS[:index], METRIC_NAMES[metric], *TABLE_COLUMNS[index:])


def table_rows(ranking: Ranking) -> list[dict[str, str]]:
    """The comparison table of ranked runs, as display strings keyed by `table_columns(ranking.metric)`."""
    return [
        {
            "rank": str(position),
            "run": run.label,
            "variant": ranking.variant(run),
            METRIC_NAMES[ranking.metric]: _figure(run.metric(ranking.metric)),
            "mAP": _figure(run.best_map),
            "R1": _figure(run.metric("rank1")),
            "R5": _figure(run.metric("rank5")),
            "best epoch": "-" if run.best_epoch is None else str(run.best_epoch),
            "epochs": _epochs(run),
            "stopping reason": _stop_column(run),
            "time": format_duration(run.training_seconds),
        }
        for position, run in enumerate(ranking.ranked, start=1)
    ]


def _objective_figure(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def pareto_header(front: ParetoFront) -> tuple[str, ...]:
    return ("run", "variant", *front.names, "backbone", "input size")


def pareto_rows(front: ParetoFront, ranking: Ranking) -> list[dict[str, str]]:
    """The front's runs (best first objective first) with their objectives, backbone and input size."""
    rows = []
    for run in front.front:
        backbone = run.hyperparameters.get("backbone")
        data = run.hyperparameters.get("data")
        size = f"{data.get('height')}x{data.get('width')}" if isinstance(data, dict) and "height" in data else "-"
        rows.append({"run": run.label, "variant": ranking.variant(run),
                     **{name: _objective_figure(run.objectives[name]) for name in front.names},
                     "backbone": str(backbone.get("model_name", "-")) if isinstance(backbone, dict) else "-",
                     "input size": size})
    return rows


def pareto_title(front: ParetoFront) -> str:
    objectives = " against ".join(direction_label(name, direction)
                                  for name, direction in zip(front.names, front.directions))
    return (f"Pareto front: {len(front.front)} of {len(front.candidates)} run(s) that no other run beats in every "
            f"objective; {objectives}")


def deployment_snippet(best_model: Path) -> list[str]:
    """Two lines of Python that load the winner (its file records its architecture) and embed one image."""
    return [
        "from reid.inference import FeatureExtractor",
        f'embedding = FeatureExtractor({str(best_model)!r})("person.jpg")',
    ]


def next_commands(best_model: Path) -> list[str]:
    """The commands that score, show and export the winner, each writing beside it."""
    return [
        f"python -m reid.evaluate model={best_model}    # its figures and per-query APs; flip=true rerank=true",
        f"python -m reid.visualize model={best_model}   # what it retrieves, worst queries first",
        f"python -m reid.export model={best_model}      # ONNX for onnxruntime (format=torchscript)",
    ]


def _distance_hint(run: RunSummary) -> str:
    data = run.hyperparameters.get("data")
    distance = data.get("distance") if isinstance(data, dict) else None
    return (f"the run was evaluated by {distance or 'euclidean'} distance between unnormalised embeddings "
            "(reid.evaluate reproduces its figures).")


def rule_text(metric: str) -> str:
    ties = ", then to the higher ".join(METRIC_NAMES[name] for name in TIE_BREAKS[metric])
    return (f"best {METRIC_NAMES[metric]} (at each run's best epoch, that of its best_model.pth); ties go to the "
            f"higher {ties}, "
            "then to fewer epochs trained")


def _counts(ranking: Ranking) -> str:
    return (f"{len(ranking.ranked)} ranked, {len(ranking.failed)} failed/pruned/diverged, "
            f"{len(ranking.pending)} not yet evaluated, {len(ranking.damaged)} damaged")


def _winner_facts(run: RunSummary) -> str:
    figures = ", ".join(f"{METRIC_NAMES.get(name, name)} {_figure(run.metric(name))}"
                        for name in ("mAP", "rank1", "rank5", "mINP", "val_top1", "val_top5")
                        if run.metric(name) is not None)
    at = f" at epoch {run.best_epoch}" if run.best_epoch is not None else ""
    trained = f"trained {_epochs(run)} epochs; " if run.epochs_trained is not None else ""
    return f"{figures}{at} ({trained}{_stop_column(run)})"


def _fixed_width(header: tuple[str, ...], rows: list[dict[str, str]], indent: str = "  ") -> list[str]:
    widths = {column: max([len(column)] + [len(row[column]) for row in rows]) for column in header}

    def line(cells: dict[str, str]) -> str:
        parts = [cells[c].rjust(widths[c]) if c in NUMERIC_COLUMNS else cells[c].ljust(widths[c]) for c in header]
        return (indent + "  ".join(parts)).rstrip()

    return [line({c: c for c in header}), indent + "  ".join("-" * widths[c] for c in header)] + [line(r) for r in rows]


def _left_out_group(run: Any) -> str:
    """"pruned" or "diverged" when that is how the run ended, else "failed"."""
    return run.stop_kind if run.stop_kind in ("pruned", "diverged") else "failed"


def _excluded_rows(ranking: Ranking) -> list[dict[str, str]]:
    rows = []
    for pending, items in ((False, ranking.failed), (True, ranking.pending)):
        for run, reason in items:
            finite = run.best_map is not None and math.isfinite(run.best_map)
            group = "not yet ranked" if pending else _left_out_group(run)
            rows.append({"run": run.label, "variant": ranking.variant(run), "group": group, "reason": reason,
                         "best mAP so far": _figure(run.best_map if finite else None)})
    return rows


def _notes(ranking: Ranking) -> list[str]:
    return [f"{run.label}: {note}" for run in ranking.all_runs() for note in run.notes]


def render_text(ranking: Ranking) -> str:
    winner = ranking.winner
    lines = ["BEST MODEL SELECTION", "====================", ""]
    lines += [f"Runs read from: {source}" for source in ranking.sources]
    lines += [f"Ranked by: {rule_text(ranking.metric)}.", f"Runs: {_counts(ranking)}.", ""]
    if winner is None:
        lines += ["NO WINNER: no run has a finite figure to rank by (see the lists below).", ""]
    else:
        lines += [f"WINNER: {winner.label}", f"  {why_winner(ranking)}", f"  Run directory: {winner.path or '-'}",
                  f"  Variant: {ranking.variant(winner)}", f"  {_winner_facts(winner)}", "",
                  "Comparison", *_fixed_width(table_columns(ranking.metric), table_rows(ranking)), "",
                  "Lead over the runner-up", f"  {margin_text(ranking)}", "",
                  "Still improving when it stopped?", f"  {improvement_text(winner)}", "",
                  "Deployment"]
        if winner.best_model is not None:
            lines += [f"  Best model: {winner.best_model}", "  Score it, look at it, export it:"]
            lines += [f"    {line}" for line in next_commands(winner.best_model)]
            lines.append("  Embed an image in Python (loaded with weights_only=True: no pickled code runs):")
            lines += [f"    {line}" for line in deployment_snippet(winner.best_model)]
            lines.append(f"  `embedding` is an L2-normalised (1, feature_dim) tensor; {_distance_hint(winner)}")
        else:
            lines.append(f"  {NO_MODEL_PATH}")
        lines.append("")
    front = pareto_front(ranking.ranked)
    if front is not None:
        lines += [pareto_title(front), *_fixed_width(pareto_header(front), pareto_rows(front, ranking)), ""]
    excluded = _excluded_rows(ranking)
    if excluded:
        lines += ["Not ranked (failed, pruned, diverged, or no evaluation yet)",
                  *_fixed_width(("run", "variant", "group", "best mAP so far", "reason"), excluded), ""]
    if ranking.damaged:
        lines.append("Damaged or partial records (skipped)")
        lines += [f"  {record.label} ({record.path}): {'; '.join(record.problems)}" for record in ranking.damaged]
        lines.append("")
    notes = _notes(ranking)
    if notes:
        lines += ["Notes", *[f"  {note}" for note in notes], ""]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: tuple[str, ...], rows: list[dict[str, str]]) -> list[str]:
    align = ["---:" if column in NUMERIC_COLUMNS else "---" for column in header]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(row[column]) for column in header) + " |" for row in rows]
    return lines


def render_markdown(ranking: Ranking) -> str:
    winner = ranking.winner
    lines = ["# Best model selection", ""]
    lines += [f"- Runs read from: `{source}`" for source in ranking.sources]
    lines += [f"- Ranked by: {rule_text(ranking.metric)}.", f"- Runs: {_counts(ranking)}.", ""]
    if winner is None:
        lines += ["**No winner:** no run has a finite figure to rank by (see the lists below).", ""]
    else:
        lines += [f"## Winner: `{winner.label}`", "", why_winner(ranking), "",
                  f"- Run directory: `{winner.path or '-'}`", f"- Variant: `{ranking.variant(winner)}`",
                  f"- {_winner_facts(winner)}", "", "## Comparison", "",
                  *_md_table(table_columns(ranking.metric), table_rows(ranking)),
                  "", "## Lead over the runner-up", "", margin_text(ranking), "",
                  "## Still improving when it stopped?", "", improvement_text(winner), "", "## Deployment", ""]
        if winner.best_model is not None:
            lines += [f"Best model: `{winner.best_model}`", "", "Score it, look at it, export it:", "", "```bash",
                      *next_commands(winner.best_model), "```", "",
                      "Embed an image (`weights_only=True`: no pickled code runs):", "", "```python",
                      *deployment_snippet(winner.best_model), "```", "",
                      f"`embedding` is an L2-normalised (1, feature_dim) tensor; {_distance_hint(winner)}", ""]
        else:
            lines += [NO_MODEL_PATH, ""]
    front = pareto_front(ranking.ranked)
    if front is not None:
        lines += ["## Pareto front", "", f"{pareto_title(front)}.", "",
                  *_md_table(pareto_header(front), pareto_rows(front, ranking)), "",
                  f"![Pareto front]({PARETO_STEM}.png)", ""]
    excluded = _excluded_rows(ranking)
    if excluded:
        lines += ["## Not ranked (failed, pruned, diverged, or no evaluation yet)", "",
                  *_md_table(("run", "variant", "group", "best mAP so far", "reason"), excluded), ""]
    if ranking.damaged:
        lines += ["## Damaged or partial records (skipped)", ""]
        lines += [f"- `{record.label}` (`{record.path}`): {'; '.join(record.problems)}" for record in ranking.damaged]
        lines.append("")
    notes = _notes(ranking)
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def results_frame(ranking: Ranking) -> pd.DataFrame:
    """One row per run (ranked, left out, damaged), in rank order."""
    positions = {id(run): position for position, run in enumerate(ranking.ranked, start=1)}
    reasons = {id(run): reason for run, reason in ranking.failed + ranking.pending}
    groups = {id(run): _left_out_group(run) for run, _ in ranking.failed} | {id(run): "pending"
                                                                          for run, _ in ranking.pending}
    rows: list[dict[str, Any]] = []
    for run in ranking.all_runs():
        rows.append({
            "rank": positions.get(id(run)),
            "group": groups.get(id(run), "ranked"),
            "run": run.label,
            "variant": ranking.variant(run),
            "status": run.status,
            "monitor": run.monitor,
            "mAP": run.best_map,
            **{name: run.metric(name) for name in ("rank1", "rank5", "rank10", "mINP", "val_top1", "val_top5",
                                                   "val_loss")},
            "best_epoch": run.best_epoch,
            "epochs_trained": run.epochs_trained,
            "max_epochs": run.max_epochs,
            "stopping_reason": _stop_column(run),
            "stopping_message": reasons.get(id(run), run.stop_message),
            "training_seconds": run.training_seconds,
            "still_improving": run.still_improving,
            "winner": run is ranking.winner,
            "trial": run.trial_number,
            "run_dir": str(run.path) if run.path else None,
            "best_model": str(run.best_model) if run.best_model else None,
            "problems": "; ".join(run.notes) or None,
        })
    for record in ranking.damaged:
        rows.append({"group": "damaged", "run": record.label, "winner": False, "run_dir": str(record.path),
                     "problems": "; ".join(record.problems)})
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    for column in ("rank", "best_epoch", "epochs_trained", "max_epochs", "trial"):
        frame[column] = frame[column].astype("Int64")
    front = pareto_front(ranking.ranked)
    if front is not None:
        runs = ranking.all_runs()
        frame["pareto_front"] = [front.on_front(run) for run in runs] + [False] * len(ranking.damaged)
        for name in (name for name in front.names if name not in frame.columns):
            frame[name] = [run.objectives.get(name) for run in runs] + [None] * len(ranking.damaged)
    return frame


def render_plot(ranking: Ranking) -> bytes:
    """The ranking metric per epoch of every run on one figure, the winner drawn thick and named; PNG bytes (Agg
    backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9, 5.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    winner, metric = ranking.winner, ranking.metric
    name = METRIC_NAMES[metric]
    failed = {id(run) for run, _ in ranking.failed}
    drawn = 0
    for run in ranking.all_runs():
        points = [(epoch, value) for epoch, value in run.evaluations(metric) if math.isfinite(value)]
        if not points or run is winner:
            continue
        axes.plot(*zip(*points), marker=".", linewidth=1.1, alpha=0.6, linestyle="--" if id(run) in failed else "-",
                  label=run.label)
        drawn += 1
    if winner is not None and winner.evaluations(metric):
        points = [(epoch, value) for epoch, value in winner.evaluations(metric) if math.isfinite(value)]
        axes.plot(*zip(*points), marker="o", linewidth=3.0, color="crimson", zorder=10,
                  label=f"winner: {winner.label}")
        best = winner.metric(metric)
        if winner.best_epoch is not None and best is not None:
            axes.annotate(f"best {best:.4f}", (winner.best_epoch, best),
                          textcoords="offset points", xytext=(0, 8), ha="center", color="crimson")
        drawn += 1
    if drawn:
        handles, labels = axes.get_legend_handles_labels()
        if len(labels) > 12:
            handles, labels = handles[-1:], labels[-1:]
        axes.legend(handles, labels, fontsize="small", loc="best")
    else:
        axes.text(0.5, 0.5, "no evaluation recorded yet", ha="center", va="center", transform=axes.transAxes)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.margins(y=0.12)
    axes.set_xlabel("epoch")
    axes.set_ylabel(name)
    axes.set_title(f"{name} per epoch, {drawn} run(s); winner highlighted")
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_reports(ranking: Ranking, out_dir: Path) -> dict[str, Path]:
    """Render all four files (and PARETO_FRONT.png for runs with several objectives), then replace each atomically;
    returns their paths by suffix (`pareto_png` for the front's plot)."""
    out_dir = Path(out_dir)
    text = render_text(ranking)
    markdown = render_markdown(ranking)
    csv_text = results_frame(ranking).to_csv(index=False, lineterminator="\n")
    png = render_plot(ranking)
    front = pareto_front(ranking.ranked)
    pareto_png = render_pareto_plot(front) if front is not None else None
    paths = {suffix: out_dir / f"{REPORT_STEM}.{suffix}" for suffix in ("txt", "md", "csv", "png")}
    atomic_write_text(paths["txt"], text)
    atomic_write_text(paths["md"], markdown)
    atomic_write_text(paths["csv"], csv_text)
    atomic_write(paths["png"], lambda handle: handle.write(png))
    if pareto_png is not None:
        paths["pareto_png"] = out_dir / f"{PARETO_STEM}.png"
        atomic_write(paths["pareto_png"], lambda handle: handle.write(pareto_png))
    return paths
