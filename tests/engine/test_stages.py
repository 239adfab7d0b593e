"""Staged fine-tuning: freezing per level, stage starts and lineage, transfer_epochs, the one-command pipeline."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from conftest import run_train

from reid.engine.build import build_experiment, build_trainer
from reid.errors import ConfigError
from reid.pipeline import allow_stage_overrides


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("level", [1, 2])
def test_frozen_parts_stay_bit_identical_and_bn_statistics_do_not_drift(compose_config, tmp_path, level):
    cfg = compose_config("experiment=smoke", "trainer.max_epochs=1", f"stage.freeze_level={level}")
    experiment = build_experiment(cfg)
    model = experiment.model
    backbone, neck, classifier = snapshot(model.backbone), snapshot(model.head.neck), snapshot(model.head.classifier)
    build_trainer(cfg, experiment, tmp_path, []).fit()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone[key]), key  # weights and BN running stats alike
    neck_same = all(torch.equal(v, neck[k]) for k, v in model.head.neck.state_dict().items())
    assert neck_same == (level == 2)
    assert not torch.equal(model.head.classifier.weight, classifier["weight"])
    optimized = {id(p) for group in experiment.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in model.backbone.parameters())


def test_transfer_epochs_unfreeze_at_the_right_epoch(compose_config, tmp_path, caplog):
    cfg = compose_config("experiment=smoke", "trainer.max_epochs=3", "stage.freeze_level=2",
                         "trainer.transfer_epochs=2", "trainer.unfreeze_lr_factor=0.5", "scheduler=none")
    experiment = build_experiment(cfg)
    trainer = build_trainer(cfg, experiment, tmp_path, [])
    before = snapshot(experiment.model.backbone)
    seen: list[tuple[int, int]] = []

    class Watch:
        def before_train(self, t): pass
        def before_epoch(self, t, epoch): pass
        def after_step(self, t, info): pass
        def after_train(self, t): pass
        def after_epoch(self, t, result):
            changed = not all(torch.equal(v, before[k]) for k, v in t.model.backbone.state_dict().items())
            seen.append((result.epoch, changed))

    trainer.hooks.hooks.append(Watch())
    with caplog.at_level("INFO"):
        trainer.fit()
    assert seen == [(1, False), (2, False), (3, True)]
    assert "[Epoch 3/3] unfreezing after 2 transfer epochs" in caplog.text
    groups = experiment.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.5 * groups[0]["lr"])


def test_stage2_starts_from_stage1s_best_model_and_continues_the_epochs(compose_config, tmp_path, monkeypatch):
    from reid.train import train

    monkeypatch.chdir(tmp_path)
    stage1_dir = tmp_path / "outputs" / "smoke" / "runs" / "a_stage1"
    # experiment=smoke caps every stage at one epoch (trainer.debug_stage_epochs); this test needs two.
    train(compose_config("experiment=smoke", "stage=stage1", "stage.epochs=2", "trainer.debug_stage_epochs=2"),
          run_dir=stage1_dir)
    stage1 = json.loads((stage1_dir / "model_info.json").read_text())
    assert stage1["status"] == "finished" and stage1["epochs_trained"] == 2

    stage2_dir = tmp_path / "outputs" / "smoke" / "runs" / "b_stage2"
    train(compose_config("experiment=smoke", "stage=stage2", "stage.epochs=1"), run_dir=stage2_dir)
    info = json.loads((stage2_dir / "model_info.json").read_text())
    assert info["lineage"]["parent_run"] == str(stage1_dir.resolve())
    assert info["lineage"]["parent_best_map"] == pytest.approx(stage1["best_map"])
    assert info["lineage"]["init_from"] == str((stage1_dir / "best_model.pth").resolve())
    history = json.loads((stage2_dir / "training_history.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [3]
    assert info["epochs_trained"] == 3 and info["max_epochs"] == 3
    # Frozen backbone: stage 2 ends with exactly stage 1's best backbone weights.
    best1 = torch.load(stage1_dir / "best_model.pth", weights_only=True)["state_dict"]
    final2 = torch.load(stage2_dir / "model_final.pth", weights_only=True)["state_dict"]
    backbone_keys = [k for k in best1 if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(best1[k], final2[k]) for k in backbone_keys)


def test_stage2_without_a_stage1_run_names_what_it_looked_for(compose_config, tmp_path, monkeypatch):
    from reid.train import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        train(compose_config("experiment=smoke", "stage=stage2"), run_dir=tmp_path / "run")
    message = str(info.value)
    assert "finished stage1 run of experiment 'smoke'" in message and "stage.init_from=" in message


def test_init_from_a_missing_file_is_a_clear_error(compose_config, tmp_path):
    from reid.train import train

    with pytest.raises(ConfigError, match="stage.init_from=.*nowhere.pth: no such file"):
        train(compose_config("experiment=smoke", "stage=stage2", f"stage.init_from={tmp_path}/nowhere.pth"),
              run_dir=tmp_path / "run")


def test_stage_overrides_get_the_plus_hydra_needs():
    argv = ["reid.train", "pipeline=three_stage", "pipeline.stage2.optimizer.lr=4e-5", "pipeline.stages=[a]",
            "optimizer.lr=1e-3"]
    assert allow_stage_overrides(argv) == ["reid.train", "pipeline=three_stage",
                                           "++pipeline.stage2.optimizer.lr=4e-5", "pipeline.stages=[a]",
                                           "optimizer.lr=1e-3"]


PIPELINE = ["experiment=smoke", "pipeline=three_stage", "pipeline.stage1.stage.epochs=1",
            "pipeline.stage2.stage.epochs=1", "pipeline.stage2.optimizer.lr=4e-5", "trainer.max_epochs=3",
            "data.p=2", "data.k=4", "trainer.log_every=1", "loss._target_=faults.SlowLoss", "+loss.sleep_seconds=0.2"]


def test_three_stage_pipeline_resumes_the_interrupted_stage(tmp_path, data_dir):
    from test_resilience import start_until

    process = start_until(tmp_path, data_dir, PIPELINE, "epoch 2 step 2/4")
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    (pipeline_dir,) = (tmp_path / "outputs" / "smoke" / "pipelines").iterdir()
    state = json.loads((pipeline_dir / "PIPELINE.json").read_text())
    assert state["status"] == "stopped in stage2" and state["results"]["stage1"]["status"] == "finished"
    assert not list(pipeline_dir.rglob(".reid.lock"))  # Ctrl+C released the pipeline's and the stage's locks
    stage1_mtime = (pipeline_dir / "1_stage1" / "model_info.json").stat().st_mtime

    result = run_train(PIPELINE, tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage 1/3 stage1 already finished, skipping" in result.stdout
    assert "resuming stage 2/3 stage2" in result.stdout
    assert (pipeline_dir / "1_stage1" / "model_info.json").stat().st_mtime == stage1_mtime
    stage_dirs = ("1_stage1", "2_stage2", "3_stage3")
    infos = [json.loads((pipeline_dir / d / "model_info.json").read_text()) for d in stage_dirs]
    assert [i["epochs_trained"] for i in infos] == [1, 2, 3]
    assert [i["stage"] for i in infos] == ["stage1", "stage2", "stage3"]
    assert infos[1]["hyperparameters"]["optimizer"]["lr"] == pytest.approx(4e-5)
    assert infos[2]["hyperparameters"]["optimizer"]["lr"] == pytest.approx(3e-5)
    assert infos[1]["lineage"]["parent_run"] == str((pipeline_dir / "1_stage1").resolve())
    assert infos[2]["lineage"]["parent_run"] == str((pipeline_dir / "2_stage2").resolve())
    assert len(infos[1]["resumes"]) == 1
    for stage_dir in ("1_stage1", "2_stage2", "3_stage3"):
        history = json.loads((pipeline_dir / stage_dir / "training_history.json").read_text())["epochs"]
        assert len(history) == 1 and (pipeline_dir / stage_dir / "log.txt").is_file()
    summary = (pipeline_dir / "PIPELINE_SUMMARY.txt").read_text()
    assert "Status: finished" in summary and summary.count("finished") == 4
    state = json.loads((pipeline_dir / "PIPELINE.json").read_text())
    assert state["best_map"] == pytest.approx(infos[2]["best_map"])
