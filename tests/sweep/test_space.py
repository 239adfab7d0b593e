"""The sweep grammar, the plugin's config groups and the plateau variants, without training."""

from __future__ import annotations

import optuna
import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.reid_optuna_sweeper import SweepConfigError
from hydra_plugins.reid_optuna_sweeper._space import parse_search_space
from hydra_plugins.reid_optuna_sweeper._variants import variant_trial
from reid.config import register_configs
from reid.errors import ConfigError
from reid.sweep.variants import plateau_variants


@pytest.mark.parametrize("override, expected", [
    # The stock hydra-optuna-sweeper's ten cases: range's distribution includes stop, as there.
    ("key=choice(1,2)", CategoricalDistribution([1, 2])),
    ("key=choice(true, false)", CategoricalDistribution([True, False])),
    ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
    ("key=shuffle(range(1,3))", CategoricalDistribution((1, 2))),
    ("key=range(1,3)", IntDistribution(1, 3)),
    ("key=interval(1, 5)", FloatDistribution(1, 5)),
    ("key=int(interval(1, 5))", IntDistribution(1, 5)),
    ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
    ("key=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
    ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1)),
    # Steps that miss stop end at the last value reached; a falling range is the same set.
    ("key=range(0, 10, 3)", IntDistribution(0, 9, step=3)),
    ("key=range(10, 0, -3)", IntDistribution(1, 10, step=3)),
    ("key=range(0.1, 0.45, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
])
def test_grammar_maps_to_optuna_distributions(override: str, expected) -> None:
    distribution = parse_search_space(None, [override]).distributions["key"]
    if isinstance(expected, CategoricalDistribution):
        assert set(distribution.choices) == set(expected.choices)  # shuffle() reorders
    else:
        assert distribution == expected


@pytest.mark.parametrize("overrides, distributions, fixed", [
    (["key=choice(1,2)"], {"key": CategoricalDistribution([1, 2])}, []),
    (["key=5"], {}, ["key=5"]),
    (["key1=choice(1,2)", "key2=5", "key3=range(1,3)"],
     {"key1": CategoricalDistribution([1, 2]), "key3": IntDistribution(1, 3)}, ["key2=5"]),
    (["~z"], {}, ["~z"]),
    (["~z=10"], {}, ["~z=10"]),
])
def test_fixed_and_delete_overrides_stay_out_of_the_search(overrides: list, distributions: dict, fixed: list) -> None:
    space = parse_search_space(None, overrides)
    assert space.distributions == distributions
    assert space.fixed == fixed


def test_grid_takes_hydras_values_stop_excluded() -> None:
    grid = parse_search_space({"a": "choice(x, y)", "c": "range(0.5, 2.5, 0.5)", "h": "range(10, 0, -3)",
                               "y": "range(-1.0, 1.0, step=1)"}, []).grid()
    assert grid == {"a": ["x", "y"], "c": [0.5, 1.0, 1.5, 2.0], "h": [10, 7, 4, 1], "y": [-1.0, 0.0]}


def test_command_line_wins_over_the_sweep_file() -> None:
    space = parse_search_space({"data.p": "choice(2, 4, 8)", "optimizer.lr": "interval(1e-4, 1e-2)"},
                               ["data.p=choice(16)", "optimizer.lr=0.001", "+loss.after_steps=choice(1, 9)"])
    assert space.distributions["data.p"] == CategoricalDistribution((16,))
    assert "optimizer.lr" not in space.distributions
    assert space.fixed == ["optimizer.lr=0.001"]
    assert space.distributions["+loss.after_steps"] == CategoricalDistribution((1, 9))


@pytest.mark.parametrize("params, message", [
    ({"x": "range(5, 1)"}, "is empty"),
    ({"x": "glob(*)"}, "expected a fixed value, choice"),
    ({"x": "tag(linear, interval(0, 1))"}, "unknown tag"),
])
def test_bad_grammar_names_the_key(params: dict, message: str) -> None:
    with pytest.raises(SweepConfigError, match=message) as error:
        parse_search_space(params, [])
    assert "x" in str(error.value)


def test_grid_needs_a_finite_space() -> None:
    with pytest.raises(SweepConfigError, match="hydra.sweeper.params.lr: the grid sampler needs"):
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
    ("sampler", "nsgaii", "optuna.samplers.NSGAIISampler"), ("sampler", "gp", "optuna.samplers.GPSampler"),
    ("sampler", "qmc", "optuna.samplers.QMCSampler"), ("pruner", "median", "optuna.pruners.MedianPruner"),
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
    if option == "qmc":  # Optuna itself marks the QMC sampler experimental
        with pytest.warns(optuna.exceptions.ExperimentalWarning):
            assert type(instantiate(node)).__name__ == "QMCSampler"
    elif option != "grid":
        assert type(instantiate(node)).__name__ == target.rsplit(".", 1)[1]


def test_plateau_sweep_composes_with_defaults() -> None:
    cfg = _hydra_cfg("sweep=plateau", "experiment=smoke")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.reid_optuna_sweeper.sweeper.ReidOptunaSweeper"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    # Measured on the plateau demo (docs/benchmarks.md): judge from epoch 2, against the first finished trial on.
    assert (sweeper.pruner.n_startup_trials, sweeper.pruner.n_warmup_steps) == (1, 2)
    assert sweeper.variants._target_ == "reid.sweep.variants.plateau_variants"
    assert sweeper.job_outcome._target_ == "reid.sweep.outcome.run_outcome"
    assert sweeper.direction == "maximize"
    assert sweeper.study_name == "smoke-plateau"
    assert sweeper.storage == "outputs/smoke/optuna/smoke-plateau.journal"
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
    params, attrs = variant_trial(higher, space.distributions)
    assert params == {} and attrs["extra_overrides"] == ["optimizer.lr=2e-06"]
    params, attrs = variant_trial(small, space.distributions)
    assert params == {"data.p": 2, "optimizer.lr": 1e-3}
    assert attrs == {"variant": "smaller_batch_higher_lr", "fixed_keys": ["data.p", "optimizer.lr"],
                     "extra_overrides": ["data.k=4"]}


def test_a_bad_base_config_is_named(compose_config) -> None:
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
