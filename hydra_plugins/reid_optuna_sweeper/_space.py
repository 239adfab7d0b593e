"""The sweep's search space: Hydra override grammar (`choice`, `range`, `interval`, `tag(log, ...)`) to Optuna.

The grammar and its meaning are the stock hydra-optuna-sweeper's, so its sweep files work unchanged:
`range(start, stop, step)` becomes a stepped distribution from `start` up to and including `stop` (the last
value the steps reach), while the grid sampler enumerates Hydra's own values of the sweep, `stop` excluded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.reid_optuna_sweeper._errors import SweepConfigError


@dataclass
class SearchSpace:
    """Swept keys with their distributions, and the fixed overrides (`key=value`, `~key`) every trial gets.

    `grid_values` holds the values Hydra's basic sweeper would run for each `choice`/`range` key; a continuous
    key has none, which only matters for the grid sampler.
    """

    distributions: dict[str, BaseDistribution]
    fixed: list[str]
    grid_values: dict[str, list[Any]] = field(default_factory=dict)

    def grid(self) -> dict[str, list[Any]]:
        """Every swept key's values, for the grid sampler, which can only enumerate finite spaces."""
        continuous = [key for key in self.distributions if key not in self.grid_values]
        if continuous:
            raise SweepConfigError(f"hydra.sweeper.params.{continuous[0]}: the grid sampler needs choice(...) or "
                                   f"range(...), got the continuous {self.distributions[continuous[0]]}")
        return {key: list(self.grid_values[key]) for key in self.distributions}


def _decimal(value: float) -> Decimal:
    return Decimal(str(value))


def _range_distribution(override: Override, value: RangeSweep) -> BaseDistribution:
    if value.shuffle:
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    start, stop, step = _decimal(value.start), _decimal(value.stop), _decimal(value.step)
    if step == 0 or (stop - start) * step < 0:
        raise SweepConfigError(f"{override.input_line} is empty: its step never leads from start to stop")
    last = start + step * int((stop - start) / step)
    low, high = min(start, last), max(start, last)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (value.start, value.stop, value.step)):
        return IntDistribution(int(low), int(high), step=int(abs(step)))
    return FloatDistribution(float(low), float(high), step=float(abs(step)))


def to_distribution(override: Override) -> BaseDistribution:
    """One sweep override as an Optuna distribution; a clear error for grammar Optuna cannot search."""
    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep() and isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        return _range_distribution(override, value)
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        unknown = set(value.tags) - {"log"}
        if unknown:
            raise SweepConfigError(f"{key}: unknown tag(s) {sorted(unknown)} on interval; the only tag understood "
                                   "is log")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise SweepConfigError(f"{override.input_line}: expected a fixed value, choice(...), "
                           "range(...), interval(...), int(interval(...)) or tag(log, interval(...))")


def _bare_key(override: Override) -> str:
    """The config key an override acts on, without `+`, `++` or `~`: the command line replaces the file per key."""
    return f"{override.package}@{override.key_or_group}" if override.package else override.key_or_group


def parse_search_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> SearchSpace:
    """`hydra.sweeper.params` merged with the command line's overrides; the command line wins per key."""
    parser = OverridesParser.create()
    merged: dict[str, Override] = {}
    file_overrides = [f"{key}={value}" for key, value in (params or {}).items()]
    for text in [*file_overrides, *arguments]:
        try:
            override = parser.parse_override(text)
        except Exception as exc:
            raise SweepConfigError(f"cannot parse sweep parameter {text!r}: {exc}") from exc
        merged.pop(_bare_key(override), None)
        merged[_bare_key(override)] = override
    space = SearchSpace(distributions={}, fixed=[])
    for override in merged.values():
        if not override.is_sweep_override():
            space.fixed.append(override.input_line)
            continue
        key = override.get_key_element()
        space.distributions[key] = to_distribution(override)
        if override.is_choice_sweep() or override.is_range_sweep():
            space.grid_values[key] = list(override.sweep_iterator(transformer=Transformer.encode))
    return space
