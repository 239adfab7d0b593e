"""Images per second of the training loop, and of its two halves alone (`nox -s benchmark -- train`).

    python -m reid.engine.benchmark [--backbones resnet18,resnet50,clip_vit_b16] [--precisions 32,bf16-mixed]
                                    [--channels-last on,off] [--compile off] [--pipelines cpu,gpu]
                                    [--p 16 --k 4] [--workers 2]
                                    [--steps 10 --warmup 2] [--device auto]

For every combination of backbone, precision and pipeline option it builds the run the way `reid.train` does
(the real configs, composed by Hydra, at 256x128 from Market-1501-sized 128x64 synthetic images) and measures:

- **loader**: the train DataLoader alone (decode, augmentation, collation in `data.num_workers` workers), and with
  `data.pipeline=gpu` the batch augmentation on the device that the loop applies to each batch;
- **step**: `Trainer.train_step` alone on batches already on the device (augmented), in the step's memory format;
- **loop**: `Trainer.run_epoch`, the real loop with its hooks, loader and step together.

Each figure is steady-state: images of the `--steps` batches after `--warmup` batches, over the time between the
warm-up's last batch and the last one (worker start-up and the first, compiling, steps are left out).
The loop's overhead is 1 - loop / min(loader, step): what it loses against its slower half; "loader / step" is
how many times the step's demand the loader delivers.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from reid.config import register_configs
from reid.engine.build import build_experiment, build_trainer
from reid.engine.hooks import Hook, StepInfo
from reid.engine.trainer import Trainer
from reid.utils.seed import seed_everything

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# Market-1501's images are 128x64, upscaled to the 256x128 input; the set is large enough for 20+ batches of 64.
DATASET = ["dataset=synthetic", "dataset.height=128", "dataset.width=64", "dataset.num_test_ids=4",
           "dataset.images_per_camera=4", "dataset.num_cameras=6"]


@dataclass
class Figures:
    loader: float
    step: float
    loop: float

    @property
    def overhead(self) -> float:
        return 1.0 - self.loop / min(self.loader, self.step)


def steady_rate(times: Sequence[float], warmup: int, batch: int) -> float:
    """Images per second from the completion times of consecutive batches, after the first `warmup` of them."""
    measured = len(times) - warmup
    return measured * batch / (times[-1] - times[warmup - 1])


def clocked(batches: Iterable[object], count: int) -> list[float]:
    """Completion time of each of the first `count` items of `batches`."""
    return [time.perf_counter() for _ in itertools.islice(batches, count)]


class StepClock(Hook):
    """Notes when each step of the loop finished."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def after_step(self, trainer: Trainer, info: StepInfo) -> None:
        self.times.append(time.perf_counter())


def measure(trainer: Trainer, warmup: int, steps: int) -> Figures:
    total = warmup + steps
    batch = trainer.batch_size
    def augmented() -> Iterable[tuple]:
        for images, *rest in trainer.train_loader:
            yield trainer.batch_transform(images, trainer.device), *rest

    loader = steady_rate(clocked(augmented(), total), warmup, batch)

    resident = [(images.to(trainer.device, memory_format=trainer.memory_format), pids.to(trainer.device))
                for images, pids, *_ in itertools.islice(augmented(), 2)]
    trainer.model.train()

    def steps_on_device() -> Iterable[None]:
        for step in range(1, total + 1):
            images, pids = resident[step % len(resident)]
            trainer.train_step(images, pids, epoch=1, step=step)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
            yield None

    step = steady_rate(clocked(steps_on_device(), total), warmup, batch)

    clock = StepClock()
    trainer.hooks.hooks.append(clock)
    trainer.limit_train_batches = total
    trainer.run_epoch(2)
    return Figures(loader, step, steady_rate(clock.times, warmup, batch))


def build(overrides: list[str], run_dir: Path) -> Trainer:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    seed_everything(cfg.trainer.seed)
    experiment = build_experiment(cfg)
    return build_trainer(cfg, experiment, run_dir, overrides)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs ({cpu}), {gpu}; torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads; load average {load}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="resnet18,resnet50,clip_vit_b16",
                        help="conf/backbone options, comma-separated")
    parser.add_argument("--precisions", default=None,
                        help="trainer.precision values (default: 32,bf16-mixed on CPU, 32,16-mixed,bf16-mixed on CUDA)")
    parser.add_argument("--channels-last", default="on", help="on, off or on,off")
    parser.add_argument("--compile", default="off", help="on, off or on,off")
    parser.add_argument("--pipelines", default=None,
                        help="data.pipeline values (default: cpu on CPU, cpu,gpu on CUDA)")
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed batches of each measurement")
    parser.add_argument("--warmup", type=int, default=2, help="batches before the timing starts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-ids", type=int, default=64,
                        help="identities of the synthetic train set (24 images each; 64: 24 batches of 64)")
    parser.add_argument("--data-dir", default=os.environ.get("REID_DATA_DIR", "data"))
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    precisions = (args.precisions or ("32,16-mixed,bf16-mixed" if cuda else "32,bf16-mixed")).split(",")
    pipelines = (args.pipelines or ("cpu,gpu" if cuda else "cpu")).split(",")
    switches = {"on": "true", "off": "false"}
    register_configs()
    print(machine())
    print(f"batch {args.p}x{args.k} at {args.height}x{args.width}, {args.workers} workers, "
          f"{args.warmup} warm-up + {args.steps} timed batches; images/s")
    print(f"{'backbone':<14}{'precision':<12}{'ch_last':<9}{'compile':<9}{'pipeline':<9}{'loader':>9}{'step':>9}"
          f"{'loop':>9}{'overhead':>10}{'loader/step':>13}")
    with tempfile.TemporaryDirectory() as scratch:
        for backbone, precision, channels_last, compiled, pipeline in itertools.product(
                args.backbones.split(","), precisions, args.channels_last.split(","), args.compile.split(","),
                pipelines):
            overrides = [f"data_dir={args.data_dir}", *DATASET, f"dataset.num_train_ids={args.train_ids}",
                         f"backbone={backbone}",
                         f"trainer.precision={precision}", f"trainer.channels_last={switches[channels_last]}",
                         f"trainer.compile={switches[compiled]}", f"trainer.device={args.device}",
                         f"data.pipeline={pipeline}",
                         f"data.p={args.p}", f"data.k={args.k}", f"data.num_workers={args.workers}",
                         f"data.height={args.height}", f"data.width={args.width}", "trainer.max_epochs=1000",
                         "trainer.eval_every=1000", "trainer.log_every=1000000"]
            trainer = build(overrides, Path(scratch) / f"{backbone}-{precision}-{channels_last}-{compiled}-{pipeline}")
            figures = measure(trainer, args.warmup, args.steps)
            print(f"{backbone:<14}{precision:<12}{channels_last:<9}{trainer.step_settings()['compile'][:8]:<9}"
                  f"{pipeline:<9}{figures.loader:>9.1f}{figures.step:>9.1f}{figures.loop:>9.1f}{figures.overhead:>9.1%}"
                  f"{figures.loader / figures.step:>12.2f}x", flush=True)
            del trainer
    print(f"after: load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
