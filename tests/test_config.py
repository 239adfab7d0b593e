"""Every option of every group composes and validates; bad overrides fail before training, naming the choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from reid.config import validate_targets
from reid.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["dataset", "backbone", "head", "loss", "optimizer", "scheduler", "stage", "trainer", "experiment", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert options("dataset") == ["folders", "market1501", "synthetic", "synthetic_tiny"]
    assert options("backbone") == ["clip_rn50", "clip_vit_b16", "resnet18", "resnet50"]
    assert options("head") == ["arcface", "bnneck", "clipreid", "linear"]
    assert options("loss") == ["ce", "ce_triplet", "ce_triplet_center", "clipreid", "prompt_contrastive", "triplet"]
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    assert options("scheduler") == ["cosine", "none", "warmup_multistep"]
    assert "full" in options("stage")
    assert "smoke" in options("experiment")
    assert options("debug") == ["smoke"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(compose_config, group, option):
    overrides = [f"{group}={option}"]
    if option == "folders":
        overrides.append("dataset.root=/some/folders")
    cfg = compose_config(*overrides)
    validate_targets(cfg)
    if group not in ("experiment", "debug"):
        assert cfg[group] is not None


def test_defaults(compose_config):
    cfg = compose_config()
    assert cfg.dataset._target_ == "reid.data.synthetic.SyntheticReID"
    assert cfg.backbone.model_name == "resnet18"
    assert cfg.stage.name == "full" and cfg.stage.freeze_level == 0
    assert cfg.trainer.device == "auto"


def test_cli_values_reach_the_config(compose_config):
    cfg = compose_config("optimizer=sgd", "optimizer.lr=7e-4", "loss.ce_weight=0.3", "head=arcface", "head.margin=0.4")
    assert cfg.optimizer.lr == pytest.approx(7e-4)
    assert cfg.loss.ce_weight == pytest.approx(0.3)
    assert cfg.head.margin == pytest.approx(0.4)


def test_unknown_option_names_the_valid_choices(compose_config):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("backbone=resnet999")
    message = str(info.value)
    assert "resnet999" in message
    for choice in ("resnet18", "resnet50", "clip_vit_b16", "clip_rn50"):
        assert choice in message


def test_unknown_trainer_key_is_rejected(compose_config):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("trainer.max_epoch=3")
    assert "max_epoch" in str(info.value)


def test_wrong_type_for_a_structured_key_is_rejected(compose_config):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("trainer.max_epochs=many")
    assert "many" in str(info.value) and "max_epochs" in str(info.value)


def test_wrong_type_for_a_target_key_names_key_and_type(compose_config):
    cfg = compose_config("head=arcface", "head.scale=big")
    with pytest.raises(ConfigError, match=r"head.scale='big': expected float"):
        validate_targets(cfg)


def test_unknown_target_key_lists_the_valid_keys(compose_config):
    cfg = compose_config("+loss.temperature=2.0")
    with pytest.raises(ConfigError) as info:
        validate_targets(cfg)
    message = str(info.value)
    assert "loss.temperature" in message and "ce_weight" in message and "triplet_weight" in message


def test_invalid_freeze_level_is_rejected(compose_config):
    cfg = compose_config("stage.freeze_level=3")
    with pytest.raises(ConfigError, match="stage.freeze_level=3"):
        validate_targets(cfg)


def test_unknown_distance_is_rejected(compose_config):
    cfg = compose_config("data.distance=manhattan")
    with pytest.raises(ConfigError, match="manhattan"):
        validate_targets(cfg)


def test_code_provided_arguments_cannot_be_configured(compose_config):
    cfg = compose_config("+head.num_classes=10")
    with pytest.raises(ConfigError, match="head.num_classes is set by reid itself"):
        validate_targets(cfg)


def test_key_errors_are_omegaconf_errors():
    # Guard: the composition errors above come from OmegaConf's struct/type checks.
    assert issubclass(ConfigKeyError, Exception) and issubclass(ValidationError, Exception)


def test_input_size_sets_height_and_width_and_wins_over_the_experiment(compose_config):
    assert options("input_size") == ["128x64", "192x96", "256x128", "384x192"]
    for option in options("input_size"):
        cfg = compose_config("experiment=smoke", f"input_size={option}")
        assert f"{cfg.data.height}x{cfg.data.width}" == option
    shrunk = compose_config("input_size=384x192", "debug=smoke")
    assert (shrunk.data.height, shrunk.data.width) == (64, 32)
