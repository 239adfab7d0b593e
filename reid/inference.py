"""Embeddings of a trained model for any images, through the evaluation's own test-time path.

`FeatureExtractor` takes image paths, PIL images or tensors and prepares them as evaluation does: decoded and
resized by reid.data.images, normalised by reid.data.transforms, embedded by reid.engine.evaluator.embed (with
flip test-time augmentation if asked), then L2-normalised. Its embeddings of a run's query and gallery images
equal the evaluation's (`extract_features` on the run's test loader), L2-normalised. `reid.extract` runs it over
dataset splits; import it as `from reid.inference import FeatureExtractor`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from reid.data.cache import DecodedImages
from reid.data.images import decode_resized, resize_image
from reid.data.loaders import eval_loader
from reid.data.records import ImageRecord
from reid.data.transforms import Augmentation, normalize_image
from reid.engine.build import resolve_device
from reid.engine.evaluator import embed
from reid.engine.precision import resolve_precision
from reid.errors import ConfigError
from reid.models.loading import TrainedModel, load_trained_model

# An image path, a PIL image, or a tensor: uint8 3 x H x W (any size, RGB 0-255; resized like a decoded file) or
# floating point 3 x height x width already normalised with the model's mean and std (used as is).
ImageInput = str | os.PathLike | Image.Image | torch.Tensor


class FeatureExtractor:
    """L2-normalised float32 embeddings (N x D, on CPU) of a trained model, for paths, PIL images or tensors.

    `model` is a run directory, a model file (best_model.pth, model_final.pth) or an already loaded
    TrainedModel. `flip` averages each image's and its mirror image's embedding before normalising (the
    evaluator's flip test-time augmentation); `precision` is a `trainer.precision` name (`32` by default; `auto`
    reproduces a CUDA run's evaluation, which autocasts to float16).
    """

    def __init__(self, model: str | Path | TrainedModel, device: str | torch.device = "cpu", flip: bool = False,
                 batch_size: int = 128, precision: str = "32") -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: expected an integer >= 1")
        self.device = resolve_device(device, key="device")
        self.trained = model if isinstance(model, TrainedModel) else load_trained_model(model, self.device)
        self.trained.model.to(self.device).eval()
        self.flip = flip
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, None, self.device)
        self.recipe = Augmentation(self.trained.height, self.trained.width, flip_prob=0.0, pad=0,
                                   random_erasing_prob=0.0, mean=self.trained.mean, std=self.trained.std)

    @property
    def embedding_dim(self) -> int:
        return int(self.trained.model.architecture["feature_dim"])

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """One image as the model's float32 3 x height x width input, exactly as the evaluation prepares it."""
        height, width = self.trained.height, self.trained.width
        if isinstance(image, (str, os.PathLike)):
            pixels = decode_resized(str(image), height, width)
        elif isinstance(image, Image.Image):
            pixels = resize_image(image if image.mode == "RGB" else image.convert("RGB"), height, width)
        elif torch.is_tensor(image) and image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
            pixels = resize_image(TF.to_pil_image(image.cpu()), height, width)
        elif torch.is_tensor(image) and image.is_floating_point():
            if tuple(image.shape) != (3, height, width):
                raise ConfigError(f"a floating-point image must be the model's normalised input of shape "
                                  f"(3, {height}, {width}), got {tuple(image.shape)}; pass uint8 3 x H x W "
                                  "pixels (or a path or PIL image) to have it resized and normalised")
            return image.float()
        elif torch.is_tensor(image):
            raise ConfigError(f"an image tensor must be uint8 3 x H x W (RGB pixels) or float 3 x {height} x "
                              f"{width} (normalised), got {image.dtype} {tuple(image.shape)}")
        else:
            raise ConfigError(f"cannot embed a {type(image).__name__}: expected an image path, a PIL image or a "
                              "tensor")
        return normalize_image(torch.from_numpy(pixels).permute(2, 0, 1), self.recipe)

    @torch.no_grad()
    def embed(self, batch: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised embeddings of a batch of model inputs (B x 3 x height x width, normalised); `camids`
        (each image's camera) reach a model with a camera embedding (SIE), as in its evaluation."""
        batch = batch.to(self.device, non_blocking=True)
        camids = None if camids is None else torch.as_tensor(camids, dtype=torch.long).to(self.device)
        with self.precision.autocast():
            embedding = embed(self.trained.model, batch, self.flip, camids)
        return F.normalize(embedding.float(), dim=1).cpu()

    def __call__(self, images: Sequence[ImageInput] | ImageInput,
                 camids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (N x D) of a list of images, one image, or a batch tensor (N x 3 x H x W); `camids`, one
        camera id per image, for a model with a camera embedding (without them it adds none)."""
        if torch.is_tensor(images) and images.ndim == 4:
            images = list(images.unbind(0))
        elif isinstance(images, (str, os.PathLike, Image.Image)) or torch.is_tensor(images):
            images = [images]
        images = list(images)
        cameras = None if camids is None else torch.as_tensor(camids, dtype=torch.long).reshape(-1)
        if cameras is not None and len(cameras) != len(images):
            raise ConfigError(f"camids: {len(cameras)} camera ids for {len(images)} images; expected one per image")
        if not images:
            return torch.empty((0, self.embedding_dim), dtype=torch.float32)
        starts = range(0, len(images), self.batch_size)
        return torch.cat([
            self.embed(torch.stack([self.prepare(image) for image in images[start:start + self.batch_size]]),
                       None if cameras is None else cameras[start:start + self.batch_size])
            for start in starts])

    def embed_records(self, records: Sequence[ImageRecord], num_workers: int = 0) -> torch.Tensor:
        """Embeddings of dataset records in order, decoded by `num_workers` loader processes (the evaluation's
        Dataset classes: DecodedImages + EvalImages)."""
        return torch.cat(list(self._record_batches(records, num_workers)) or
                         [torch.empty((0, self.embedding_dim), dtype=torch.float32)])

    def _record_batches(self, records: Sequence[ImageRecord], num_workers: int) -> Iterator[torch.Tensor]:
        images = DecodedImages([record.path for record in records], self.trained.height, self.trained.width)
        loader = eval_loader(records, images, self.recipe, self.batch_size, num_workers, normalize_here=True,
                             pin_memory=self.device.type == "cuda")
        for batch, _, camids, _ in loader:
            yield self.embed(batch, camids)
