"""The `callbacks` group: a user's hook from one YAML file in their own config dir, save_every_n, bad targets."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import only_run_dir, run_train

from reid.checkpoint import load_model_file
from reid.cli import exit_on_user_error
from reid.config import validate_targets
from reid.engine.build import build_run_hooks
from reid.errors import ConfigError
from reid.models import build_model

# What a user writes into <their config dir>/callbacks/epoch_recorder.yaml (tests/recording_hooks.py is their module).
USER_CALLBACK = """\
epoch_recorder:
  _target_: recording_hooks.EpochRecorder
  path: {path}
"""
RUN = ["experiment=smoke", "callbacks=[save_every_n,epoch_recorder]", "callbacks.save_every_n.every=2"]


@pytest.fixture(scope="module")
def callback_run(tmp_path_factory, data_dir) -> Iterator[tuple[Path, list[str]]]:
    """One smoke run (2 epochs) with save_every_n (every 2) and the user's recorder from their --config-dir."""
    root = tmp_path_factory.mktemp("callbacks")
    user_conf = root / "my_conf"
    (user_conf / "callbacks").mkdir(parents=True)
    (user_conf / "callbacks" / "epoch_recorder.yaml").write_text(USER_CALLBACK.format(path=root / "calls.txt"))
    result = run_train(["--config-dir", str(user_conf), *RUN], root, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    yield only_run_dir(root), (root / "calls.txt").read_text().splitlines()
    shutil.rmtree(root, ignore_errors=True)


def test_user_callback_runs_every_epoch_after_the_standard_hooks(callback_run):
    run_dir, calls = callback_run
    history = json.loads((run_dir / "training_history.json").read_text())["epochs"]
    info = json.loads((run_dir / "model_info.json").read_text())
    steps = info["global_step"] // 2
    assert calls == [
        "before_train epoch=0",
        # metrics.csv already holds the epoch's row and best_model.pth is saved: the recorder runs after them
        *(line for row in history for line in (
            f"before_epoch {row['epoch']}",
            f"after_epoch {row['epoch']} steps={steps} mAP={row['mAP']!r} csv_rows={row['epoch']} best_model=True")),
        "after_train completed",
    ]
    assert info["hyperparameters"]["callbacks"]["epoch_recorder"]["_target_"] == "recording_hooks.EpochRecorder"


def test_save_every_n_writes_loadable_model_files(callback_run, compose_config):
    run_dir, _ = callback_run
    history = json.loads((run_dir / "training_history.json").read_text())["epochs"]
    assert sorted(path.name for path in run_dir.glob("epoch_*.pth")) == ["epoch_2.pth"]
    cfg = compose_config("experiment=smoke")
    model = build_model(cfg.backbone, cfg.head, num_classes=8)
    meta = load_model_file(run_dir / "epoch_2.pth", model, model.architecture)
    assert meta["epoch"] == 2
    assert meta["metrics"]["mAP"] == history[1]["mAP"]
    assert meta["config"]["callbacks"]["save_every_n"]["every"] == 2
    # the model as it stood after epoch 2, the last one: model_final.pth's weights
    final = torch.load(run_dir / "model_final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(value, final[key]) for key, value in model.state_dict().items())


def test_a_callback_that_cannot_be_imported_is_one_error_line_and_exit_2(compose_config, capsys):
    """What reid.train's main does with the error validate_targets raises before anything is built."""
    with pytest.raises(ConfigError) as caught:
        validate_targets(compose_config("experiment=smoke", "+callbacks.oops._target_=nowhere.Missing"))
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(caught.value, "reid.train")
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "reid.train: error: callbacks.oops._target_='nowhere.Missing' cannot be imported: Error loading "
        "'nowhere.Missing': ModuleNotFoundError(\"No module named 'nowhere'\") Are you sure that module 'nowhere' is "
        "installed?\n")


def test_callback_mistakes_name_their_key(compose_config, tmp_path):
    with pytest.raises(ConfigError, match=r"callbacks.save_every_n.run_dir is set by reid itself"):
        validate_targets(compose_config("experiment=smoke", "callbacks=save_every_n",
                                        "+callbacks.save_every_n.run_dir=/elsewhere"))
    with pytest.raises(ConfigError, match=r"callbacks.save_every_n.period is not an argument of "
                                          r"reid.engine.callbacks.SaveEveryN; valid keys: every"):
        validate_targets(compose_config("experiment=smoke", "callbacks=save_every_n",
                                        "+callbacks.save_every_n.period=3"))
    cfg = compose_config("experiment=smoke", "callbacks=save_every_n", "callbacks.save_every_n.every=0")
    with pytest.raises(ConfigError, match=r"^callbacks.save_every_n \(reid.engine.callbacks.SaveEveryN\): every=0: "
                                          r"expected an integer >= 1"):
        build_run_hooks(cfg, tmp_path, {}, [])
    cfg = compose_config("experiment=smoke", "+callbacks.odd._target_=argparse.Namespace")
    with pytest.raises(ConfigError, match=r"callbacks.odd._target_='argparse.Namespace' made a Namespace; "
                                          r"expected a subclass of reid.engine.hooks.Hook"):
        build_run_hooks(cfg, tmp_path, {}, [])
