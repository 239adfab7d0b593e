"""Backbones build, run at ReID input sizes, and load local weights; offline pretrained fails clearly."""

from __future__ import annotations

import pytest
import torch

from reid.checkpoint import save_model_file
from reid.errors import CheckpointError, ConfigError, PretrainedWeightsUnavailable
from reid.models.backbones import OpenClipBackbone, TimmBackbone, _resize_grid_embedding


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50", 2048)])
def test_timm_backbone_pools_features(name, dim):
    backbone = TimmBackbone(name).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 64, 32))
    assert backbone.feature_dim == dim
    assert out.shape == (2, dim)


def test_unknown_timm_name_is_a_clear_error():
    with pytest.raises(ConfigError, match="resnet18x"):
        TimmBackbone("resnet18x")


def test_timm_local_weights_load_exactly(tmp_path):
    source = TimmBackbone("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(source.model.state_dict(), path)
    target = TimmBackbone("resnet18", weights=str(path))
    for key, value in source.model.state_dict().items():
        assert torch.equal(value, target.model.state_dict()[key]), key


def test_weights_from_a_reid_model_file_skip_the_classifier(tmp_path, caplog):
    from reid.models import BNNeckHead, ReidModel

    source = ReidModel(TimmBackbone("resnet18"), BNNeckHead(512, 7), {"backbone": "resnet18"})
    path = tmp_path / "best_model.pth"
    save_model_file(path, source, source.architecture, {})
    with caplog.at_level("INFO"):
        target = TimmBackbone("resnet18", weights=str(path))
    assert torch.equal(target.model.conv1.weight, source.backbone.model.conv1.weight)
    assert "loaded" in caplog.text and "0 left at their initial values" in caplog.text


def test_weights_for_another_architecture_name_the_mismatch(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(TimmBackbone("resnet50").model.state_dict(), path)
    with pytest.raises(CheckpointError, match="another architecture.*differ in shape"):
        TimmBackbone("resnet18", weights=str(path))


def test_weights_with_no_matching_key_fail(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="none of its 1 keys match"):
        TimmBackbone("resnet18", weights=str(path))


@pytest.mark.parametrize("backbone", [
    lambda: TimmBackbone("resnet18", pretrained=True),
    lambda: OpenClipBackbone("RN50", pretrained=True, image_size=(64, 32)),
])
def test_pretrained_offline_names_both_options(backbone):
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        backbone()
    assert "backbone.weights=" in str(info.value) and "backbone.pretrained=false" in str(info.value)


def test_clip_vit_runs_at_a_reid_size_with_interpolated_positions():
    backbone = OpenClipBackbone("ViT-B-16", image_size=(64, 32)).eval()
    assert backbone.grid == (4, 2)
    assert backbone.visual.positional_embedding.shape == (4 * 2 + 1, 768)
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, backbone.feature_dim) == (1, 512)


def test_clip_rn50_runs_at_a_reid_size(tmp_path):
    backbone = OpenClipBackbone("RN50", image_size=(64, 32)).eval()
    assert backbone.visual.attnpool.positional_embedding.shape == (2 * 1 + 1, 2048)
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 1024)


def test_clip_local_weights_at_pretraining_size_are_resized(tmp_path):
    import open_clip

    clip = open_clip.create_model("RN50")
    path = tmp_path / "clip_rn50.pth"
    torch.save(clip.state_dict(), path)
    backbone = OpenClipBackbone("RN50", weights=str(path), image_size=(64, 32))
    assert torch.equal(backbone.visual.conv1.weight, clip.visual.conv1.weight)
    expected = _resize_grid_embedding(clip.visual.attnpool.positional_embedding.data, (2, 1))
    assert torch.allclose(backbone.visual.attnpool.positional_embedding, expected)


def test_clip_size_must_fit_the_stride():
    with pytest.raises(ConfigError, match="multiples of 16"):
        OpenClipBackbone("ViT-B-16", image_size=(70, 32))


def test_grid_resize_keeps_the_class_token_and_a_constant_field():
    embedding = torch.ones(1 + 7 * 7, 4)
    embedding[0] = 5.0
    resized = _resize_grid_embedding(embedding, (8, 4))
    assert resized.shape == (33, 4)
    assert torch.equal(resized[0], torch.full((4,), 5.0))
    assert torch.allclose(resized[1:], torch.ones(32, 4), atol=1e-5)
