import pytest
import torch
from PIL import Image

from reid.data import build_transforms


def test_output_shapes_and_normalisation() -> None:
    train, test = build_transforms(64, 32)
    image = Image.new("RGB", (50, 130), (124, 116, 104))
    torch.manual_seed(0)
    for _ in range(5):
        assert train(image).shape == (3, 64, 32)
    out = test(image)
    assert out.shape == (3, 64, 32)
    # the ImageNet mean colour maps to ~0
    assert out.abs().max() < 0.02


def test_test_transform_is_deterministic_and_no_augment_matches() -> None:
    image = Image.effect_noise((40, 80), 60).convert("RGB")
    train, test = build_transforms(32, 16, augment=False)
    torch.manual_seed(1)
    assert torch.equal(train(image), test(image))
    assert torch.equal(test(image), test(image))


def test_disabled_steps_are_left_out() -> None:
    train, _ = build_transforms(32, 16, flip_prob=0, pad=0, random_erasing_prob=0)
    names = [type(step).__name__ for step in train.transforms]
    assert names == ["Resize", "ToTensor", "Normalize"]
    train, _ = build_transforms(32, 16)
    names = [type(step).__name__ for step in train.transforms]
    assert names == ["Resize", "RandomHorizontalFlip", "Pad", "RandomCrop", "ToTensor", "Normalize", "RandomErasing"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="flip_prob=2"):
        build_transforms(32, 16, flip_prob=2)
    with pytest.raises(ValueError, match="height=0"):
        build_transforms(0, 16)
    with pytest.raises(ValueError, match="pad=-1"):
        build_transforms(32, 16, pad=-1)
