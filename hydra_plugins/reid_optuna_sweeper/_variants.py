"""Named variants: hand-picked trials run once per study before the sampler's, built by the app's callable.

`hydra.sweeper.variants` names a callable (`_target_`) that gets the composed base config and returns a list
of `Variant`s, so the variants can be computed from the config the user starts from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import ListConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution


@dataclass(frozen=True)
class Variant:
    """A named trial: `changes` maps override keys (config keys or group names) to values."""

    name: str
    changes: dict[str, Any]


def format_value(value: Any) -> str:
    """A python value in Hydra override syntax."""
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def fits(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one `dist` can produce (so the variant can be enqueued as the trial's param)."""
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(dist, IntDistribution) and not float(value).is_integer():
        return False
    if not dist.low <= value <= dist.high:
        return False
    return dist.step is None or math.isclose(round((value - dist.low) / dist.step) * dist.step, value - dist.low,
                                              abs_tol=1e-12)


def variant_trial(variant: Variant, distributions: dict[str, BaseDistribution]) -> tuple[dict[str, Any],
                                                                                          dict[str, Any]]:
    """A variant as enqueue arguments: searched keys whose value fits become params, the rest plain overrides."""
    params = {k: v for k, v in variant.changes.items() if k in distributions and fits(distributions[k], v)}
    extra = [f"{k}={format_value(v)}" for k, v in variant.changes.items() if k not in params]
    return params, {"variant": variant.name, "fixed_keys": list(params), "extra_overrides": extra}
