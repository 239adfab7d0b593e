"""Naming why a run stalled, from its `training_history.json` and `model_info.json`, with the numbers that show it.

Each check looks for one pattern and returns a `Finding` only when the history shows it beyond a threshold, so a
healthy run gets no finding. Findings are ordered so the most likely fix comes first: a collapsed embedding or a
classifier that never left chance level masks everything else, so those lead; "train longer" comes last.
"""

from __future__ import annotations

import math
import shlex
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from reid.checkpoint import BEST_MODEL, atomic_write_text
from reid.engine.evaluator import CLASSIFICATION_MONITORS
from reid.engine.record import HISTORY_JSON, MODEL_INFO_JSON
from reid.selection.records import SelectionError, find_run_dirs, read_history, read_json, user_overrides

DIAGNOSIS_TXT = "PLATEAU_DIAGNOSIS.txt"
TRAIN = "python -m reid.train"

COLLAPSE = "embedding_collapse"
CE_AT_CHANCE = "ce_at_chance"
IMBALANCE = "loss_imbalance"
LR_DROPPED_EARLY = "lr_dropped_early"
OVERFITTING = "overfitting"
NEEDS_MORE_EPOCHS = "needs_more_epochs"
# Most likely fix first: later patterns are only trustworthy once the earlier ones are ruled out.
PRIORITY = (COLLAPSE, CE_AT_CHANCE, IMBALANCE, LR_DROPPED_EARLY, OVERFITTING, NEEDS_MORE_EPOCHS)
# The plateau sweep's named variants (reid.sweep.variants.plateau_variants) that test each finding's fix, the
# likeliest first (for a classifier stuck at chance: the largest LR increase first).
SWEEP_VARIANTS = {
    CE_AT_CHANCE: ("smaller_batch_higher_lr", "aggressive_lr_drop", "higher_lr"),
    IMBALANCE: ("heavy_triplet",),
    LR_DROPPED_EARLY: ("cosine_annealing",),
}


