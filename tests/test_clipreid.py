"""CLIP-ReID: identity prompts, the prompt stage on cached features, the finetune stage, the two-stage pipeline.

Real open_clip code at a test-only size (two registered model configs, no pretrained weights), on synthetic_tiny.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from reid.checkpoint import BEST_MODEL, FINAL_MODEL, LAST_CHECKPOINT, load_training_checkpoint, safe_load
from reid.config import register_configs, validate_targets
from reid.errors import ConfigError
from reid.losses.clipreid import PromptContrastiveLoss

TINY_VIT = "reid-test-tiny-vit"
TINY_RN = "reid-test-tiny-rn"
TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
# CLIP's trained logit scale (100, as OpenAI's weights have it), not its initial 1/0.07: random image features lie
# in a narrow cone, and the contrastive loss needs the sharper softmax to separate them.
MODEL_CONFIGS = {
    TINY_VIT: {"embed_dim": 64, "init_logit_scale": 4.6052, "text_cfg": TEXT_CFG,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16}},
    TINY_RN: {"embed_dim": 64, "init_logit_scale": 4.6052, "text_cfg": TEXT_CFG,
              "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16,
                             "patch_size": None}},
}
PROMPT_EPOCHS = 24
NUM_IDS = 8  # synthetic_tiny's training identities


@pytest.fixture(scope="module")
def tiny_clip_models(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Register the test-only open_clip model configs (open_clip's add_model_config) in this process."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, config in MODEL_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def clip_model(model_name: str, num_classes: int = NUM_IDS):
    from reid.models import build_model

    backbone = OmegaConf.create({"_target_": "reid.models.backbones.OpenClipBackbone", "model_name": model_name,
                                 "image_size": [64, 32], "features": "pre_and_post", "text_tower": True})
    head = OmegaConf.create({"_target_": "reid.models.clipreid.ClipReidHead", "n_ctx": 4})
    return build_model(backbone, head, num_classes=num_classes)


def test_the_prompt_holds_four_learned_tokens_between_the_template_tokens(tiny_clip_models):
    model = clip_model(TINY_VIT)
    prompts, text = model.head.prompt_learner, model.head.text
    ids = text.tokenize("A photo of a X X X X person.")
    assert (prompts.start, prompts.n_ctx, prompts.eot_position) == (5, 4, int(ids.argmax()))
    assert ids[prompts.eot_position] == 49407 and prompts.eot_position == 11  # SOT a photo of a XXXX person . EOT
    embedded, eot = prompts(torch.tensor([3, 5]), text.token_embedding)
    assert embedded.shape == (2, 16, 64) and eot.tolist() == [11, 11]
    assert torch.equal(embedded[1, 5:9], prompts.context[5])
    fixed = text.token_embedding(ids)
    assert torch.equal(embedded[0, :5], fixed[:5]) and torch.equal(embedded[0, 9:], fixed[9:])
    # The text tower moved into the head, frozen; the backbone keeps only the image encoder.
    assert model.backbone.text is None and not any(p.requires_grad for p in text.parameters())
    assert not any(key.startswith("backbone.text") for key in model.state_dict())


def test_clipreid_head_on_clip_rn50_layout_gives_both_features(tiny_clip_models):
    model = clip_model(TINY_RN)
    model.keep_frozen(["head.prompt_learner"])
    assert not model.head.prompt_learner.context.requires_grad and model.head.classifier.pre.weight.requires_grad
    with pytest.raises(ConfigError, match="stage.frozen: 'head.prompts' is not a module of this model"):
        model.keep_frozen(["head.prompts"])
    assert model.backbone.feature_dims == (256, 64)
    images = torch.randn(4, 3, 64, 32)
    output = model.train()(images, torch.tensor([0, 1, 2, 3]))
    assert output.logits.shape == output.projected_logits.shape == output.text_logits.shape == (4, NUM_IDS)
    assert output.metric_features.shape == (4, 256) and output.projected_features.shape == (4, 64)
    embedding = model.eval()(images)
    assert embedding.shape == (4, 320) and torch.allclose(embedding.norm(dim=1), torch.ones(4))


def test_clipreid_head_refuses_a_backbone_without_text_tower(tiny_clip_models):
    from reid.models import build_model

    backbone = OmegaConf.create({"_target_": "reid.models.backbones.OpenClipBackbone", "model_name": TINY_VIT,
                                 "image_size": [64, 32], "features": "pre_and_post"})
    head = OmegaConf.create({"_target_": "reid.models.clipreid.ClipReidHead"})
    with pytest.raises(Exception, match="backbone.text_tower=true") as raised:
        build_model(backbone, head, num_classes=NUM_IDS)
    assert isinstance(raised.value.__cause__, ConfigError)  # Hydra wraps it; reid.cli reports the cause


def test_supervised_contrastive_counts_every_same_identity_candidate():
    from reid.losses.clipreid import supervised_contrastive

    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = supervised_contrastive(anchors, candidates, torch.tensor([0, 1]), torch.tensor([0, 0, 1]), 1.0)
    e = torch.e
    expected = -(0.5 * 2 * torch.log(torch.tensor(e / (2 * e + 1))) + torch.log(torch.tensor(e / (e + 2)))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


COMMON = [
    "dataset=synthetic_tiny", "backbone=clip_vit_b16", f"backbone.model_name={TINY_VIT}",
    "backbone.features=pre_and_post", "backbone.text_tower=true", "head=clipreid",
    "data.height=64", "data.width=32", "data.p=4", "data.k=4", "data.num_workers=0", "data.test_batch_size=64",
    "trainer.log_every=50",
]
# A constant, higher LR than the paper's: the random image features are hard to tell apart (see MODEL_CONFIGS).
PROMPT = {"stage.step.batch_size": 8, "optimizer.lr": 3e-3, "scheduler.warmup_epochs": 0,
          "scheduler.min_lr_factor": 1.0}
FINETUNE = {"stage.epochs": 2, "trainer.eval_every": 1, "optimizer.lr": 1e-3, "scheduler.warmup_epochs": 1}
OVERRIDES = [*COMMON, "pipeline=clipreid", f"+pipeline.prompt.stage.epochs={PROMPT_EPOCHS}",
             *(f"+pipeline.prompt.{key}={value}" for key, value in PROMPT.items()),
             *(f"+pipeline.finetune.{key}={value}" for key, value in FINETUNE.items())]


@pytest.fixture(scope="module")
def pipeline_dir(tiny_clip_models, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of pipeline=clipreid, in this process (the test model configs live in its open_clip registry)."""
    from reid.pipeline import Pipeline

    register_configs()
    root = tmp_path_factory.mktemp("clipreid") / "pipeline"
    overrides = [f"data_dir={data_dir}", *OVERRIDES]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
        Pipeline(cfg, root, overrides).run()
    GlobalHydra.instance().clear()
    return root


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return safe_load(path)["state_dict"]


