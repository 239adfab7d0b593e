"""The model pieces of published recipes: last stride 1, GeM pooling, center loss, SIE camera embedding and
overlapping ViT patches (backbone.last_stride, backbone.gem_p, loss.center_*, backbone.sie_*, backbone.patch_stride).

The ViT checks use open_clip's smallest ViT config (ViT-S-16) through the same OpenClipBackbone code path as
ViT-B-16, at 64x32 input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.engine.evaluator import extract_features
from reid.engine.precision import resolve_precision
from reid.errors import ConfigError
from reid.losses import ReidLoss
from reid.models import BNNeckHead, HeadOutput, OpenClipBackbone, ReidModel, TimmBackbone
from reid.models.pooling import GeneralizedMeanPooling

IMAGES = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))


def test_last_stride_one_doubles_a_timm_resnets_feature_map():
    torch.manual_seed(0)
    default = TimmBackbone("resnet18").eval()
    unstrided = TimmBackbone("resnet18", last_stride=1).eval()
    unstrided.load_state_dict(default.state_dict())  # the same weights: only strides change
    with torch.no_grad():
        assert default.model.forward_features(IMAGES).shape == (2, 512, 2, 1)
        assert unstrided.model.forward_features(IMAGES).shape == (2, 512, 4, 2)
        assert unstrided(IMAGES).shape == (2, 512)
    assert unstrided.model.layer4[0].conv1.stride == (1, 1)
    assert unstrided.model.layer4[0].downsample[0].stride == (1, 1)


def test_last_stride_one_on_clip_rn50_resizes_the_attention_pool_grid():
    backbone = OpenClipBackbone("RN50", image_size=(64, 32), last_stride=1).eval()
    shapes = {}

    def record(name: str):
        def hook(module, args, out) -> None:
            shapes[name] = tuple(out.shape)
        return hook

    for name in ("layer3", "layer4"):
        getattr(backbone.visual, name).register_forward_hook(record(name))
    with torch.no_grad():
        out = backbone(IMAGES)
    # Stride 32 would give a 2x1 map; layer4 now keeps layer3's 4x2 (total stride 16).
    assert shapes == {"layer3": (2, 1024, 4, 2), "layer4": (2, 2048, 4, 2)}
    assert backbone.grid == (4, 2)
    assert backbone.visual.attnpool.positional_embedding.shape == (4 * 2 + 1, 2048)
    assert out.shape == (2, 1024)
    with pytest.raises(ConfigError, match="RN50 needs multiples of 16"):
        OpenClipBackbone("RN50", image_size=(72, 32), last_stride=1)


@pytest.mark.parametrize("make,match", [
    (lambda: TimmBackbone("vit_tiny_patch16_224", last_stride=1), "has no ResNet stage `layer4`"),
    (lambda: TimmBackbone("resnet18", last_stride=3), "backbone.last_stride=3: expected 1"),
])
def test_last_stride_outside_resnets_is_a_clear_error(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_gem_with_p_one_is_average_pooling_and_p_three_by_hand():
    features = torch.rand(2, 8, 4, 2) + 0.1
    assert torch.allclose(GeneralizedMeanPooling(p=1.0)(features), features.mean(dim=(2, 3)), atol=1e-6)
    one_channel = torch.tensor([1.0, 2.0]).reshape(1, 1, 1, 2)
    assert GeneralizedMeanPooling(p=3.0)(one_channel).item() == pytest.approx(4.5 ** (1 / 3), rel=1e-6)
    learnable, fixed = GeneralizedMeanPooling(learnable=True), GeneralizedMeanPooling(learnable=False)
    assert [name for name, _ in learnable.named_parameters()] == ["p"] and not list(fixed.parameters())
    assert learnable.p.item() == 3.0 and learnable.eps == 1e-6

    torch.manual_seed(0)
    average = TimmBackbone("resnet18").eval()
    gem = TimmBackbone("resnet18", gem_p=1.0).eval()
    gem.load_state_dict(average.state_dict(), strict=False)  # all but GeM's own p
    with torch.no_grad():
        assert torch.allclose(gem(IMAGES), average(IMAGES), atol=1e-5)
    with pytest.raises(ConfigError, match="backbone.gem_p=0"):
        TimmBackbone("resnet18", gem_p=0)


def _center_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=generator), torch.tensor([0, 0, 1, 1, 2, 2])


def test_center_loss_trains_its_centres_with_their_own_sgd_at_lr_half():
    features, labels = _center_batch()
    torch.manual_seed(0)
    loss = ReidLoss(ce_weight=1.0, triplet_weight=0.0, center_weight=5e-4, center_lr=0.5, num_classes=3,
                    feature_dim=4)
    optimizer = loss.make_optimizer()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.5
    assert [p is loss.center.centers for p in optimizer.param_groups[0]["params"]] == [True]
    output = HeadOutput(logits=torch.zeros(6, 3), metric_features=features.requires_grad_())
    centers = loss.center.centers.detach().clone()
    parts = loss(output, labels)
    assert set(parts) == {"total", "ce", "center"}
    expected = (features.detach() - centers[labels]).pow(2).sum(dim=1).mean()
    assert parts["center"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["total"].item() == pytest.approx(parts["ce"].item() + 5e-4 * expected.item(), rel=1e-6)
    parts["total"].backward()
    # The features get the weighted gradient; the centres the unweighted one (BoT: their gradient / weight) ...
    pull = features.detach() - centers[labels]
    assert torch.allclose(features.grad, 5e-4 * 2 * pull / 6, atol=1e-9)
    unweighted = -2 * torch.stack([pull[labels == j].sum(dim=0) for j in range(3)]) / 6
    assert torch.allclose(loss.center.centers.grad, unweighted, atol=1e-6)
    optimizer.step()
    # ... so one SGD step moves them by 0.5 x that, whatever the weight.
    assert torch.allclose(loss.center.centers.detach(), centers - 0.5 * unweighted, atol=1e-6)


def test_center_loss_decreases_on_fixed_features():
    features, labels = _center_batch()
    loss = ReidLoss(ce_weight=1.0, triplet_weight=0.0, center_weight=5e-4, num_classes=3, feature_dim=4)
    optimizer = loss.make_optimizer()
    values = []
    for _ in range(30):
        parts = loss(HeadOutput(logits=torch.zeros(6, 3), metric_features=features), labels)
        values.append(parts["center"].item())
        optimizer.zero_grad()
        parts["total"].backward()
        optimizer.step()
    assert all(later < earlier for earlier, later in zip(values[:10], values[1:10]))
    # Each step moves a centre a third of the way to its class mean (0.5 x 2 images x 2 / 6); what is left at the
    # end is the spread of the features around their means.
    spread = torch.stack([(features[labels == j] - features[labels == j].mean(0)).pow(2).sum(1) for j in range(3)])
    assert values[-1] == pytest.approx(spread.mean().item(), rel=1e-4)
    assert values[0] > 2 * values[-1]
    assert ReidLoss().make_optimizer() is None


def test_overlapping_patches_give_the_formulas_grid():
    backbone = OpenClipBackbone("ViT-S-16", image_size=(64, 32), patch_stride=12).eval()
    # floor((H - 16) / 12) + 1: 64x32 -> 5 x 2; 256x128 -> 21 x 10 (CLIP-ReID's 210 patches).
    assert backbone.grid == (5, 2) and backbone._grid(256, 128) == (21, 10)
    assert backbone.visual.positional_embedding.shape == (5 * 2 + 1, 384)
    assert backbone.visual.conv1(IMAGES).shape[-2:] == (5, 2)
    with torch.no_grad():
        assert backbone(IMAGES).shape == (2, 384)
    # Without a camera embedding the backbone takes no camera ids, and the model ignores them.
    assert backbone.num_cameras is None
    model = ReidModel(backbone, BNNeckHead(384, 4), {}).eval()
    with torch.no_grad():
        assert torch.equal(model(IMAGES, camids=torch.tensor([0, 1])), model(IMAGES))


@pytest.fixture(scope="module")
def sie_backbone() -> OpenClipBackbone:
    torch.manual_seed(0)
    return OpenClipBackbone("ViT-S-16", image_size=(64, 32), sie_coefficient=3.0, num_cameras=3).eval()


@torch.no_grad()
def test_sie_changes_the_output_only_through_the_camera_id(sie_backbone):
    backbone = sie_backbone
    assert backbone.num_cameras == 3 and backbone.camera_embedding.shape == (3, 384)
    first, second = backbone(IMAGES, torch.tensor([0, 1])), backbone(IMAGES, torch.tensor([1, 1]))
    # Same image, same camera: the same output (whatever the other images); another camera: another output.
    assert torch.allclose(first[1], second[1], atol=1e-5) and not torch.allclose(first[0], second[0], atol=1e-4)
    # sie_tokens=cls is open_clip's own forward with coefficient x the camera's embedding added to the class token.
    original = backbone.visual.class_embedding.detach().clone()
    backbone.visual.class_embedding.add_(3.0 * backbone.camera_embedding[1])
    shifted = backbone.visual(IMAGES)
    backbone.visual.class_embedding.copy_(original)
    assert torch.allclose(second, shifted, atol=1e-5)
    # sie_tokens=all adds it to every token: the same as adding it to every position embedding.
    backbone.sie_tokens = "all"
    try:
        every = backbone(IMAGES, torch.tensor([1, 1]))
    finally:
        backbone.sie_tokens = "cls"
    positions = backbone.visual.positional_embedding.detach().clone()
    backbone.visual.positional_embedding.add_(3.0 * backbone.camera_embedding[1])
    shifted = backbone.visual(IMAGES)
    backbone.visual.positional_embedding.copy_(positions)
    assert torch.allclose(every, shifted, atol=1e-5) and not torch.allclose(every, second, atol=1e-4)


@torch.no_grad()
def test_sie_camera_ids_reach_the_model_in_evaluation(sie_backbone):
    model = ReidModel(sie_backbone, BNNeckHead(384, 4), {}).eval()
    camids = torch.tensor([0, 1])
    loader = [(IMAGES, torch.tensor([1, 2]), camids, torch.tensor([0, 1]))]
    features, pids, cams = extract_features(model, loader, torch.device("cpu"),
                                            resolve_precision("32", None, torch.device("cpu")))
    assert np.array_equal(cams, [0, 1]) and np.array_equal(pids, [1, 2])
    assert torch.allclose(features, model(IMAGES, camids=camids), atol=1e-6)
    # Without camera ids (an image from an unknown camera) no embedding is added: open_clip's forward as it is.
    plain = model(IMAGES)
    assert torch.equal(plain, model.head(sie_backbone.visual(IMAGES)))
    assert not torch.allclose(features, plain, atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    ({"model_name": "RN50", "sie_coefficient": 3.0}, "sie_coefficient=3.0: RN50 is a ModifiedResNet"),
    ({"model_name": "RN50", "patch_stride": 12}, "patch_stride=12: RN50 is a ModifiedResNet"),
    ({"model_name": "ViT-S-16", "last_stride": 1}, "last_stride=1: ViT-S-16 is a ViT"),
    ({"model_name": "ViT-S-16", "sie_coefficient": 3.0, "sie_tokens": "patches"}, "sie_tokens='patches'"),
])
def test_options_for_the_other_architecture_are_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        OpenClipBackbone(image_size=(64, 32), **kwargs)


def test_sie_model_gets_the_datasets_cameras_and_trains_on_camera_ids(compose_config, tmp_path):
    from reid.config import validate_targets
    from reid.engine.build import build_experiment, build_trainer

    cfg = compose_config("experiment=smoke", "backbone=clip_vit_b16", "backbone.model_name=ViT-S-16",
                         "backbone.sie_coefficient=3.0", "backbone.patch_stride=12")
    validate_targets(cfg)
    experiment = build_experiment(cfg)
    splits, model = experiment.splits, experiment.model
    num_cameras = 1 + max(r.camid for r in splits.train + splits.query + splits.gallery)
    assert splits.num_cameras == num_cameras > 1
    assert model.architecture["num_cameras"] == num_cameras
    assert model.backbone.camera_embedding.shape == (num_cameras, 384) and model.backbone.grid == (5, 2)
    trainer = build_trainer(cfg, experiment, tmp_path, [])
    images, pids, camids, _ = next(iter(experiment.loaders.train))
    trainer.model.train()
    trainer.train_step(images, pids, epoch=1, step=1, camids=camids)
    # The training step passed each image's camera: exactly the rows of the batch's cameras got a gradient.
    gradient = model.backbone.camera_embedding.grad.abs().sum(dim=1)
    assert [bool(g > 0) for g in gradient] == [c in set(camids.tolist()) for c in range(num_cameras)]
    with pytest.raises(ConfigError, match="backbone.num_cameras is set by reid itself"):
        validate_targets(compose_config("experiment=smoke", "backbone=clip_vit_b16", "+backbone.num_cameras=2"))
