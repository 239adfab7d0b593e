"""The Pareto front of runs that recorded several objectives (`trainer.objectives`, e.g. mAP against latency).

A run is on the front when no other run is at least as good in every objective and better in one, each objective
judged in its own direction (as the run record states it: accuracy higher, cost lower). Only ranked runs take part
(finished, not failed, pruned or diverged), and only those that have a finite value for every objective.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from reid.selection.records import RunSummary

PARETO_STEM = "PARETO_FRONT"


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether point `a` is at least as good as `b` in every objective and better in at least one."""
    signs = [1.0 if direction == "maximize" else -1.0 for direction in directions]
    at_least = all(sign * x >= sign * y for sign, x, y in zip(signs, a, b))
    return at_least and any(sign * x > sign * y for sign, x, y in zip(signs, a, b))


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates, in their given order (equal points all stay)."""
    return [i for i, point in enumerate(points)
            if not any(dominates(other, point, directions) for j, other in enumerate(points) if j != i)]


@dataclass
class ParetoFront:
    """The objectives (names and directions), the runs that have them all, and the non-dominated ones among them
    ordered by the first objective (best first)."""

    names: list[str]
    directions: list[str]
    candidates: list[RunSummary]
    front: list[RunSummary]

    def values(self, run: RunSummary) -> list[float]:
        return [run.objectives[name] for name in self.names]

    def on_front(self, run: RunSummary) -> bool:
        return any(run is member for member in self.front)


def pareto_front(runs: Sequence[RunSummary]) -> ParetoFront | None:
    """The front over `runs`, with the objectives of the first run that recorded two or more; None when none did."""
    first = next((run for run in runs if len(run.objectives) > 1), None)
    if first is None:
        return None
    names = list(first.objectives)
    directions = [first.objective_directions[name] for name in names]
    candidates = [run for run in runs
                  if all(isinstance(run.objectives.get(name), float) and math.isfinite(run.objectives[name])
                         for name in names)]
    points = [[run.objectives[name] for name in names] for run in candidates]
    front = [candidates[i] for i in non_dominated(points, directions)]
    sign = 1.0 if directions[0] == "maximize" else -1.0
    front.sort(key=lambda run: (-sign * run.objectives[names[0]], run.label))
    return ParetoFront(names, directions, candidates, front)


def direction_label(name: str, direction: str) -> str:
    return f"{name} ({'higher' if direction == 'maximize' else 'lower'} is better)"


def render_pareto_plot(front: ParetoFront) -> bytes:
    """The first two objectives of every candidate as a scatter, the front marked, connected and named; PNG bytes
    (Agg backend, 880 x 605 pixels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    x_name, y_name = front.names[:2]
    others = [run for run in front.candidates if not front.on_front(run)]
    if others:
        axes.scatter([run.objectives[x_name] for run in others], [run.objectives[y_name] for run in others],
                     color="grey", alpha=0.6, label="dominated")
    line = sorted(front.front, key=lambda run: (run.objectives[x_name], run.objectives[y_name]))
    xs, ys = [run.objectives[x_name] for run in line], [run.objectives[y_name] for run in line]
    axes.plot(xs, ys, color="crimson", linewidth=2.0, marker="o", markersize=8, zorder=10,
              label=f"Pareto front ({len(line)} run(s))")
    for run in line:
        axes.annotate(run.label, (run.objectives[x_name], run.objectives[y_name]), textcoords="offset points",
                      xytext=(6, 6), fontsize="small", color="crimson")
    axes.set_xlabel(direction_label(x_name, front.directions[0]))
    axes.set_ylabel(direction_label(y_name, front.directions[1]))
    extra = f"; also {', '.join(front.names[2:])}" if len(front.names) > 2 else ""
    axes.set_title(f"{y_name} against {x_name}: {len(front.candidates)} run(s){extra}")
    axes.legend(fontsize="small", loc="best")
    axes.grid(alpha=0.3)
    axes.margins(0.12)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


__all__ = ["PARETO_STEM", "ParetoFront", "dominates", "non_dominated", "pareto_front", "render_pareto_plot"]