def test_the_pipeline_runs_both_stages_each_with_its_own_record(pipeline_dir):
    state = json.loads((pipeline_dir / "PIPELINE.json").read_text())
    assert state["status"] == "finished" and state["stages"] == ["prompt", "finetune"]
    prompt, finetune = (json.loads((pipeline_dir / d / "model_info.json").read_text())
                        for d in ("1_prompt", "2_finetune"))
    assert (prompt["stage"], prompt["status"], prompt["monitor"]) == ("prompt", "finished", "i2t_top1")
    assert (finetune["stage"], finetune["status"], finetune["monitor"]) == ("finetune", "finished", "mAP")
    assert finetune["lineage"]["init_from"] == str((pipeline_dir / "1_prompt" / BEST_MODEL).resolve())
    assert [prompt["epochs_trained"], finetune["epochs_trained"]] == [PROMPT_EPOCHS, PROMPT_EPOCHS + 2]
    assert state["best_map"] == pytest.approx(finetune["best_map"]) and 0 < finetune["best_map"] <= 1
    assert finetune["hyperparameters"]["loss"]["_target_"] == "reid.losses.clipreid.ClipReidLoss"
    assert prompt["hyperparameters"]["loss"]["_target_"] == "reid.losses.clipreid.PromptContrastiveLoss"


