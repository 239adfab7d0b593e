"""Where the augmentations run (``data.pipeline``): per image in the loader workers, or on whole batches on the
training device.

- ``cpu``: the workers decode (or read from the cache), augment and normalize every image; the batch is ready.
- ``gpu``: the workers only read the uint8 image and draw its decisions; the trainer hands the batch to
  :class:`AugmentOnDevice` once it is on the device (the evaluator to :class:`NormalizeOnDevice`). On a CPU
  training device this runs on CPU tensors in the main process: the same code, useful for checking it.

Both apply the same draws (:mod:`reid.data.transforms`), so they give the same images for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from reid.data.cache import DecodedImages
from reid.data.records import ImageRecord
from reid.data.sampler import DrawKey
from reid.data.transforms import Augmentation, augment_batch, augment_image, normalize_batch, normalize_image


class TrainImages(Dataset):
    """Training items ``(image, pid, camid, index)`` for the :class:`~reid.data.sampler.DrawKey` s of a
    :class:`~reid.data.sampler.KeyedPKSampler`.

    With `augment_here` (the CPU pipeline) the image is the augmented float tensor; otherwise it is
    ``{"pixels": uint8 3 x H x W, "draw": its decisions}`` for :class:`AugmentOnDevice`.
    """

    def __init__(self, records: Sequence[ImageRecord], images: DecodedImages, augmentation: Augmentation,
                 augment_here: bool) -> None:
        self.records = list(records)
        self.images = images
        self.augmentation = augmentation
        self.augment_here = augment_here

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: DrawKey) -> tuple[Any, int, int, int]:
        record = self.records[key.index]
        pixels = self.images[key.index]
        draw = torch.from_numpy(self.augmentation.draw(key.seed, key.epoch, key.position))
        image = augment_image(pixels, draw, self.augmentation) if self.augment_here else {"pixels": pixels,
                                                                                         "draw": draw}
        return image, record.pid, record.camid, key.index


class EvalImages(Dataset):
    """Evaluation items ``(image, pid, camid, index)``: resized and normalized, or (`normalize_here` false) the
    uint8 image for :class:`NormalizeOnDevice`."""

    def __init__(self, records: Sequence[ImageRecord], images: DecodedImages, augmentation: Augmentation,
                 normalize_here: bool) -> None:
        self.records = list(records)
        self.images = images
        self.augmentation = augmentation
        self.normalize_here = normalize_here

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        record = self.records[index]
        pixels = self.images[index]
        image = normalize_image(pixels, self.augmentation) if self.normalize_here else pixels
        return image, record.pid, record.camid, index


class BatchTransform:
    """What a batch's images go through after the loader, on the device: nothing (the CPU pipeline made them)."""

    def __call__(self, images: Any, device: torch.device) -> torch.Tensor:
        return images


class AugmentOnDevice(BatchTransform):
    """Move a ``{"pixels", "draw"}`` batch to the device and apply its draws there (the GPU pipeline)."""

    def __init__(self, augmentation: Augmentation) -> None:
        self.augmentation = augmentation

    def __call__(self, images: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        pixels = images["pixels"].to(device, non_blocking=True)
        return augment_batch(pixels, images["draw"].to(device, non_blocking=True), self.augmentation)


class NormalizeOnDevice(BatchTransform):
    """Move a uint8 batch to the device and normalize it there (evaluation under the GPU pipeline)."""

    def __init__(self, augmentation: Augmentation) -> None:
        self.augmentation = augmentation

    def __call__(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        return normalize_batch(images.to(device, non_blocking=True), self.augmentation)
