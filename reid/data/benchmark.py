"""How many training images per second the input pipeline delivers on its own (no model, no step).

`loader_images_per_second` times any loader; the CLI builds the training loader of a composed config::

    python -m reid.data.benchmark input_size=256x128 data.num_workers=2 data.cache=ram --batches 30

Arguments other than ``--batches`` and ``--warmup`` are Hydra overrides of ``conf/config.yaml``. With
``data.pipeline=gpu`` the batch transform runs too (on the training device), so the figure is what the step gets;
``--skip-transform`` times the workers' side alone.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class LoaderTiming:
    """Images per second over the timed batches, after `warmup` untimed ones (worker start-up, first decodes)."""

    images: int
    seconds: float
    warmup: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


def _count(images: Any) -> int:
    return len(images["pixels"]) if isinstance(images, dict) else len(images)


def loader_images_per_second(loader: Iterable, batches: int, warmup: int = 2,
                             transform: Callable[[Any, torch.device], Any] | None = None,
                             device: torch.device | None = None) -> LoaderTiming:
    """Time `batches` batches of `loader` (after `warmup` untimed ones), applying `transform(images, device)`
    to each as the trainer does. A loader with a `sampler.set_epoch` is advanced an epoch when it runs out."""
    device = device or torch.device("cpu")
    sampler = getattr(loader, "sampler", None)

    def stream() -> Iterable:
        for epoch in itertools.count(1):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            yield from loader

    images, started = 0, time.perf_counter()
    for number, (batch, *_rest) in enumerate(itertools.islice(stream(), warmup + batches)):
        if number == warmup:
            images, started = 0, time.perf_counter()
        out = transform(batch, device) if transform is not None else batch
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        images += _count(out) if number >= warmup else 0
    return LoaderTiming(images=images, seconds=time.perf_counter() - started, warmup=warmup)


def main(argv: Sequence[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from reid.config import register_configs, validate_targets
    from reid.data.loaders import build_loaders
    from reid.engine.build import resolve_device

    parser = argparse.ArgumentParser(prog="python -m reid.data.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="timed batches (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    parser.add_argument("--skip-transform", action="store_true",
                        help="time the loader workers only, without the batch transform of data.pipeline=gpu")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.cache=ram")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_configs()
    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(args.overrides))
    validate_targets(cfg)
    device = resolve_device(cfg.trainer.device)
    splits = instantiate(cfg.dataset).load()
    started = time.perf_counter()
    loaders = build_loaders(splits, cfg.data, seed=cfg.trainer.seed, device=device)
    setup = time.perf_counter() - started
    transform = None if args.skip_transform else loaders.train_transform
    timing = loader_images_per_second(loaders.train, args.batches, args.warmup, transform, device)
    load = os.getloadavg()[0]
    print(f"{splits.name}: {len(splits.train)} train images at {cfg.data.height}x{cfg.data.width}, "
          f"batch {loaders.train.batch_size}, data.num_workers={cfg.data.num_workers}, "
          f"data.pipeline={loaders.pipeline}{' (workers only)' if args.skip_transform else ''}, "
          f"data.cache={cfg.data.cache} (set-up {setup:.1f} s)")
    print(f"{timing.images_per_second:.0f} images/s over {args.batches} batches after {args.warmup} "
          f"({timing.images} images in {timing.seconds:.2f} s; 1-min load average {load:.1f})")


if __name__ == "__main__":
    main()
