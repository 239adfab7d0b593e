"""The sweep's search space: Hydra override grammar (`choice`, `range`, `interval`, `tag(log, ...)`) to Optuna.

The grammar is the stock hydra-optuna-sweeper's, so its sweep files work unchanged, with one correction:
`range(start, stop, step)` keeps Hydra's meaning, `stop` excluded, as in a basic multirun.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from reid.errors import ConfigError


@dataclass
class SearchSpace:
    """Swept keys with their distributions, and the fixed `key=value` overrides every trial gets."""

    distributions: dict[str, BaseDistribution]
    fixed: list[str]

    def grid(self) -> dict[str, list[Any]]:
        """Every swept key's values, for the grid sampler, which can only enumerate finite spaces."""
        grid: dict[str, list[Any]] = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step is not None and not dist.log:
                count = int(round((Decimal(str(dist.high)) - Decimal(str(dist.low))) / Decimal(str(dist.step)))) + 1
                grid[key] = [_step_value(dist.low, dist.step, i, isinstance(dist, IntDistribution))
                             for i in range(count)]
            else:
                raise ConfigError(f"hydra.sweeper.params.{key}: the grid sampler needs choice(...) or range(...), "
                                  f"got the continuous {dist}")
        return grid


def _step_value(start: float, step: float, index: int, integer: bool) -> int | float:
    value = Decimal(str(start)) + Decimal(str(step)) * index
    return int(value) if integer else float(value)


def _range_distribution(key: str, override: Override, value: RangeSweep) -> BaseDistribution:
    if value.shuffle:
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    count = len(list(override.sweep_iterator(transformer=Transformer.identity)))
    if count == 0:
        raise ConfigError(f"{override.input_line} is empty (Hydra's range excludes stop)")
    integer = all(isinstance(v, int) and not isinstance(v, bool) for v in (value.start, value.stop, value.step))
    step = abs(value.step)
    # The lowest value is `start` going up, the last value reached going down.
    first = value.start if value.step > 0 else _step_value(value.start, value.step, count - 1, integer)
    return (IntDistribution(int(first), int(_step_value(first, step, count - 1, True)), step=int(step)) if integer
            else FloatDistribution(float(first), float(_step_value(first, step, count - 1, False)), step=float(step)))


def to_distribution(key: str, override: Override) -> BaseDistribution:
    """One sweep override as an Optuna distribution; a clear error for grammar Optuna cannot search."""
    value = override.value()
    if override.is_choice_sweep() and isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        return _range_distribution(key, override, value)
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        unknown = set(value.tags) - {"log"}
        if unknown:
            raise ConfigError(f"{key}: unknown tag(s) {sorted(unknown)} on interval; the only tag understood is log")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"{override.input_line}: expected a fixed value, choice(...), "
                      "range(...), interval(...), int(interval(...)) or tag(log, interval(...))")


def parse_search_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> SearchSpace:
    """`hydra.sweeper.params` merged with the command line's overrides; the command line wins per key."""
    parser = OverridesParser.create()
    merged: dict[str, Override] = {}
    file_overrides = [f"{key}={value}" for key, value in (params or {}).items()]
    for text in [*file_overrides, *arguments]:
        try:
            override = parser.parse_override(text)
        except Exception as exc:
            raise ConfigError(f"cannot parse sweep parameter {text!r}: {exc}") from exc
        merged[override.get_key_element()] = override
    distributions: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for key, override in merged.items():
        if override.is_sweep_override():
            distributions[key] = to_distribution(key, override)
        else:
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    return SearchSpace(distributions, fixed)
