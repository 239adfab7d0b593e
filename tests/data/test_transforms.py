import numpy as np
import pytest
import torch
from PIL import Image

from reid.data import Augmentation, augment_batch, augment_image, decode_resized, eval_transform
from reid.data.transforms import normalize_batch, normalize_image


def _draws(recipe: Augmentation, count: int, seed: int = 0, epoch: int = 1) -> torch.Tensor:
    return torch.stack([torch.from_numpy(recipe.draw(seed, epoch, position)) for position in range(count)])


def test_draws_keep_the_recipe_statistics_and_depend_only_on_the_key() -> None:
    recipe = Augmentation(64, 32, flip_prob=0.5, pad=10, random_erasing_prob=0.5)
    draws = _draws(recipe, 2000).numpy()
    flip, top, left, erase_top, erase_left, erase_h, erase_w = draws.T
    assert 0.46 < flip.mean() < 0.54
    assert set(top) == set(left) == set(range(21))  # RandomCrop of the 10-padded image: offsets 0..20
    erased = erase_h > 0
    assert 0.44 < erased.mean() < 0.53  # p=0.5, minus the rare draws where no box fits in 10 tries
    area = erase_h[erased] * erase_w[erased] / (64 * 32)
    assert area.min() >= 0.015 and area.max() <= 0.34  # torchvision's scale (0.02, 0.33), after rounding
    assert (erase_top + erase_h <= 64).all() and (erase_left + erase_w <= 32).all()
    assert np.array_equal(recipe.draw(0, 1, 7), draws[7])
    assert not np.array_equal(recipe.draw(0, 2, 7), draws[7]) and not np.array_equal(recipe.draw(1, 1, 7), draws[7])
    off = _draws(Augmentation(64, 32, flip_prob=0, pad=0, random_erasing_prob=0), 50)
    assert not off.any()


def test_per_image_and_batch_pipelines_give_identical_images() -> None:
    # The CPU pipeline (torchvision's functional ops, one image) and the batch pipeline (indexing and masks on a
    # whole batch) apply the same draws; on CPU tensors the float arithmetic is the same, so they agree exactly.
    recipe = Augmentation(64, 32)
    pixels = torch.randint(0, 256, (40, 3, 64, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    draws = _draws(recipe, 40)
    assert draws[:, 0].any() and (draws[:, 5] > 0).any()
    one_by_one = torch.stack([augment_image(pixels[i], draws[i], recipe) for i in range(40)])
    batched = augment_batch(pixels, draws, recipe)
    assert batched.dtype == torch.float32 and batched.shape == (40, 3, 64, 32)
    assert torch.equal(one_by_one, batched)
    # A flipped, shifted image really is moved: with no erasing, the crop at offset pad is the flip itself.
    plain = torch.tensor([1, 10, 10, 0, 0, 0, 0])
    assert torch.equal(augment_image(pixels[0], plain, recipe), normalize_image(pixels[0].flip(-1), recipe))
    assert torch.equal(normalize_batch(pixels, recipe), torch.stack([normalize_image(p, recipe) for p in pixels]))


def test_eval_transform_equals_decoding_then_normalizing(tmp_path) -> None:
    path = tmp_path / "a.jpg"
    Image.effect_noise((50, 130), 60).convert("RGB").save(path)
    recipe = Augmentation(64, 32)
    pixels = torch.from_numpy(decode_resized(str(path), 64, 32)).permute(2, 0, 1)
    with Image.open(path) as image:
        expected = eval_transform(64, 32)(image.convert("RGB"))
    assert torch.equal(normalize_image(pixels, recipe), expected)
    assert normalize_image(torch.full((3, 64, 32), 124, dtype=torch.uint8), recipe)[0].abs().max() < 0.02


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="flip_prob=2"):
        Augmentation(32, 16, flip_prob=2)
    with pytest.raises(ValueError, match="height=0"):
        Augmentation(0, 16)
    with pytest.raises(ValueError, match="pad=-1"):
        Augmentation(32, 16, pad=-1)
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(\.\.\., \(3, 32, 16\)\)"):
        augment_batch(torch.zeros(2, 3, 32, 16), torch.zeros(2, 7, dtype=torch.int64), Augmentation(32, 16))
