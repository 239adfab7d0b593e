"""Ranking runs by their own `model_info.json` figures, and explaining the result in words.

The rule: the higher best mAP wins; a tie goes to the higher rank-1, then to fewer epochs trained (cheaper to
reproduce), then to the lower best epoch, then to the run name, so the order is total and repeatable. `rank1`,
`mINP` and `val_top1` (closed-set runs) can lead instead of mAP; mAP then breaks their ties. By default the runs'
own `trainer.monitor` leads when they all share one. Every figure is the one recorded at the run's best epoch (the
one its monitor picked), i.e. what its `best_model.pth` delivers. Failed, pruned and diverged runs never take part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from reid.config import flatten_config
from reid.selection.records import (
    BOOKKEEPING_PREFIXES,
    FAILED_KINDS,
    SAMPLED,
    DamagedRecord,
    RunCollection,
    RunSummary,
)

RANK_METRICS = ("mAP", "rank1", "mINP", "val_top1")
# After the leading metric, these decide ties, in order.
TIE_BREAKS = {"mAP": ("rank1",), "rank1": ("mAP",), "mINP": ("mAP", "rank1"), "val_top1": ("mAP", "rank1")}
METRIC_NAMES = {"mAP": "mAP", "rank1": "rank-1", "rank5": "rank-5", "mINP": "mINP", "val_top1": "val_top1"}
MAX_VARIANT_KEYS = 4


def default_metric(collection: RunCollection) -> tuple[str, str | None]:
    """The metric to rank by when none is asked for: the runs' own `trainer.monitor` when they all share one that
    can rank, else mAP; plus a note saying why when that choice was not obvious."""
    monitors = sorted({run.monitor for run in collection.runs})
    if len(monitors) == 1 and monitors[0] in RANK_METRICS:
        return monitors[0], None
    if not monitors:
        return "mAP", None
    return "mAP", (f"the runs were monitored on {', '.join(monitors)}: ranked by mAP; choose with --metric "
                   f"({'|'.join(RANK_METRICS)})")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _descending(value: float | None) -> float:
    value = _finite(value)
    return -value if value is not None else math.inf


def sort_key(run: RunSummary, metric: str = "mAP") -> tuple[Any, ...]:
    """Smaller sorts first: the leading metric, its tie-breaks (higher first), then fewer epochs, then names."""
    figures = [_descending(run.metric(name)) for name in (metric, *TIE_BREAKS[metric])]
    epochs = run.epochs_trained if run.epochs_trained is not None else math.inf
    best_epoch = run.best_epoch if run.best_epoch is not None else math.inf
    return (*figures, epochs, best_epoch, run.label)


def failure_reason(run: RunSummary, metric: str = "mAP") -> str | None:
    """Why a run is out of the ranking for good (failed, pruned, diverged), or None."""
    kind = run.stop_kind if run.stop_kind in FAILED_KINDS else run.status if run.status in FAILED_KINDS else None
    if kind is not None:
        message = run.stop_message or kind
        return message if message.startswith(kind) else f"{kind}: {message}"
    for name in dict.fromkeys(("mAP", metric)):
        value = run.metric(name)
        if value is not None and not math.isfinite(value):
            return f"diverged: best {METRIC_NAMES[name]} is {value}"
    return None


def pending_reason(run: RunSummary, metric: str = "mAP") -> str | None:
    """Why a run cannot be ranked yet (no figure for the metric), or None."""
    if run.metric(metric) is not None:
        return None
    if run.best_map is None:
        return "running: no evaluation finished yet" if run.in_progress else "no evaluation recorded"
    return f"no {METRIC_NAMES[metric]} recorded"


def parse_override(item: str) -> tuple[str, str]:
    """`key=value` of a Hydra override, without its `+`/`++`/`~` prefix."""
    key, _, value = item.partition("=")
    return key.lstrip("+~"), value


def _differing(settings: list[dict[str, Any]]) -> list[str]:
    keys = [key for key in dict.fromkeys(key for setting in settings for key in setting)
            if not key.startswith(BOOKKEEPING_PREFIXES)]
    return [key for key in keys if len({repr(setting.get(key, "<unset>")) for setting in settings}) > 1]


def _short(value: Any) -> str:
    """A value as a label shows it: long floats (sampled ones) to 4 significant digits, e.g. 0.001516."""
    text = str(value)
    if len(text) > 7 and any(c in text for c in ".eE"):
        try:
            return f"{float(text):.4g}"
        except ValueError:
            return text
    return text


def _label(setting: dict[str, Any], keys: list[str]) -> str:
    parts = [f"{key}={_short(setting[key])}" for key in keys if key in setting]
    if len(parts) > MAX_VARIANT_KEYS:
        parts = parts[:MAX_VARIANT_KEYS] + [f"(+{len(parts) - MAX_VARIANT_KEYS} more)"]
    return " ".join(parts) or "(base)"


def variant_labels(runs: list[RunSummary]) -> dict[int, str]:
    """Each run's variant: its recorded name, else the overrides that differ among the compared runs (also shown
    for trials the sweep's sampler chose, named "sampled: ...").

    When the overrides do not tell runs apart (e.g. runs launched with different presets), the resolved
    hyperparameters that differ are used instead. Keyed by `id(run)`.
    """
    labels: dict[int, str] = {}
    if len(runs) < 2:
        return {id(run): run.variant or "-" for run in runs}
    overrides = [dict(parse_override(item) for item in run.overrides) for run in runs]
    keys = _differing(overrides)
    settings = overrides
    if not keys:
        settings = [flatten_config(run.hyperparameters) for run in runs]
        keys = _differing(settings)
    for run, setting in zip(runs, settings):
        differing = _label(setting, keys) if keys else "(same config)"
        if run.variant == SAMPLED:
            labels[id(run)] = f"{SAMPLED}: {differing}"
        else:
            labels[id(run)] = run.variant or differing
    return labels


@dataclass
class Ranking:
    """The runs in order, and everything left out with the reason."""

    metric: str
    ranked: list[RunSummary]
    failed: list[tuple[RunSummary, str]] = field(default_factory=list)
    pending: list[tuple[RunSummary, str]] = field(default_factory=list)
    damaged: list[DamagedRecord] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    variants: dict[int, str] = field(default_factory=dict)

    @property
    def winner(self) -> RunSummary | None:
        return self.ranked[0] if self.ranked else None

    @property
    def runner_up(self) -> RunSummary | None:
        return self.ranked[1] if len(self.ranked) > 1 else None

    def variant(self, run: RunSummary) -> str:
        return self.variants.get(id(run), run.variant or "-")

    def all_runs(self) -> list[RunSummary]:
        return self.ranked + [run for run, _ in self.failed] + [run for run, _ in self.pending]


def rank_runs(collection: RunCollection, metric: str = "mAP") -> Ranking:
    """Sort the usable runs under the rule; set the failed and not-yet-evaluated ones apart."""
    if metric not in RANK_METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {', '.join(RANK_METRICS)}")
    ranking = Ranking(metric=metric, ranked=[], damaged=list(collection.damaged), sources=list(collection.sources))
    for run in collection.runs:
        failed = failure_reason(run, metric)
        pending = None if failed else pending_reason(run, metric)
        if failed:
            ranking.failed.append((run, failed))
        elif pending:
            ranking.pending.append((run, pending))
        else:
            ranking.ranked.append(run)
    ranking.ranked.sort(key=lambda run: sort_key(run, metric))
    ranking.failed.sort(key=lambda item: item[0].label)
    ranking.pending.sort(key=lambda item: item[0].label)
    ranking.variants = variant_labels(ranking.all_runs())
    return ranking


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _digits(a: float | None, b: float | None) -> int:
    """Enough decimals (4 to 8) to show that two different figures differ."""
    digits = 4
    while a is not None and b is not None and a != b and _fmt(a, digits) == _fmt(b, digits) and digits < 8:
        digits += 1
    return digits


def why_winner(ranking: Ranking) -> str:
    """One sentence: which rule decided the winner."""
    winner, runner_up, metric = ranking.winner, ranking.runner_up, ranking.metric
    if winner is None:
        return "No run could be ranked."
    name = METRIC_NAMES[metric]
    if runner_up is None:
        return f"It is the only ranked run (best {name} {_fmt(winner.metric(metric))})."
    count = len(ranking.ranked)
    mine, theirs = winner.metric(metric), runner_up.metric(metric)
    if mine != theirs:
        digits = _digits(mine, theirs)
        return (f"It has the highest best {name} ({_fmt(mine, digits)}; runner-up {_fmt(theirs, digits)}) of the "
                f"{count} ranked runs.")
    tied = [name]
    for tie_metric in TIE_BREAKS[metric]:
        mine, theirs = winner.metric(tie_metric), runner_up.metric(tie_metric)
        if mine != theirs:
            digits = _digits(mine, theirs)
            return (f"It ties with {runner_up.label} on {' and '.join(tied)} and wins on "
                    f"{METRIC_NAMES[tie_metric]} ({_fmt(mine, digits)} vs {_fmt(theirs, digits)}).")
        tied.append(METRIC_NAMES[tie_metric])
    if winner.epochs_trained != runner_up.epochs_trained:
        return (f"It ties with {runner_up.label} on {' and '.join(tied)} and wins on fewer epochs trained "
                f"({winner.epochs_trained} vs {runner_up.epochs_trained}).")
    if winner.best_epoch != runner_up.best_epoch:
        return (f"It ties with {runner_up.label} on {' and '.join(tied)} and epochs trained, and wins on an earlier "
                f"best epoch ({winner.best_epoch} vs {runner_up.best_epoch}).")
    return f"It ties with {runner_up.label} on every figure; the run name decided ({winner.label} sorts first)."


def margin_text(ranking: Ranking) -> str:
    """How far the winner is ahead of the runner-up, on the ranking metric and the other headline figures."""
    winner, runner_up, metric = ranking.winner, ranking.runner_up, ranking.metric
    if winner is None:
        return "No winner."
    if runner_up is None:
        return "There is no runner-up to compare with."
    mine, theirs = winner.metric(metric) or 0.0, runner_up.metric(metric) or 0.0
    if mine == theirs:
        parts = [f"Level with the runner-up ({runner_up.label}) on {METRIC_NAMES[metric]} ({_fmt(mine)} each); "
                 "the tie-break decided (see above)."]
    else:
        digits = _digits(mine, theirs)
        relative = ""
        if theirs > 0:
            percent = 100 * (mine - theirs) / theirs
            relative = f", {percent:.1f}% relative" if percent >= 0.1 else f", {percent:.2g}% relative"
        parts = [f"Ahead of the runner-up ({runner_up.label}) by {_fmt(mine - theirs, digits)} {METRIC_NAMES[metric]} "
                 f"({_fmt(mine, digits)} vs {_fmt(theirs, digits)}{relative})."]
    others = []
    for name in ("mAP", "rank1", "rank5"):
        if name == metric:
            continue
        a, b = _finite(winner.metric(name)), _finite(runner_up.metric(name))
        if a is not None and b is not None:
            others.append(f"{METRIC_NAMES[name]} {_fmt(a)} vs {_fmt(b)} ({a - b:+.4f})")
    if others:
        parts.append("Also: " + ", ".join(others) + ".")
    return " ".join(parts)


def improvement_text(run: RunSummary) -> str:
    """Whether the run was still improving when it stopped, i.e. whether more epochs may pay."""
    evaluated = run.evaluations()
    last_eval = evaluated[-1][0] if evaluated else None
    trained = f"{run.epochs_trained} of {run.max_epochs}" if run.max_epochs else f"{run.epochs_trained}"
    if run.in_progress:
        return (f"It is still running (epoch {trained} so far); its figures may still change. "
                "Rerun this command when it has finished.")
    if run.still_improving:
        return (f"Yes: its best {run.monitor} came at its last evaluation (epoch {run.best_epoch}; trained {trained} "
                "epochs), so more epochs may pay: raise trainer.max_epochs.")
    if run.still_improving is False:
        since = f" up to epoch {last_eval}" if last_eval is not None else ""
        return f"No: its best {run.monitor} came at epoch {run.best_epoch}; later evaluations{since} did not beat it."
    return "Unknown: its record has no evaluation history to tell."