def _threshold(default: float | int, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Thresholds:
    """When a pattern counts as found; each field is a `reid.plateau` flag (`ce_epochs` -> `--ce-epochs`)."""

    ce_tolerance: float = _threshold(0.10, "CE counts as 'near ln(num_classes)' when it is above (1 - this) x "
                                           "ln(num_classes)")
    ce_epochs: int = _threshold(5, "CE must stay near ln(num_classes) for at least this many consecutive "
                                   "epochs to count as stuck")
    triplet_tolerance: float = _threshold(0.05, "the triplet loss counts as 'at its margin' within this fraction "
                                                "of the margin (ln 2 for the soft margin)")
    triplet_epochs: int = _threshold(5, "the triplet loss must stay at its margin for at least this many "
                                        "consecutive epochs to count as collapsed")
    imbalance_ratio: float = _threshold(30.0, "the losses are out of balance when the weighted CE term is this "
                                              "many times the weighted triplet term")
    imbalance_epochs: int = _threshold(3, "the loss balance is measured (median) over this many first epochs, "
                                          "before the triplet term shrinks as a healthy run learns")
    flat_evals: int = _threshold(4, "the monitored metric (the run's trainer.monitor, mAP by default) counts as "
                                    "flat when none of the last this-many evaluations beats the first of them by "
                                    "more than --flat-tolerance")
    flat_tolerance: float = _threshold(0.005, "the gain (absolute) of the monitored metric that still counts as flat")
    loss_drop: float = _threshold(0.10, "a flat monitored metric counts as overfitting when the training loss fell "
                                         "by at least this fraction over the same evaluations")
    lr_drop: float = _threshold(0.5, "an LR drop is an epoch whose LR is at most this fraction of the previous "
                                     "epoch's")
    settle_epochs: int = _threshold(3, "the loss had settled before a drop if it fell less than --settle-fall "
                                       "over this many epochs before it")
    settle_fall: float = _threshold(0.10, "the fraction of loss fall that means 'still falling'")
    improving_gain: float = _threshold(0.001, "still improving: the last evaluation beat every earlier one by at "
                                              "least this much of the monitored metric")

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type in (int, "int") and (not isinstance(value, int) or value < 1):
                raise ValueError(f"threshold {item.name}={value!r}: expected a whole number >= 1")
            if item.type in (float, "float") and (not isinstance(value, (int, float)) or not value >= 0):
                raise ValueError(f"threshold {item.name}={value!r}: expected a number >= 0")
        for name in ("ce_tolerance", "triplet_tolerance", "loss_drop", "lr_drop", "settle_fall"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"threshold {name}={getattr(self, name)!r}: expected a fraction between 0 and 1")
        if self.flat_evals < 2:
            raise ValueError(f"threshold flat_evals={self.flat_evals}: expected at least 2 evaluations")


@dataclass
class Fix:
    """Overrides that address a finding, and why."""

    overrides: list[str]
    why: str


@dataclass
class Finding:
    code: str
    title: str
    evidence: str
    meaning: str
    fixes: list[Fix]


@dataclass
class RunData:
    """The parts of a run record the checks read."""

    run_dir: Path
    history: list[dict[str, Any]]
    info: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def _section(self, name: str) -> dict[str, Any]:
        node = (self.info.get("hyperparameters") or {}).get(name)
        return node if isinstance(node, dict) else {}

    @property
    def loss(self) -> dict[str, Any]:
        return self._section("loss")

    @property
    def optimizer(self) -> dict[str, Any]:
        return self._section("optimizer")

    @property
    def scheduler(self) -> dict[str, Any]:
        return self._section("scheduler")

    @property
    def data(self) -> dict[str, Any]:
        return self._section("data")

    @property
    def overrides(self) -> list[str]:
        """The run's own overrides, without a sweeper's links to its study (a new run must not report there)."""
        return user_overrides(list(self.info.get("overrides") or []))

    @property
    def num_classes(self) -> int | None:
        dataset = self.info.get("dataset")
        return self.info.get("num_classes") or (dataset.get("num_classes") if isinstance(dataset, dict) else None)

    @property
    def max_epochs(self) -> int | None:
        return self.info.get("max_epochs")

    @property
    def monitor(self) -> str:
        """The metric that picked the run's best epoch (trainer.monitor; mAP for records from before it)."""
        monitor = self.info.get("monitor")
        return monitor if isinstance(monitor, str) and monitor else "mAP"

    def weight(self, term: str) -> float:
        """A loss term's weight; without a loss config, a term present in the history counts with weight 1."""
        value = self.loss.get(f"{term}_weight")
        if isinstance(value, (int, float)):
            return float(value)
        column = "loss_ce" if term == "ce" else "loss_tri"
        return 1.0 if any(row.get(column) is not None for row in self.history) else 0.0

    @property
    def lr(self) -> float | None:
        value = self.optimizer.get("lr")
        if isinstance(value, (int, float)):
            return float(value)
        lrs = [v for _, v in self.series("lr")]
        return max(lrs) if lrs else None

    def series(self, key: str) -> list[tuple[int, float]]:
        """(epoch, value) for every row with a finite `key`."""
        return [(row["epoch"], row[key]) for row in self.history
                if isinstance(row.get(key), float) and math.isfinite(row[key])]


# Settings the checks compute with, and the type each must have when present.
NUMBER = (int, float)
CHECKED_SETTINGS = (("num_classes", int), ("max_epochs", int), ("overrides", list), ("hyperparameters", dict),
                    ("hyperparameters.loss.ce_weight", NUMBER), ("hyperparameters.loss.triplet_weight", NUMBER),
                    ("hyperparameters.loss.margin", NUMBER), ("hyperparameters.optimizer.lr", NUMBER),
                    ("hyperparameters.optimizer.weight_decay", NUMBER))


def _check_settings(info: dict[str, Any], where: Path) -> None:
    """A clear error for a setting of the wrong type, instead of a crash deep inside a check."""
    for dotted, expected in CHECKED_SETTINGS:
        node: Any = info
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and (isinstance(node, bool) or not isinstance(node, expected)):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise SelectionError(f"{where}: {dotted}={node!r}: expected {names}")


def load_run(run_dir: Path) -> RunData:
    """Read and check a run's history and info; `SelectionError` says what is missing or malformed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SelectionError(f"{run_dir}: no such run directory")
    if not (run_dir / HISTORY_JSON).is_file():
        below = [path for path in find_run_dirs([run_dir]) if path != run_dir.resolve()]
        hint = (f"; run directories below it: {', '.join(str(p) for p in below[:5])}" if below
                else "; expected the directory of a run written by `python -m reid.train`")
        raise SelectionError(f"{run_dir}: no {HISTORY_JSON}{hint}")
    info = read_json(run_dir / MODEL_INFO_JSON)
    if not isinstance(info, dict):
        raise SelectionError(f"{run_dir / MODEL_INFO_JSON}: expected a JSON object, found a {type(info).__name__}")
    _check_settings(info, run_dir / MODEL_INFO_JSON)
    read_json(run_dir / HISTORY_JSON)
    history, notes = read_history(run_dir)
    if not history:
        raise SelectionError(f"{run_dir / HISTORY_JSON}: no usable epoch yet ({'; '.join(notes) or 'empty list'})")
    return RunData(run_dir=run_dir, history=history, info=info, notes=notes)


def _longest_streak(run: RunData, key: str, inside: Callable[[float], bool]) -> list[tuple[int, float]]:
    """The longest run of consecutive history rows whose finite `key` satisfies `inside`."""
    best: list[tuple[int, float]] = []
    current: list[tuple[int, float]] = []
    for row in run.history:
        value = row.get(key)
        if isinstance(value, float) and math.isfinite(value) and inside(value):
            current.append((row["epoch"], value))
            if len(current) > len(best):
                best = list(current)
        else:
            current = []
    return best


def _span(points: list[tuple[int, float]], digits: int = 2) -> str:
    low, high = min(v for _, v in points), max(v for _, v in points)
    return f"{low:.{digits}f}" if f"{low:.{digits}f}" == f"{high:.{digits}f}" else f"{low:.{digits}f}-{high:.{digits}f}"


def _epochs(points: list[tuple[int, float]]) -> str:
    return f"epochs {points[0][0]}-{points[-1][0]}"


def _g(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 else f"{value:.2e}"


def check_ce_at_chance(run: RunData, t: Thresholds) -> Finding | None:
    classes = run.num_classes
    if run.weight("ce") <= 0 or not isinstance(classes, int) or classes < 2:
        return None
    chance = math.log(classes)
    streak = _longest_streak(run, "loss_ce", lambda ce: ce >= (1 - t.ce_tolerance) * chance)
    if len(streak) < t.ce_epochs:
        return None
    last_epoch = run.history[-1]["epoch"]
    still = " and it is still there at the last epoch" if streak[-1][0] == last_epoch else ""
    lr = run.lr
    evidence = (f"CE stayed at {_span(streak)} for {len(streak)} consecutive epochs ({_epochs(streak)}){still}, "
                f"while ln({classes}) = {chance:.2f} is the CE of a classifier guessing uniformly among {classes} "
                f"identities (threshold: above {(1 - t.ce_tolerance) * chance:.2f} for {t.ce_epochs}+ epochs).")
    meaning = ("The classifier is not learning; typically the learning rate is too low"
               + (f" (optimizer.lr={lr:g})." if lr else "."))
    fixes = [Fix([f"optimizer.lr={lr * 10:g}"], "ten times the learning rate")] if lr else []
    return Finding(CE_AT_CHANCE, f"CE near ln(num_classes) for {len(streak)} epochs: the classifier is not learning",
                   evidence, meaning, fixes)


def check_embedding_collapse(run: RunData, t: Thresholds) -> Finding | None:
    if run.weight("triplet") <= 0:
        return None
    soft = bool(run.loss.get("soft_margin", False))
    margin = math.log(2) if soft else run.loss.get("margin")
    if not isinstance(margin, (int, float)) or margin <= 0:
        return None
    streak = _longest_streak(run, "loss_tri", lambda tri: abs(tri - margin) <= t.triplet_tolerance * margin)
    if len(streak) < t.triplet_epochs:
        return None
    what = "ln 2, the soft-margin loss at zero distance gap" if soft else f"its margin {margin:g}"
    evidence = (f"The triplet loss sat at {_span(streak, 3)} for {len(streak)} consecutive epochs ({_epochs(streak)}), "
                f"equal to {what} (within {t.triplet_tolerance:.0%}): the hardest positive and the hardest negative "
                "are equally far from each anchor.")
    meaning = ("The embeddings have collapsed: every image gets (nearly) the same embedding, so nothing can be "
               "retrieved. Usual causes: a learning rate too high for the triplet loss, or a triplet loss without "
               "a CE term.")
    fixes = []
    if run.lr:
        fixes.append(Fix([f"optimizer.lr={run.lr / 10:g}"], "a tenth of the learning rate"))
    if run.weight("ce") <= 0:
        fixes.append(Fix(["loss.ce_weight=1.0"], "add the identity CE term, which spreads identities apart"))
    return Finding(COLLAPSE, "Triplet loss stuck at its margin: the embeddings have collapsed", evidence, meaning,
                   fixes)


def check_loss_imbalance(run: RunData, t: Thresholds) -> Finding | None:
    ce_weight, tri_weight = run.weight("ce"), run.weight("triplet")
    if ce_weight <= 0 or tri_weight <= 0:
        return None
    rows = [row for row in run.history
            if all(isinstance(row.get(k), float) and math.isfinite(row[k]) for k in ("loss_ce", "loss_tri"))]
    rows = rows[: t.imbalance_epochs]
    if not rows:
        return None
    ce = statistics.median(row["loss_ce"] for row in rows)
    tri = statistics.median(row["loss_tri"] for row in rows)
    ce_term, tri_term = ce_weight * ce, tri_weight * tri
    ratio = ce_term / tri_term if tri_term > 0 else math.inf
    if ratio < t.imbalance_ratio:
        return None
    span = f"epochs {rows[0]['epoch']}-{rows[-1]['epoch']}" if len(rows) > 1 else f"epoch {rows[0]['epoch']}"
    times = "infinitely" if math.isinf(ratio) else f"{ratio:.0f}x"
    evidence = (f"Over {span} the weighted CE term was {_g(ce_term)} ({ce_weight:g} x {_g(ce)}) and the weighted "
                f"triplet term {_g(tri_term)} ({tri_weight:g} x {_g(tri)}): CE is {times} larger "
                f"(threshold {t.imbalance_ratio:g}x).")
    meaning = ("The losses are out of balance: the CE gradient dominates and the triplet term barely shapes the "
               "embedding that retrieval uses.")
    if tri_term > 0:
        fixes = [Fix([f"loss.triplet_weight={tri_weight * ratio / 10:.2g}"],
                     "brings the weighted terms to about 10:1 at the start, as in the usual CE + triplet baseline")]
    else:
        margin = float(run.loss.get("margin") or 0.3)
        fixes = [Fix([f"loss.margin={2 * margin:g}"], "a wider margin, so the triplet term is not zero from the start")]
    return Finding(IMBALANCE, "CE far larger than the weighted triplet term: the losses are out of balance",
                   evidence, meaning, fixes)


def _is_improving(run: RunData, t: Thresholds) -> tuple[tuple[int, float], tuple[int, float]] | None:
    """(last evaluation, best earlier one) when the last evaluation beat every earlier one by the gain threshold."""
    evals = run.series(run.monitor)
    if len(evals) < 2:
        return None
    prior = max(evals[:-1], key=lambda point: point[1])
    return (evals[-1], prior) if evals[-1][1] - prior[1] >= t.improving_gain else None


def check_overfitting(run: RunData, t: Thresholds) -> Finding | None:
    name = run.monitor
    evals = run.series(name)
    if len(evals) < t.flat_evals or _is_improving(run, t):
        return None
    window = evals[-t.flat_evals:]
    start_epoch, start_value = window[0]
    gain = max(value for _, value in window[1:]) - start_value
    if gain > t.flat_tolerance:
        return None
    losses = dict(run.series("loss"))
    last_epoch = max(losses) if losses else None
    if start_epoch not in losses or last_epoch is None or losses[start_epoch] <= 0:
        return None
    fall = (losses[start_epoch] - losses[last_epoch]) / losses[start_epoch]
    if fall < t.loss_drop:
        return None
    best_epoch, best_value = max(evals, key=lambda point: point[1])
    evidence = (f"{name} did not improve over the last {t.flat_evals} evaluations (epochs {start_epoch}-"
                f"{window[-1][0]}: {start_value:.4f} -> {window[-1][1]:.4f}, best gain {gain:+.4f}, threshold "
                f"{t.flat_tolerance:g}), while the training loss still fell {fall:.0%} ({losses[start_epoch]:.3f} -> "
                f"{losses[last_epoch]:.3f} by epoch {last_epoch}).")
    held_out = ("classifying their held-out images" if name in CLASSIFICATION_MONITORS
                else "retrieving unseen ones")
    meaning = (f"The model is overfitting: it keeps fitting the training identities without {held_out} "
               f"any better. {BEST_MODEL} keeps the best epoch ({best_epoch}, {name} {best_value:.4f}).")
    decay = run.optimizer.get("weight_decay")
    fixes = [Fix([f"optimizer.weight_decay={decay * 5:g}" if isinstance(decay, (int, float)) and decay > 0
                  else "optimizer.weight_decay=0.0005"], "stronger weight decay")]
    if run.data.get("augment") is False:
        fixes.append(Fix(["data.augment=true"], "flip, pad + crop and random erasing"))
    elif run.data.get("random_erasing_prob") == 0:
        fixes.append(Fix(["data.random_erasing_prob=0.5"], "random erasing"))
    if run.weight("ce") > 0 and run.loss.get("label_smoothing") == 0:
        fixes.append(Fix(["loss.label_smoothing=0.1"], "label smoothing"))
    return Finding(OVERFITTING, f"{name} flat for {t.flat_evals} evaluations while the loss still falls: overfitting",
                   evidence, meaning, fixes)


def check_lr_dropped_early(run: RunData, t: Thresholds) -> Finding | None:
    rows = [row for row in run.history
            if all(isinstance(row.get(k), float) and math.isfinite(row[k]) for k in ("lr", "loss"))]
    for index in range(1, len(rows)):
        before, now = rows[index - 1]["lr"], rows[index]["lr"]
        if before <= 0 or now > t.lr_drop * before:
            continue
        first = max(0, index - 1 - t.settle_epochs)
        if index - 1 - first < 1 or rows[first]["loss"] <= 0:
            continue
        start, end = rows[first], rows[index - 1]
        fall = (start["loss"] - end["loss"]) / start["loss"]
        if fall < t.settle_fall:
            continue
        evidence = (f"The LR dropped from {before:.2e} to {now:.2e} at epoch {rows[index]['epoch']} while the loss "
                    f"was still falling: {fall:.0%} over the {index - 1 - first} epochs before it (epoch "
                    f"{start['epoch']}: {start['loss']:.3f} -> epoch {end['epoch']}: {end['loss']:.3f}; settled "
                    f"means less than {t.settle_fall:.0%}).")
        meaning = ("The schedule cut the learning rate before the loss settled, so the rest of the run took small "
                   "steps from a point it had not yet reached.")
        return Finding(LR_DROPPED_EARLY, "The LR schedule dropped before the loss settled", evidence, meaning,
                       _later_schedule(run))
    return None


def _later_schedule(run: RunData) -> list[Fix]:
    milestones = run.scheduler.get("milestones")
    fixes = []
    if str(run.scheduler.get("_target_", "")).endswith("MultiStepLR") and isinstance(milestones, list) and milestones:
        later = ",".join(str(2 * int(m)) for m in milestones)
        fixes.append(Fix([f"scheduler.milestones=[{later}]"], "the LR drops twice as late"))
    fixes.append(Fix(["scheduler=cosine"], "a smooth cosine decay instead of steps"))
    return fixes


def check_needs_more_epochs(run: RunData, t: Thresholds) -> Finding | None:
    improving = _is_improving(run, t)
    if improving is None:
        return None
    (epoch, value), (prior_epoch, prior) = improving
    of = f" of {run.max_epochs}" if run.max_epochs else ""
    evidence = (f"{run.monitor} was still rising at the last evaluation: {value:.4f} at epoch {epoch}{of}, "
                f"{value - prior:+.4f} "
                f"over the best before it ({prior:.4f} at epoch {prior_epoch}; threshold {t.improving_gain:g}).")
    epochs = run.max_epochs or run.history[-1]["epoch"]
    return Finding(NEEDS_MORE_EPOCHS, "Still improving at the last epoch: the run simply needs more epochs",
                   evidence, "Nothing is wrong; the run ended before it converged.",
                   [Fix([f"trainer.max_epochs={2 * epochs}"], "twice the epochs")])


CHECKS: dict[str, Callable[[RunData, Thresholds], Finding | None]] = {
    COLLAPSE: check_embedding_collapse,
    CE_AT_CHANCE: check_ce_at_chance,
    IMBALANCE: check_loss_imbalance,
    LR_DROPPED_EARLY: check_lr_dropped_early,
    OVERFITTING: check_overfitting,
    NEEDS_MORE_EPOCHS: check_needs_more_epochs,
}


def with_overrides(base: list[str], extra: list[str]) -> list[str]:
    """`base` with `extra` applied: an extra override replaces the base one of the same key, in place."""
    def key(item: str) -> str:
        return item.partition("=")[0].lstrip("+~")

    extra_by_key = {key(item): item for item in extra}
    merged = [extra_by_key.pop(key(item), item) for item in base]
    return merged + list(extra_by_key.values())


def command(overrides: list[str], multirun: bool = False) -> str:
    head = f"{TRAIN} --multirun sweep=plateau" if multirun else TRAIN
    return " ".join([head, *(shlex.quote(item) for item in overrides)])


@dataclass
class Diagnosis:
    run: RunData
    thresholds: Thresholds
    findings: list[Finding]

    @property
    def healthy(self) -> bool:
        return not self.findings

    @property
    def codes(self) -> list[str]:
        return [finding.code for finding in self.findings]

    def next_command(self) -> str | None:
        """The plateau sweep; a plain 'train longer' when more epochs is the only finding; None when healthy."""
        if self.healthy:
            return None
        if self.codes == [NEEDS_MORE_EPOCHS]:
            return command(with_overrides(self.run.overrides, self.findings[0].fixes[0].overrides))
        return command(self.run.overrides, multirun=True)

    def sweep_variants(self) -> list[str]:
        """The plateau sweep's variants that test the findings' fixes, most likely first."""
        names = [name for code in self.codes for name in SWEEP_VARIANTS.get(code, ())]
        return list(dict.fromkeys(names))

    def fix_commands(self) -> list[tuple[str, str]]:
        """One single-run command per fix, most likely fix first, with why."""
        return [(command(with_overrides(self.run.overrides, fix.overrides)), f"{finding.code}: {fix.why}")
                for finding in self.findings for fix in finding.fixes]

    def render(self) -> str:
        run, info = self.run, self.run.info
        lines = ["PLATEAU DIAGNOSIS", "=================", f"Run: {run.run_dir.resolve()}"]
        status = info.get("status")
        reason = info.get("stopping_reason") if isinstance(info.get("stopping_reason"), dict) else {}
        if status == "running":
            lines.append(f"Status: still running at epoch {run.history[-1]['epoch']}: findings are provisional.")
        elif reason.get("message"):
            lines.append(f"Stopped: {reason['message']}")
        best = info.get("best_value", info.get("best_map"))
        finite = isinstance(best, (int, float)) and not isinstance(best, bool) and math.isfinite(best)
        best_text = f"; best {run.monitor} {best:.4f} at epoch {info.get('best_epoch')}" if finite else ""
        of = f" of {run.max_epochs}" if run.max_epochs else ""
        lines.append(f"Epochs: {run.history[-1]['epoch']}{of}{best_text}")
        if isinstance(run.num_classes, int) and run.num_classes > 1:
            lines.append(f"Identities: {run.num_classes} (ln {run.num_classes} = {math.log(run.num_classes):.2f})")
        lines.append(f"Overrides: {' '.join(run.overrides) or '(none)'}")
        lines += [f"Note: {note}" for note in run.notes]
        lines.append("")
        if self.healthy:
            lines += ["Findings: none. The run looks healthy: no plateau pattern crossed its threshold "
                      "(see `python -m reid.plateau --help`).", "",
                      f"Next command: none needed; deploy {run.run_dir.resolve() / BEST_MODEL}.", ""]
            return "\n".join(lines)
        lines.append("Findings, most likely fix first:")
        for number, finding in enumerate(self.findings, start=1):
            lines += [f"{number}. {finding.title}", f"   Evidence: {finding.evidence}",
                      f"   Meaning: {finding.meaning}"]
            lines += [f"   Try: {' '.join(fix.overrides)} ({fix.why})" for fix in finding.fixes]
            lines.append("")
        if self.codes == [NEEDS_MORE_EPOCHS]:
            lines += ["Next command (train longer):", f"  {self.next_command()}", ""]
        else:
            lines += ["Next command (the plateau sweep):", f"  {self.next_command()}"]
            variants = self.sweep_variants()
            if variants:
                lines.append(f"  Its variants that test these fixes, most likely first: {', '.join(variants)} "
                             "(`python -m reid.select` on the sweep directory names each trial's variant).")
            lines += ["", "Or one fix at a time, most likely first:"]
            lines += [f"  {cmd}    # {why}" for cmd, why in self.fix_commands()]
            lines.append("")
        return "\n".join(lines)


def diagnose(run: RunData, thresholds: Thresholds | None = None) -> Diagnosis:
    """Run every check; the findings come back in `PRIORITY` order."""
    thresholds = thresholds or Thresholds()
    findings = [finding for code in PRIORITY if (finding := CHECKS[code](run, thresholds)) is not None]
    return Diagnosis(run, thresholds, findings)


def write_diagnosis(diagnosis: Diagnosis) -> Path:
    path = diagnosis.run.run_dir / DIAGNOSIS_TXT
    atomic_write_text(path, diagnosis.render())
    return path