def test_prompt_stage_image_to_text_accuracy_rises_well_above_chance(pipeline_dir):
    rows = metrics_rows(pipeline_dir / "1_prompt")
    accuracy = [float(row["i2t_top1"]) for row in rows]
    assert len(accuracy) == PROMPT_EPOCHS and all(row["mAP"] == "" for row in rows)
    assert {"loss_i2t", "loss_t2i"} <= set(rows[0])
    chance = 1 / NUM_IDS
    assert accuracy[0] <= 3 * chance, accuracy
    assert accuracy[-1] >= 4 * chance, accuracy
    info = json.loads((pipeline_dir / "1_prompt" / "model_info.json").read_text())
    assert info["best_value"] == max(accuracy) and info["best_map"] is None
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_prompt_stage_trains_only_the_prompt_tokens_and_checkpoints_them(pipeline_dir):
    prompt_dir = pipeline_dir / "1_prompt"
    checkpoint = load_training_checkpoint(prompt_dir / LAST_CHECKPOINT)
    # The optimizer holds one parameter, the per-identity context tokens (stage.frozen keeps the classifier out).
    assert len(checkpoint["optimizer"]["param_groups"][0]["params"]) == 1
    (moments,) = checkpoint["optimizer"]["state"].values()
    assert moments["exp_avg"].shape == (NUM_IDS, 4, 64)
    best, final = state_dict(prompt_dir / BEST_MODEL), state_dict(prompt_dir / FINAL_MODEL)
    assert torch.equal(checkpoint["model"]["head.prompt_learner.context"], final["head.prompt_learner.context"])
    changed = {key for key in final if not torch.equal(final[key], best[key])}
    assert changed <= {"head.prompt_learner.context"}


def test_finetune_stage_trains_the_image_encoder_necks_and_classifiers_only(pipeline_dir):
    start = state_dict(pipeline_dir / "1_prompt" / BEST_MODEL)
    end = state_dict(pipeline_dir / "2_finetune" / FINAL_MODEL)
    assert set(start) == set(end)
    changed = {key for key in end if not torch.equal(end[key], start[key])}
    assert all(key.startswith(("backbone.visual.", "head.neck.", "head.classifier.")) for key in changed), changed
    assert any(key.startswith("backbone.visual.") for key in changed)
    assert {"head.classifier.pre.weight", "head.classifier.post.weight", "head.neck.pre.weight"} <= changed
    unchanged = {key for key in end if key.startswith(("head.text.", "head.prompt_learner."))}
    assert unchanged and not unchanged & changed
    rows = metrics_rows(pipeline_dir / "2_finetune")
    assert {"loss_ce", "loss_tri", "loss_i2t"} <= set(rows[0]) and all(row["mAP"] for row in rows)
    checkpoint = load_training_checkpoint(pipeline_dir / "2_finetune" / LAST_CHECKPOINT)
    shapes = [tuple(state["exp_avg"].shape) for state in checkpoint["optimizer"]["state"].values()]
    assert (NUM_IDS, 4, 64) not in shapes and (NUM_IDS, 64) in shapes  # no prompt tokens; the classifiers


def test_the_finetuned_model_loads_from_its_file_alone(pipeline_dir):
    from reid.models.loading import load_trained_model

    trained = load_trained_model(pipeline_dir / "2_finetune")
    embedding = trained.model(torch.randn(3, 3, trained.height, trained.width))
    assert embedding.shape == (3, 64 + 64) and torch.allclose(embedding.norm(dim=1), torch.ones(3))


def test_rerunning_the_finished_pipeline_trains_nothing(pipeline_dir, data_dir):
    from reid.pipeline import Pipeline

    before = {d: (pipeline_dir / d / "model_info.json").stat().st_mtime for d in ("1_prompt", "2_finetune")}
    overrides = [f"data_dir={data_dir}", *OVERRIDES]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        value = Pipeline(compose(config_name="config", overrides=overrides), pipeline_dir, overrides).run()
    GlobalHydra.instance().clear()
    finetune = json.loads((pipeline_dir / "2_finetune" / "model_info.json").read_text())
    assert value == pytest.approx(finetune["best_value"])
    assert before == {d: (pipeline_dir / d / "model_info.json").stat().st_mtime for d in before}


def stage_config(compose_config, experiment: str, stage: str):
    """A stage of an experiment preset's pipeline as the pipeline composes it."""
    from reid.pipeline import stage_overrides

    cfg = compose_config(f"experiment={experiment}")
    return compose_config(*stage_overrides(cfg, [f"experiment={experiment}"], stage, None))


