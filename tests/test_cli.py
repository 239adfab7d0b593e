"""A user's mistake ends every command with one message on stderr and exit status 2, never a traceback
(reid/cli.py); HYDRA_FULL_ERROR=1 brings the traceback back, and real bugs keep theirs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_train, train_env
from hydra.errors import InstantiationException

from reid.checkpoint import safe_load
from reid.cli import USAGE_EXIT_STATUS, reports_user_errors, user_error_in
from reid.config import validate_targets
from reid.engine.build import build_experiment
from reid.errors import CheckpointError, ConfigError, DatasetError, ReidError


def _one_message(result: subprocess.CompletedProcess, program: str, *fragments: str) -> None:
    assert result.returncode == USAGE_EXIT_STATUS, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def test_bad_resume_dir_reported_before_the_job_starts(tmp_path, data_dir):
    # trainer.resume is resolved with the run directory, in Hydra's set-up, before the task function runs.
    result = run_train(["experiment=smoke", f"trainer.resume={tmp_path}/gone"], tmp_path, data_dir)
    _one_message(result, "reid.train", f"trainer.resume={tmp_path}/gone", "has no last_checkpoint.pth")


def test_missing_dataset_root_and_full_error_traceback(tmp_path, data_dir):
    args = ["experiment=smoke", "dataset=market1501", f"dataset.root={tmp_path}/nowhere"]
    result = run_train(args, tmp_path, data_dir)
    _one_message(result, "reid.train", f"{tmp_path}/nowhere")
    full = subprocess.run([sys.executable, "-m", "reid.train", *args], cwd=tmp_path, capture_output=True, text=True,
                          env={**train_env(data_dir), "HYDRA_FULL_ERROR": "1"}, timeout=300)
    assert full.returncode == 1 and "Traceback" in full.stderr and "DatasetError" in full.stderr


def test_missing_parent_stage(tmp_path, data_dir):
    result = run_train(["experiment=smoke", "stage=stage2"], tmp_path, data_dir)
    _one_message(result, "reid.train", "finished stage1 run of experiment 'smoke'", "stage.init_from=")


def test_select_and_plateau_report_bad_paths_without_traceback(tmp_path):
    for module, program in (("reid.select", "reid.select"), ("reid.plateau", "reid.plateau")):
        result = subprocess.run([sys.executable, "-m", module, str(tmp_path / "missing")], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == USAGE_EXIT_STATUS, result.stderr
        assert "Traceback" not in result.stderr and str(tmp_path / "missing") in result.stderr
        assert f"{program}: error:" in result.stderr


def test_a_bug_keeps_its_traceback(capsys):
    @reports_user_errors("prog")
    def broken() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        broken()


def test_user_error_exits_2_with_one_line(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @reports_user_errors("prog")
    def fails() -> None:
        raise ConfigError("data.p=0: expected an integer >= 1")

    with pytest.raises(SystemExit) as info:
        fails()
    assert info.value.code == 2
    assert capsys.readouterr().err == "prog: error: data.p=0: expected an integer >= 1\n"


def test_user_error_found_behind_library_wrappers():
    try:
        try:
            raise DatasetError("root /x: no bounding_box_train/")
        except DatasetError as inner:
            raise InstantiationException("Error in call to target 'reid.data.Market1501'") from inner
    except InstantiationException as outer:
        found = user_error_in(outer)
    assert isinstance(found, DatasetError) and str(found) == "root /x: no bounding_box_train/"
    assert user_error_in(RuntimeError("bug")) is None
    assert issubclass(DatasetError, ReidError)


def test_text_file_as_weights_is_not_called_pickled(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("not weights\n")
    with pytest.raises(CheckpointError) as info:
        safe_load(path)
    message = str(info.value)
    assert f"{path} is not a readable checkpoint" in message and "pickled" not in message
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth is not a readable checkpoint"):
        safe_load(empty)


def test_real_torch_files_still_load(tmp_path):
    path = tmp_path / "state.pth"
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(safe_load(path)["w"], torch.ones(2))


@pytest.mark.parametrize("loss,overrides,key", [
    ("triplet", ["data.k=1"], "data.k=1"),
    ("ce_triplet", ["data.k=1"], "data.k=1"),
    ("ce_triplet", ["data.p=1"], "data.p=1"),
])
def test_triplet_without_positive_or_negative_is_refused(compose_config, loss, overrides, key):
    cfg = compose_config("experiment=smoke", f"loss={loss}", *overrides)
    validate_targets(cfg)
    with pytest.raises(ConfigError) as info:
        build_experiment(cfg)
    assert str(info.value).startswith(key) and "loss.triplet_weight" in str(info.value)


def test_ce_alone_accepts_one_image_per_identity(compose_config):
    experiment = build_experiment(compose_config("experiment=smoke", "loss=ce", "data.k=1", "data.p=8"))
    assert experiment.loaders.train.batch_size == 8


def test_run_dir_is_untouched_by_a_refused_run(tmp_path: Path, data_dir):
    result = run_train(["experiment=smoke", "loss=triplet", "data.k=1"], tmp_path, data_dir)
    _one_message(result, "reid.train", "data.k=1")
    assert not list((tmp_path / "outputs").rglob("*.pth"))
