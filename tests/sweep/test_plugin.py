"""The sweeper as a plain Hydra plugin: the stock hydra-optuna-sweeper's contract, case by case, on small apps.

Every app runs in its own `python -Werror` process with the installed Optuna, so no deprecated or experimental
default may warn; none of them imports reid or torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.reid_optuna_sweeper import current_trial
from hydra_plugins.reid_optuna_sweeper._job import STORAGE_ENV, STUDY_ENV, TRIAL_ENV
from hydra_plugins.reid_optuna_sweeper._storage import open_storage
from hydra_plugins.reid_optuna_sweeper.sweeper import ReidOptunaSweeper

APPS = Path(__file__).resolve().parent / "apps"
PLUGIN = Path(ReidOptunaSweeper.__module__.replace(".", "/")).parent


def run_app(app: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -Werror <app> --multirun <args>` with the sweep directory in `cwd`."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-Werror", str(APPS / app), "--multirun", *args, f"hydra.sweep.dir={cwd}"],
                          cwd=cwd, capture_output=True, text=True, timeout=240)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def study(storage: str | Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(storage)))


def results(sweep_dir: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml"))


def test_discovery() -> None:
    assert ReidOptunaSweeper.__name__ in [plugin.__name__ for plugin in Plugins.instance().discover(Sweeper)]


def test_the_plugin_imports_only_hydra_omegaconf_optuna_and_the_standard_library() -> None:
    files = sorted((Path(__file__).resolve().parents[2] / PLUGIN).glob("*.py"))
    assert len(files) >= 10
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names == {"hydra", "omegaconf", "optuna", "hydra_plugins"}


def test_outside_a_sweep_there_is_no_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV):
        monkeypatch.delenv(name, raising=False)
    assert current_trial() is None


def test_empty_search_space_runs_n_trials_in_batches_and_sweep_returns_none(hydra_sweep_runner,
                                                                             tmp_path: Path) -> None:
    sweep = hydra_sweep_runner(calling_file=str(APPS / "sphere.py"), calling_module=None, task_function=None,
                               config_path="conf", config_name="sphere", temp_dir=tmp_path / "sweep",
                               overrides=["hydra/launcher=basic", "hydra.job.chdir=False", "hydra.sweeper.params=null",
                                          "hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=3"])
    with sweep:
        assert sweep.returns is None
        trials = study(tmp_path / "sweep" / "sphere.journal", "sphere").get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
        assert [t.value for t in trials] == [100.0] * 8 and all(t.params == {} for t in trials)


def test_example_sweep_tpe_on_sqlite_finds_the_minimum_without_torch(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/test.db"
    result = ok(run_app("sphere.py", ["hydra.job.chdir=True", "hydra.sweeper.n_trials=20", "hydra.sweeper.n_jobs=1",
                                      f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=example",
                                      "hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", "~z"], tmp_path))
    # The sweep process (which ran every job too, with the basic launcher) never imported torch or reid.
    assert "IMPORTED []" in result.stdout
    returns = results(tmp_path)
    best = study(storage, "example").best_trial
    assert returns["name"] == "optuna"
    assert returns["best_params"] == best.params and set(best.params) == {"x", "y"}
    assert returns["best_value"] == best.value
    # The stock plugin's threshold: the 95th percentile of TPE's best value over 1000 seeds.
    assert returns["best_value"] <= 2.27
    assert result.stdout.count(" z=<deleted> ") == 20


def test_fixed_and_delete_overrides_reach_every_job_outside_the_params(tmp_path: Path) -> None:
    storage = tmp_path / "fixed.journal"
    result = ok(run_app("sphere.py", ["hydra.sweeper.n_trials=4", f"hydra.sweeper.storage={storage}", "~z",
                                      "x=choice(0, 1, 2)", "y=0"], tmp_path))
    trials = study(storage, "sphere").get_trials()
    assert len(trials) == 4
    assert all(set(t.params) == {"x"} and t.params["x"] in (0, 1, 2) for t in trials)
    assert all(t.user_attrs["overrides"][:2] == ["~z", "y=0"] for t in trials)
    assert result.stdout.count(" y=0 z=<deleted> ") == 4
    assert "y" not in results(tmp_path)["best_params"]


def test_grid_runs_hydras_values_once_each_and_caps_n_trials(tmp_path: Path) -> None:
    storage = tmp_path / "grid.journal"
    ok(run_app("sphere.py", ["--config-name=grid", "hydra.sweeper.n_trials=20", f"hydra.sweeper.storage={storage}"],
               tmp_path))
    trials = study(storage, "grid").get_trials()
    # 2 x 2 x 2 points: range(-1.0, 1.0, step=1) is -1.0 and 0.0, stop excluded.
    assert sorted((t.params["x"], t.params["y"], t.params["z"]) for t in trials) == sorted(
        (x, y, z) for x in (-1, 1) for y in (-1.0, 0.0) for z in ("foo", "bar"))
    returns = results(tmp_path)
    assert returns["best_value"] == 1 and abs(returns["best_params"]["x"]) == 1 and returns["best_params"]["y"] == 0


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


@pytest.mark.parametrize("sampler", ["nsgaii", "random"])
def test_multi_objective_lists_the_pareto_front(tmp_path: Path, sampler: str) -> None:
    storage = tmp_path / "pareto.journal"
    ok(run_app("binh_korn.py", [f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.sampler.seed=123",
                                "hydra.sweeper.n_trials=10", f"hydra.sweeper.storage={storage}"], tmp_path))
    returns = results(tmp_path)
    assert returns["name"] == "optuna" and returns["direction"] == ["minimize", "minimize"]
    front = study(storage, "pareto").best_trials
    solutions = returns["solutions"]
    assert [(s["params"], s["values"]) for s in solutions] == [(t.params, t.values) for t in front]
    for a in solutions:
        assert a["params"]["x"] % 1 in (0, 0.5) and a["params"]["y"] % 1 in (0, 0.5)
        assert a["values"] == [4 * a["params"]["x"] ** 2 + 4 * a["params"]["y"] ** 2,
                               (a["params"]["x"] - 5) ** 2 + (a["params"]["y"] - 5) ** 2]
        assert not any(_dominates(b["values"], a["values"]) for b in solutions)


def test_custom_search_space_from_a_hyphenated_module_adds_params_after_the_config_ones(tmp_path: Path) -> None:
    storage = tmp_path / "custom.journal"
    ok(run_app("sphere.py", ["--config-name=custom", "hydra.sweeper.n_trials=10", "hydra.sweeper.sampler.seed=123",
                             f"hydra.sweeper.storage={storage}"], tmp_path))
    trials = study(storage, "custom").get_trials()
    assert len(trials) == 10
    for trial in trials:
        assert list(trial.params) == ["x", "y", "z", "+w"]
        assert abs(trial.params["x"] - trial.params["z"]) <= 0.3 and 0 <= trial.params["+w"] <= 1
        assert f"+w={trial.params['+w']}" in trial.user_attrs["overrides"]
        assert trial.value == pytest.approx(trial.params["x"] ** 2 + trial.params["y"] ** 2)
    best = results(tmp_path)["best_params"]
    assert abs(best["x"] - best["z"]) <= 0.3


@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_failure_rate(tmp_path: Path, max_failure_rate: float) -> None:
    result = run_app("sphere.py", ["hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra/sweeper/sampler=random",
                                   f"hydra.sweeper.max_failure_rate={max_failure_rate}", "error=true"], tmp_path)
    if max_failure_rate < 1.0:
        assert result.returncode != 0
        assert "RuntimeError: cfg.error is True" in result.stderr
        assert "4 failed trials exceed hydra.sweeper.max_failure_rate=0.5 of n_trials=4" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "RuntimeError: cfg.error is True" not in result.stderr
        assert [t.state for t in study(tmp_path / "sphere.journal", "sphere").get_trials()] == [TrialState.FAIL] * 4


def test_nan_inf_and_a_wrong_count_fail_with_the_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    storage = tmp_path / "bad.journal"
    ok(run_app("sphere.py", ["hydra/sweeper/sampler=grid", "hydra.sweeper.params=null", "x=1", "y=2",
                             "outcome=choice(nan_value,inf_value,pair,value)", "hydra.sweeper.max_failure_rate=1.0",
                             f"hydra.sweeper.storage={storage}"], tmp_path))
    trials = {t.params["outcome"]: t for t in study(storage, "sphere").get_trials()}
    assert trials["value"].state == TrialState.COMPLETE and trials["value"].value == 5
    assert {k: (t.state, t.user_attrs["fail_reason"]) for k, t in trials.items() if k != "value"} == {
        "nan_value": (TrialState.FAIL, "the job returned nan, which is not finite"),
        "inf_value": (TrialState.FAIL, "the job returned inf, which is not finite"),
        "pair": (TrialState.FAIL, "the job returned (1.0, 2.0); expected a number"),
    }


def test_a_job_prunes_itself_through_current_trial_and_a_resumed_study_keeps_n_trials(tmp_path: Path) -> None:
    storage = tmp_path / "prune.journal"
    args = ["hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra.sweeper.pruner.n_warmup_steps=0", "report_steps=3", f"hydra.sweeper.storage={storage}"]
    ok(run_app("sphere.py", [*args, "hydra.sweeper.n_trials=6"], tmp_path / "first"))
    trials = study(storage, "sphere").get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED}
    for trial in trials:
        value = trial.params["x"] ** 2 + trial.params["y"] ** 2
        steps = 3 if trial.state == TrialState.COMPLETE else max(trial.intermediate_values)
        assert trial.intermediate_values == {step: value * step for step in range(1, steps + 1)}
    # Rerunning resumes the study: nothing more to do at the same n_trials, two more at n_trials=8.
    ok(run_app("sphere.py", [*args, "hydra.sweeper.n_trials=6"], tmp_path / "again"))
    assert len(study(storage, "sphere").get_trials()) == 6
    ok(run_app("sphere.py", [*args, "hydra.sweeper.n_trials=8"], tmp_path / "more"))
    assert len(study(storage, "sphere").get_trials()) == 8
