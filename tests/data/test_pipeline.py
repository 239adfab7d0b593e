"""data.pipeline: the CPU and GPU pipelines give the same batches for the same seed; data.cache in a real run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import only_run_dir, run_train
from hydra.utils import instantiate

from reid.config import validate_targets
from reid.data.cache import CACHE_DIR_NAME
from reid.data.loaders import build_loaders
from reid.errors import ConfigError


def test_cpu_and_gpu_pipelines_give_the_same_batches(compose_config) -> None:
    # The GPU pipeline's code on CPU tensors: the workers only read uint8 images and draw the decisions, the
    # trainer's batch transform applies them. Same seed and epoch, so the same images, to the last bit.
    cfg = compose_config("experiment=smoke", "data.num_workers=0")
    splits = instantiate(cfg.dataset).load()
    cpu = build_loaders(splits, cfg.data, seed=4, device=torch.device("cpu"))
    cfg.data.pipeline = "gpu"
    gpu = build_loaders(splits, cfg.data, seed=4, device=torch.device("cpu"))
    assert (cpu.pipeline, gpu.pipeline) == ("cpu", "gpu")
    for loaders in (cpu, gpu):
        loaders.train.sampler.set_epoch(3)
    for (cpu_images, cpu_pids, _, cpu_index), (raw, gpu_pids, _, gpu_index) in zip(cpu.train, gpu.train):
        assert raw["pixels"].dtype == torch.uint8 and raw["draw"].shape == (len(gpu_pids), 7)
        assert torch.equal(cpu_index, gpu_index) and torch.equal(cpu_pids, gpu_pids)
        assert torch.equal(cpu.train_transform(cpu_images, torch.device("cpu")), cpu_images)
        assert torch.equal(gpu.train_transform(raw, torch.device("cpu")), cpu_images)
    cpu_test, *_ = next(iter(cpu.test))
    gpu_test, *_ = next(iter(gpu.test))
    assert gpu_test.dtype == torch.uint8
    assert torch.equal(gpu.test_transform(gpu_test, torch.device("cpu")), cpu_test)
    # auto: the CPU pipeline on a CPU device
    cfg.data.pipeline = "auto"
    assert build_loaders(splits, cfg.data, seed=4, device=torch.device("cpu")).pipeline == "cpu"
    # Pinned host memory only for a CUDA training device (building the loaders needs no GPU).
    assert not cpu.train.pin_memory and not cpu.test.pin_memory
    on_cuda = build_loaders(splits, cfg.data, seed=4, device=torch.device("cuda"))
    assert (on_cuda.pipeline, on_cuda.train.pin_memory, on_cuda.test.pin_memory) == ("gpu", True, True)


@pytest.mark.parametrize("override,message", [
    ("data.pipeline=tpu", "data.pipeline='tpu': expected 'auto'"),
    ("data.cache=ssd", "data.cache='ssd': expected 'none' (decode at every use), 'ram' or 'disk'"),
    ("data.cache_max_gb=-1", "data.cache_max_gb=-1.0: expected a size in GB >= 0"),
])
def test_bad_pipeline_and_cache_values_are_refused(compose_config, override, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_targets(compose_config(override))


def test_a_run_with_the_disk_cache_and_the_gpu_pipeline_on_cpu(tmp_path, data_dir) -> None:
    result = run_train(["experiment=smoke", "trainer.max_epochs=1", "data.cache=disk", "data.pipeline=gpu"],
                       tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (only_run_dir(tmp_path) / "log.txt").read_text()
    assert "data.pipeline=gpu on cpu: the batch augmentations run on CPU tensors" in log
    caches = sorted(path.name.split("-")[0] for path in data_dir.rglob(f"{CACHE_DIR_NAME}/*.npy"))
    assert caches == ["query+gallery", "train"]
    epochs = json.loads((only_run_dir(tmp_path) / "training_history.json").read_text())["epochs"]
    assert len(epochs) == 1 and epochs[0]["mAP"] > 0