@pytest.mark.parametrize(("experiment", "prompt_epochs", "finetune_epochs", "lr", "milestones"), [
    ("clipreid_vitb16_market1501", 120, 60, 5e-6, [30, 50]),
    ("clipreid_rn50_market1501", 60, 120, 3.5e-4, [40, 70]),
])
def test_presets_compose_each_stage_with_the_papers_schedule(compose_config, experiment, prompt_epochs,
                                                             finetune_epochs, lr, milestones):
    prompt = stage_config(compose_config, experiment, "prompt")
    finetune = stage_config(compose_config, experiment, "finetune")
    for cfg in (prompt, finetune):
        validate_targets(cfg)
        assert cfg.head._target_ == "reid.models.clipreid.ClipReidHead" and cfg.backbone.text_tower
        assert cfg.backbone.pretrained and cfg.backbone.features == "pre_and_post"
    assert (prompt.stage.epochs, prompt.optimizer.lr, prompt.scheduler.max_epochs) == (prompt_epochs, 3.5e-4,
                                                                                        prompt_epochs)
    assert prompt.scheduler.warmup_epochs == 5 and prompt.trainer.monitor == "i2t_top1"
    assert prompt.stage.step._target_ == "reid.engine.prompt_learning.PromptLearning"
    assert (finetune.stage.epochs, finetune.optimizer.lr, list(finetune.scheduler.milestones)) == (
        finetune_epochs, lr, milestones)
    assert finetune.trainer.monitor == "mAP" and finetune.stage.step is None
    assert (finetune.loss.ce_weight, finetune.loss.triplet_weight, finetune.loss.i2t_weight) == (0.25, 1.0, 1.0)


def test_sie_overlapping_patch_preset_composes(compose_config):
    cfg = stage_config(compose_config, "clipreid_vitb16_sie_ov_market1501", "finetune")
    validate_targets(cfg)
    assert (cfg.backbone.patch_stride, cfg.backbone.sie_coefficient, cfg.backbone.sie_tokens) == (12, 3.0, "cls")


class InterruptingPromptLoss(PromptContrastiveLoss):
    """Sends this process SIGINT (a Ctrl+C) at its `after_steps`-th step, once: `marker` remembers it did."""

    def __init__(self, marker: str, after_steps: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self.marker, self.after_steps, self.calls = Path(marker), after_steps, 0

    def forward(self, output, labels):
        self.calls += 1
        if self.calls == self.after_steps and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(output, labels)


def test_an_interrupted_prompt_stage_resumes_exactly(tiny_clip_models, compose_config, tmp_path):
    from reid.engine.stopping import RunInterrupted
    from reid.train import train

    overrides = [*COMMON, "stage=prompt", "stage.epochs=3", *(f"{key}={value}" for key, value in PROMPT.items())]
    interrupting = [*overrides, f"loss._target_={__name__}.InterruptingPromptLoss", f"+loss.marker={tmp_path}/sent"]
    with pytest.raises(RunInterrupted):
        train(compose_config(*interrupting), run_dir=tmp_path / "resumed")
    checkpoint = load_training_checkpoint(tmp_path / "resumed" / LAST_CHECKPOINT)
    assert (checkpoint["epoch"], checkpoint["epoch_progress"]["step"]) == (1, 2)  # 6 steps an epoch
    assert checkpoint["optimizer"]["state"]  # the prompt tokens' Adam moments
    train(compose_config(*interrupting), run_dir=tmp_path / "resumed")
    # A sweep's objectives reach every stage of a pipeline: the prompt stage has no mAP, which is NaN, not an error.
    values = train(compose_config(*overrides, "trainer.objectives=[mAP,params_m]"), run_dir=tmp_path / "straight")
    assert math.isnan(values[0]) and values[1] > 0
    resumed, straight = (json.loads((tmp_path / d / "training_history.json").read_text())["epochs"]
                         for d in ("resumed", "straight"))
    for row in (*resumed, *straight):
        row.pop("epoch_time")
    assert resumed == straight and len(resumed) == 3
    final = [state_dict(tmp_path / d / FINAL_MODEL)["head.prompt_learner.context"] for d in ("resumed", "straight")]
    assert torch.equal(*final)
    info = json.loads((tmp_path / "resumed" / "model_info.json").read_text())
    assert info["status"] == "finished" and len(info["resumes"]) == 1


def test_a_stage_override_replaces_what_the_preset_set_for_that_stage(compose_config):
    from reid.pipeline import allow_stage_overrides

    overrides = allow_stage_overrides(["experiment=clipreid_rn50_market1501", "pipeline.finetune.optimizer.lr=1e-4"])
    cfg = compose_config(*overrides)
    assert cfg.pipeline.finetune.optimizer.lr == 1e-4 and cfg.pipeline.finetune.stage.epochs == 120
