"""The re-id augmentation recipe (flip, pad + crop, random erasing, normalize) as explicit per-image draws.

Every training image's random decisions come from ``numpy.random.default_rng([seed, epoch, position])``, the
position being its place in the epoch's global PK sequence, and are applied by one of two implementations:
:func:`augment_image` (one image in a loader worker, torchvision's functional ops: the CPU pipeline) and
:func:`augment_batch` (a whole uint8 batch on any device: the GPU pipeline). The same seed therefore gives the
same augmentations in both pipelines, after a resume, and with any number of processes.

Images arrive already resized to ``(height, width)`` (the recipe's first step, done once at decoding, see
:func:`reid.data.images.decode_resized`), as uint8 ``3 x H x W`` tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# One row of int64 per image: flip (0/1), crop top and left in the padded image, erased box (height 0: none).
DRAW_FIELDS = ("flip", "top", "left", "erase_top", "erase_left", "erase_height", "erase_width")
# torchvision's RandomErasing defaults: erased area as a share of the image, and the box's aspect ratio.
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10


@dataclass(frozen=True)
class Augmentation:
    """The training recipe's parameters and its random draws; a probability or pad of 0 leaves that step out."""

    height: int
    width: int
    flip_prob: float = 0.5
    pad: int = 10
    random_erasing_prob: float = 0.5
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if int(self.height) < 1 or int(self.width) < 1:
            raise ValueError(f"Augmentation: height={self.height!r}, width={self.width!r}: expected positive integers")
        for key in ("flip_prob", "random_erasing_prob"):
            value = getattr(self, key)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"Augmentation: {key}={value!r} is invalid: expected a probability in [0, 1]")
        if int(self.pad) < 0:
            raise ValueError(f"Augmentation: pad={self.pad!r} is invalid: expected an integer >= 0")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"Augmentation: mean={self.mean!r}, std={self.std!r}: expected 3 values each (RGB)")

    @classmethod
    def disabled(cls, height: int, width: int) -> Augmentation:
        """Resize and normalise only (``data.augment=false``)."""
        return cls(height, width, flip_prob=0.0, pad=0, random_erasing_prob=0.0)

    def draw(self, seed: int, epoch: int, position: int) -> np.ndarray:
        """The decisions (one row of :data:`DRAW_FIELDS`) for the image at `position` of epoch `epoch`.

        Same statistics as torchvision's RandomHorizontalFlip, RandomCrop after Pad and RandomErasing(value=0).
        """
        rng = np.random.default_rng([int(seed), int(epoch), int(position)])
        uniforms = rng.random(2)
        row = np.zeros(len(DRAW_FIELDS), dtype=np.int64)
        row[0] = uniforms[0] < self.flip_prob
        row[1:3] = rng.integers(0, 2 * int(self.pad) + 1, size=2)
        if uniforms[1] < self.random_erasing_prob:
            row[3:7] = self._erase_box(rng)
        return row

    def _erase_box(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """torchvision's RandomErasing.get_params: up to 10 tries at a box that fits, else nothing erased."""
        area = self.height * self.width
        log_ratio = (math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
        for _ in range(ERASE_ATTEMPTS):
            erase_area = area * rng.uniform(*ERASE_SCALE)
            aspect = math.exp(rng.uniform(*log_ratio))
            box_h = int(round(math.sqrt(erase_area * aspect)))
            box_w = int(round(math.sqrt(erase_area / aspect)))
            if box_h < self.height and box_w < self.width:
                top = int(rng.integers(0, self.height - box_h + 1))
                left = int(rng.integers(0, self.width - box_w + 1))
                return top, left, box_h, box_w
        return 0, 0, 0, 0


def _check_pixels(pixels: torch.Tensor, augmentation: Augmentation) -> None:
    expected = (3, augmentation.height, augmentation.width)
    if pixels.dtype != torch.uint8 or tuple(pixels.shape[-3:]) != expected:
        raise ValueError(f"expected uint8 images of shape (..., {expected}), got {pixels.dtype} {tuple(pixels.shape)}")


def normalize_image(pixels: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """uint8 ``3 x H x W`` to the model's input, as torchvision's ToTensor + Normalize compute it."""
    return TF.normalize(pixels.float().div(255), list(augmentation.mean), list(augmentation.std))


def augment_image(pixels: torch.Tensor, draw: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """Apply one image's draw (flip, pad + crop, normalize, erase) with torchvision's functional ops."""
    _check_pixels(pixels, augmentation)
    flip, top, left, erase_top, erase_left, erase_h, erase_w = (int(v) for v in draw)
    if flip:
        pixels = TF.hflip(pixels)
    if augmentation.pad:
        pixels = TF.crop(TF.pad(pixels, [augmentation.pad], fill=0), top, left, augmentation.height,
                         augmentation.width)
    image = normalize_image(pixels, augmentation)
    if erase_h:
        image = TF.erase(image, erase_top, erase_left, erase_h, erase_w, torch.tensor(0.0))
    return image


def normalize_batch(pixels: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """uint8 ``B x 3 x H x W`` to the model's input, on the tensor's device (the same arithmetic as one image)."""
    _check_pixels(pixels, augmentation)
    mean = torch.tensor(augmentation.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(augmentation.std, device=pixels.device).view(1, 3, 1, 1)
    return pixels.float().div(255).sub(mean).div(std)


def augment_batch(pixels: torch.Tensor, draws: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """Apply every image's draw to a uint8 ``B x 3 x H x W`` batch at once, on the batch's device."""
    _check_pixels(pixels, augmentation)
    draws = draws.to(pixels.device)
    batch, height, width = pixels.shape[0], augmentation.height, augmentation.width
    flip = draws[:, 0].bool().view(-1, 1, 1, 1)
    pixels = torch.where(flip, pixels.flip(-1), pixels)
    if augmentation.pad:
        padded = F.pad(pixels, [augmentation.pad] * 4)
        rows = draws[:, 1, None] + torch.arange(height, device=pixels.device)
        cols = draws[:, 2, None] + torch.arange(width, device=pixels.device)
        images = torch.arange(batch, device=pixels.device).view(-1, 1, 1)
        # Advanced indexing moves the channel axis last: B x H x W x 3.
        pixels = padded.permute(0, 2, 3, 1)[images, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    out = normalize_batch(pixels, augmentation)
    rows = torch.arange(height, device=pixels.device).view(1, -1, 1)
    cols = torch.arange(width, device=pixels.device).view(1, 1, -1)
    top, left, box_h, box_w = (draws[:, i].view(-1, 1, 1) for i in range(3, 7))
    erased = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    return out.masked_fill(erased[:, None], 0.0)


def eval_transform(height: int, width: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """PIL image to the model's input at test time (resize + normalize), for code that holds PIL images."""
    return T.Compose([T.Resize((int(height), int(width))), T.ToTensor(),
                      T.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std])])
