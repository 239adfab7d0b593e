"""CLIP-ReID's prompt stage (`stage.step: {_target_: reid.engine.prompt_learning.PromptLearning}`).

Image and text encoders are frozen, so each training image's feature is computed once, without augmentation, at
the start of the stage and kept in memory; the stage then trains only the identity prompts (head=clipreid) on
random batches of those features with the image<->text contrastive loss (loss=prompt_contrastive). Its evaluation
is the image-to-text retrieval accuracy on the training images, `i2t_top1`: for each cached feature, is its own
identity's text feature the nearest of all identities'? That is the stage's monitor, so best_model.pth holds the
prompts that retrieve best.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from reid.data.pipeline import EvalImages
from reid.data.transforms import Augmentation
from reid.engine import distributed
from reid.engine.evaluator import extract_features
from reid.engine.hooks import Hook
from reid.errors import ConfigError
from reid.losses.clipreid import PromptOutput

if TYPE_CHECKING:
    from reid.engine.build import Experiment
    from reid.engine.trainer import Trainer

log = logging.getLogger("reid")

I2T_MONITOR = "i2t_top1"


class EpochPermutation(Sampler[int]):
    """A fresh random order of `size` items every epoch, drawn from (seed, epoch) alone, so a resumed run
    replays the same batches."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class CachedFeatures(Dataset):
    """Items `(feature, pid, camid, index)` of the cached image features, filled by PromptLearning.before_train."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.features: torch.Tensor | None = None
        self.pids: torch.Tensor | None = None
        self.camids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        if self.features is None or self.pids is None or self.camids is None:
            raise RuntimeError("the image features are cached at the start of training (PromptLearning)")
        return self.features[index], self.pids[index], self.camids[index], index


class PromptLearning(Hook):
    """The prompt stage's step: what the trainer trains on (the cached features), how a batch becomes its
    losses (the prompts' text features against the batch's image features) and how an epoch is scored."""

    monitors = (I2T_MONITOR,)

    def __init__(self, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ConfigError(f"stage.step.batch_size={batch_size}: expected an integer >= 1")
        self.batch_size = batch_size
        self.cache = CachedFeatures(0)

    def trainer_parts(self, experiment: Experiment, seed: int) -> dict[str, Any]:
        """The Trainer arguments this step replaces: train loader, evaluation, batch losses, no image transform."""
        if distributed.world_size() > 1:
            raise ConfigError("stage.step=PromptLearning trains in one process: run the prompt stage without "
                              "torchrun")
        head = experiment.model.head
        if not hasattr(head, "prompt_learner"):
            raise ConfigError(f"stage.step=PromptLearning trains identity prompts: it needs head=clipreid, got "
                              f"{type(head).__name__}")
        self.experiment = experiment
        self.cache = CachedFeatures(len(experiment.splits.train))
        loader = DataLoader(self.cache, batch_size=self.batch_size, sampler=EpochPermutation(len(self.cache), seed))
        return {"train_loader": loader, "evaluate": self.evaluate, "batch_losses": self.batch_losses,
                "batch_transform": None, "memory_format": torch.contiguous_format}

    def _train_images(self) -> DataLoader:
        """The training images resized and normalised only, in order."""
        loaders = self.experiment.loaders
        train = loaders.train.dataset
        recipe = Augmentation.disabled(train.augmentation.height, train.augmentation.width)
        return DataLoader(EvalImages(self.experiment.splits.train, train.images, recipe, normalize_here=True),
                          batch_size=loaders.test.batch_size, shuffle=False, num_workers=loaders.test.num_workers)

    def before_train(self, trainer: Trainer) -> None:
        experiment = self.experiment
        features, pids, camids = extract_features(experiment.model.backbone, self._train_images(), experiment.device,
                                                  experiment.precision, experiment.memory_format)
        device = experiment.device
        self.cache.features = experiment.model.head.image_text_features(features).to(device)
        self.cache.pids = torch.from_numpy(pids).long().to(device)
        self.cache.camids = torch.from_numpy(camids).long().to(device)
        log.info("prompt stage: cached the image features of %d training images (%d identities)", len(pids),
                 experiment.model.head.num_classes)

    def batch_losses(self, features: torch.Tensor, pids: torch.Tensor,
                     camids: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The contrastive losses of cached image features against their identities' prompts (cameras unused)."""
        head = self.experiment.model.head
        text = head.text_features(pids)
        losses = self.experiment.criterion(PromptOutput(features, text, head.text.logit_scale), pids)
        with torch.no_grad():
            nearest = (F.normalize(features.float(), dim=1) @ F.normalize(text.float(), dim=1).t()).argmax(dim=1)
        return losses, (pids[nearest] == pids).sum()

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """`i2t_top1` of the cached training features against every identity's text feature."""
        features, pids = self.cache.features, self.cache.pids
        if features is None or pids is None:
            raise RuntimeError("the image features are cached at the start of training (PromptLearning)")
        with self.experiment.precision.autocast():
            text = F.normalize(model.head.all_text_features(), dim=1)
        hits = sum(int(((F.normalize(chunk.float(), dim=1) @ text.t()).argmax(dim=1) == labels).sum())
                   for chunk, labels in zip(features.split(1024), pids.split(1024)))
        return {I2T_MONITOR: hits / len(pids)}
