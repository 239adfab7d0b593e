"""The sweep grammar, the plugin's config groups and the plateau variants, without training."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from reid.config import register_configs
from reid.errors import ConfigError
from reid.sweep.driver import variant_trial
from reid.sweep.space import parse_search_space
from reid.sweep.variants import build_variants, plateau_variants


def test_grammar_maps_to_optuna_distributions() -> None:
    space = parse_search_space(
        {"a": "choice(x, y)", "b": "range(1, 5)", "c": "range(0.1, 0.5, 0.1)", "d": "tag(log, interval(1e-5, 1e-2))",
         "e": "interval(0.2, 1.0)", "f": "int(interval(2, 9))", "g": "tag(log, int(interval(1, 64)))",
         "h": "range(10, 0, -3)", "fixed": "7"}, [])
    d = space.distributions
    assert d["a"] == CategoricalDistribution(("x", "y"))
    # Hydra's range excludes stop: range(1, 5) is 1..4, range(0.1, 0.5, 0.1) is 0.1..0.4, range(10, 0, -3) 1..10.
    assert d["b"] == IntDistribution(1, 4, step=1)
    assert d["c"] == FloatDistribution(0.1, 0.4, step=0.1)
    assert d["h"] == IntDistribution(1, 10, step=3)
    assert d["d"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert d["e"] == FloatDistribution(0.2, 1.0)
    assert d["f"] == IntDistribution(2, 9)
    assert d["g"] == IntDistribution(1, 64, log=True)
    assert space.fixed == ["fixed=7"]
    grid = parse_search_space({"a": "choice(x, y)", "c": "range(0.1, 0.5, 0.1)", "h": "range(10, 0, -3)"}, []).grid()
    assert grid == {"a": ["x", "y"], "c": [0.1, 0.2, 0.3, 0.4], "h": [1, 4, 7, 10]}


def test_command_line_wins_over_the_sweep_file() -> None:
    space = parse_search_space({"data.p": "choice(2, 4, 8)", "optimizer.lr": "interval(1e-4, 1e-2)"},
                               ["data.p=choice(16)", "optimizer.lr=0.001", "+loss.after_steps=choice(1, 9)"])
    assert space.distributions["data.p"] == CategoricalDistribution((16,))
    assert "optimizer.lr" not in space.distributions
    assert space.fixed == ["optimizer.lr=0.001"]
    assert space.distributions["+loss.after_steps"] == CategoricalDistribution((1, 9))


@pytest.mark.parametrize("params, message", [
    ({"x": "range(5, 5)"}, "is empty"),
    ({"x": "glob(*)"}, "expected a fixed value, choice"),
    ({"x": "tag(linear, interval(0, 1))"}, "unknown tag"),
])
def test_bad_grammar_names_the_key(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        parse_search_space(params, [])
    assert "x" in str(error.value)


def test_grid_needs_a_finite_space() -> None:
    with pytest.raises(ConfigError, match="hydra.sweeper.params.lr: the grid sampler needs"):
        parse_search_space({"lr": "interval(0.1, 1)"}, []).grid()


def _hydra_cfg(*overrides: str):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("group, option, target", [
    ("sampler", "tpe", "optuna.samplers.TPESampler"), ("sampler", "random", "optuna.samplers.RandomSampler"),
    ("sampler", "cmaes", "optuna.samplers.CmaEsSampler"), ("sampler", "grid", "optuna.samplers.GridSampler"),
    ("sampler", "nsgaii", "optuna.samplers.NSGAIISampler"), ("pruner", "median", "optuna.pruners.MedianPruner"),
    ("pruner", "percentile", "optuna.pruners.PercentilePruner"),
    ("pruner", "hyperband", "optuna.pruners.HyperbandPruner"),
    ("pruner", "successive_halving", "optuna.pruners.SuccessiveHalvingPruner"),
    ("pruner", "none", "optuna.pruners.NopPruner"),
])
def test_samplers_and_pruners_are_config_groups(group: str, option: str, target: str) -> None:
    from hydra.utils import instantiate

    cfg = _hydra_cfg("sweep=plateau", f"hydra/sweeper/{group}={option}")
    node = cfg.hydra.sweeper[group]
    assert node._target_ == target
    if option != "grid":
        assert type(instantiate(node)).__name__ == target.rsplit(".", 1)[1]


def test_plateau_sweep_composes_with_defaults() -> None:
    cfg = _hydra_cfg("sweep=plateau", "experiment=smoke")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.reid_optuna_sweeper.sweeper.ReidOptunaSweeper"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    # Measured on the plateau demo (docs/benchmarks.md): judge from epoch 2, against the first finished trial on.
    assert (sweeper.pruner.n_startup_trials, sweeper.pruner.n_warmup_steps) == (1, 2)
    assert sweeper.variants == "plateau" and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"optimizer.lr", "loss.ce_weight", "loss.triplet_weight", "scheduler", "data.p",
                                   "data.k"}


def test_plateau_variants_follow_the_base_config(compose_config) -> None:
    cfg = compose_config("optimizer.lr=4e-4", "trainer.max_epochs=120", "scheduler.warmup_epochs=10")
    variants = {v.name: v.changes for v in plateau_variants(cfg)}
    assert list(variants) == ["higher_lr", "cosine_annealing", "heavy_triplet", "aggressive_lr_drop",
                              "smaller_batch_higher_lr"]
    assert variants["higher_lr"] == {"optimizer.lr": pytest.approx(8e-4)}
    assert variants["cosine_annealing"]["scheduler"] == "cosine"
    assert variants["cosine_annealing"]["scheduler.warmup_epochs"] == 10
    assert variants["heavy_triplet"] == {"loss.ce_weight": 0.3, "loss.triplet_weight": 2.0}
    assert variants["aggressive_lr_drop"]["scheduler.milestones"] == [20, 50]
    assert variants["aggressive_lr_drop"]["optimizer.lr"] > 8e-4
    small = variants["smaller_batch_higher_lr"]
    assert small["data.p"] * small["data.k"] == 8 and small["optimizer.lr"] == 1e-3
    short = {v.name: v.changes for v in plateau_variants(compose_config("trainer.max_epochs=24"))}
    assert short["aggressive_lr_drop"]["scheduler.milestones"] == [4, 10]


def test_variant_values_outside_the_space_become_plain_overrides(compose_config) -> None:
    cfg = compose_config("optimizer.lr=1e-6")
    space = parse_search_space({"optimizer.lr": "tag(log, interval(1e-5, 3e-3))", "data.p": "choice(2, 4)"}, [])
    higher, *_, small = plateau_variants(cfg)
    params, attrs = variant_trial(higher, space)
    assert params == {} and attrs["extra_overrides"] == ["optimizer.lr=2e-06"]
    params, attrs = variant_trial(small, space)
    assert params == {"data.p": 2, "optimizer.lr": 1e-3}
    assert attrs == {"variant": "smaller_batch_higher_lr", "fixed_keys": ["data.p", "optimizer.lr"],
                     "extra_overrides": ["data.k=4"]}


def test_unknown_variant_set_and_bad_base_are_named(compose_config) -> None:
    with pytest.raises(ConfigError, match=r"hydra.sweeper.variants='nope': expected one of \['plateau'\]"):
        build_variants("nope", compose_config())
    with pytest.raises(ConfigError, match="optimizer.lr=0"):
        plateau_variants(compose_config("optimizer.lr=0"))


@pytest.mark.parametrize("overrides", [["hydra.sweeper.heartbeat_interval=0"],
                                       ["hydra.sweeper.heartbeat_interval=900", "hydra.sweeper.grace_period=600"]])
def test_heartbeat_settings_are_checked(overrides: list[str]) -> None:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = _hydra_cfg("sweep=plateau", *overrides)
    with pytest.raises(InstantiationException, match=r"hydra.sweeper.heartbeat_interval=.*expected 0 < "
                                                     r"heartbeat_interval < grace_period \(seconds\)"):
        instantiate(cfg.hydra.sweeper)
