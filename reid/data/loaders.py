"""DataLoaders for training (PK batches, augmentation) and evaluation (query then gallery, no augmentation)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from reid.data.images import ImageDataset
from reid.data.records import ReidSplits
from reid.data.sampler import PKSampler
from reid.data.transforms import build_transforms


@dataclass
class Loaders:
    train: DataLoader
    test: DataLoader
    num_query: int


def _seed_worker(worker_id: int) -> None:
    """Give numpy and python in each worker a seed derived from torch's, which the loader's generator sets."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loaders(splits: ReidSplits, data: DictConfig, seed: int, num_replicas: int = 1, rank: int = 0) -> Loaders:
    """The loaders of one process; with `num_replicas` processes, the train loader yields this `rank`'s slice of
    every global `data.p x data.k` batch (see PKSampler)."""
    train_transform, test_transform = build_transforms(
        data.height,
        data.width,
        augment=data.augment,
        flip_prob=data.flip_prob,
        pad=data.pad,
        random_erasing_prob=data.random_erasing_prob,
    )
    sampler = PKSampler([record.pid for record in splits.train], p=data.p, k=data.k, seed=seed,
                        num_replicas=num_replicas, rank=rank)
    workers = data.num_workers
    train = DataLoader(
        ImageDataset(splits.train, train_transform),
        batch_size=sampler.rank_batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_seed_worker if workers else None,
        persistent_workers=False,
    )
    test = DataLoader(
        ImageDataset(splits.query + splits.gallery, test_transform),
        batch_size=data.test_batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )
    return Loaders(train=train, test=test, num_query=len(splits.query))
