"""DataLoaders for training (PK batches, augmentation) and evaluation (query then gallery, no augmentation)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from reid.data.cache import DecodedImages, decoded_images
from reid.data.pipeline import AugmentOnDevice, BatchTransform, EvalImages, NormalizeOnDevice, TrainImages
from reid.data.records import ImageRecord, ReidSplits
from reid.data.sampler import KeyedPKSampler
from reid.data.transforms import Augmentation

log = logging.getLogger("reid")


@dataclass
class Loaders:
    """The loaders of one process, and what the trainer and evaluator apply to their batches on the device."""

    train: DataLoader
    test: DataLoader
    num_query: int
    pipeline: str = "cpu"
    train_transform: BatchTransform = field(default_factory=BatchTransform)
    test_transform: BatchTransform = field(default_factory=BatchTransform)


def _seed_worker(worker_id: int) -> None:
    """Give numpy and python in each worker a seed derived from torch's, which the loader's generator sets."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def resolve_pipeline(name: str, device: torch.device) -> str:
    """`data.pipeline`: `auto` is `gpu` on a CUDA training device and `cpu` elsewhere."""
    if name == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    if name == "gpu" and device.type != "cuda":
        log.info("data.pipeline=gpu on %s: the batch augmentations run on CPU tensors in the main process "
                 "(data.pipeline=cpu spreads them over the loader workers)", device)
    return name


def augmentation(data: DictConfig) -> Augmentation:
    """The training recipe of the `data` config (resize and normalize only with `data.augment=false`)."""
    if not data.augment:
        return Augmentation.disabled(data.height, data.width)
    return Augmentation(data.height, data.width, flip_prob=data.flip_prob, pad=data.pad,
                        random_erasing_prob=data.random_erasing_prob)


def build_loaders(splits: ReidSplits, data: DictConfig, seed: int, device: torch.device | None = None,
                  num_replicas: int = 1, rank: int = 0) -> Loaders:
    """The loaders of one process; with `num_replicas` processes, the train loader yields this `rank`'s slice of
    every global `data.p x data.k` batch (see PKSampler).

    `data.cache` decodes the images once (training images first within `data.cache_max_gb`, then the query and
    gallery images), and `data.pipeline` picks where the augmentations run for the training `device`.
    """
    pipeline = resolve_pipeline(data.pipeline, device or torch.device("cpu"))
    recipe = augmentation(data)
    workers = data.num_workers
    evaluated = splits.query + splits.gallery
    train_images = decoded_images(data.cache, [r.path for r in splits.train], data.height, data.width,
                                  data.cache_max_gb, workers, "train", splits.root)
    left_gb = max(0.0, data.cache_max_gb - train_images.cached * train_images.image_bytes / 1e9)
    test_images = decoded_images(data.cache, [r.path for r in evaluated], data.height, data.width, left_gb,
                                 workers, "query+gallery", splits.root)
    on_device = pipeline == "gpu"
    # Page-locked batches only help (and only cost) when they are copied to a CUDA device.
    pin_memory = device is not None and device.type == "cuda"
    log.info("input pipeline: %s (data.pipeline=%s), data.cache=%s: %d of %d train and %d of %d query+gallery images "
             "cached", pipeline, data.pipeline, data.cache, train_images.cached, len(train_images), test_images.cached,
             len(test_images))
    sampler = KeyedPKSampler([record.pid for record in splits.train], p=data.p, k=data.k, seed=seed,
                             num_replicas=num_replicas, rank=rank)
    train = DataLoader(
        TrainImages(splits.train, train_images, recipe, augment_here=not on_device),
        batch_size=sampler.rank_batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker if workers else None,
        persistent_workers=False,
    )
    test = eval_loader(evaluated, test_images, recipe, data.test_batch_size, workers, normalize_here=not on_device,
                       pin_memory=pin_memory)
    if not on_device:
        return Loaders(train=train, test=test, num_query=len(splits.query), pipeline=pipeline)
    return Loaders(train=train, test=test, num_query=len(splits.query), pipeline=pipeline,
                   train_transform=AugmentOnDevice(recipe), test_transform=NormalizeOnDevice(recipe))


def eval_loader(records: Sequence[ImageRecord], images: DecodedImages, recipe: Augmentation, batch_size: int,
                num_workers: int, normalize_here: bool, pin_memory: bool) -> DataLoader:
    """Evaluation images in `records`' order, never augmented: the loader of the evaluation and of
    reid.inference."""
    return DataLoader(
        EvalImages(records, images, recipe, normalize_here=normalize_here),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def build_test_loader(splits: ReidSplits, data: DictConfig,
                      device: torch.device | None = None) -> tuple[DataLoader, BatchTransform]:
    """The evaluation loader alone (query images, then gallery), as `build_loaders` makes it: resized to
    `data.height x data.width` and normalized, never augmented; with the transform its batches go through on
    `device` under `data.pipeline`. For evaluating a trained model, which needs no training images."""
    pipeline = resolve_pipeline(data.pipeline, device or torch.device("cpu"))
    recipe = Augmentation.disabled(data.height, data.width)
    evaluated = splits.query + splits.gallery
    images = decoded_images(data.cache, [r.path for r in evaluated], data.height, data.width, data.cache_max_gb,
                            data.num_workers, "query+gallery", splits.root)
    on_device = pipeline == "gpu"
    loader = eval_loader(evaluated, images, recipe, data.test_batch_size, data.num_workers,
                         normalize_here=not on_device, pin_memory=device is not None and device.type == "cuda")
    return loader, NormalizeOnDevice(recipe) if on_device else BatchTransform()
