"""Standard re-id image pipelines (resize, flip, pad+crop, erasing)."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision.transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int,
    width: int,
    augment: bool = True,
    flip_prob: float = 0.5,
    pad: int = 10,
    random_erasing_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[T.Compose, T.Compose]:
    """Return ``(train_transform, test_transform)`` mapping a PIL image to a normalised tensor.

    Train adds horizontal flip, pad + random crop back to ``(height, width)`` and random
    erasing (the usual re-id baseline recipe) when ``augment`` is true; a probability or
    pad of 0 leaves that step out. Test only resizes and normalises, so features are
    deterministic.
    """
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"build_transforms: height={height!r}, width={width!r}: expected positive integers")
    for key, value in (("flip_prob", flip_prob), ("random_erasing_prob", random_erasing_prob)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"build_transforms: {key}={value!r} is invalid: expected a probability in [0, 1]")
    if int(pad) < 0:
        raise ValueError(f"build_transforms: pad={pad!r} is invalid: expected an integer >= 0")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"build_transforms: mean={mean!r}, std={std!r}: expected 3 values each (RGB)")

    size = (int(height), int(width))
    normalize = T.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std])
    test_transform = T.Compose([T.Resize(size), T.ToTensor(), normalize])
    if not augment:
        return T.Compose([T.Resize(size), T.ToTensor(), normalize]), test_transform

    steps: list[object] = [T.Resize(size)]
    if flip_prob > 0:
        steps.append(T.RandomHorizontalFlip(p=float(flip_prob)))
    if pad > 0:
        steps += [T.Pad(int(pad)), T.RandomCrop(size)]
    steps += [T.ToTensor(), normalize]
    if random_erasing_prob > 0:
        steps.append(T.RandomErasing(p=float(random_erasing_prob), value=0))
    return T.Compose(steps), test_transform
