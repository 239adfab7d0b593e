"""Decoded-image caches: equal to decoding, bounded, reused, rebuilt when an image changes, safe to build twice."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import reid.data.cache as cache_module
from reid.data import DecodedImages, DiskCache, RamCache
from reid.data.cache import CACHE_DIR_NAME

HEIGHT, WIDTH = 16, 8
IMAGE_GB = HEIGHT * WIDTH * 3 / 1e9


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (12, 30)) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG")
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    root = tmp_path / "dataset"
    root.mkdir()
    return [_jpeg(root / f"{i}.jpg", i, (10 + i, 20 + 3 * i)) for i in range(6)]


def _all(images: DecodedImages) -> torch.Tensor:
    return torch.stack([images[i] for i in range(len(images))])


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = cache_module.decode_resized

    def counting(path: str, height: int, width: int) -> np.ndarray:
        calls.append(path)
        return real(path, height, width)

    monkeypatch.setattr(cache_module, "decode_resized", counting)
    return calls


@pytest.mark.parametrize("kind", [RamCache, DiskCache])
def test_a_cache_gives_the_decoded_images_within_its_bound(kind, images, tmp_path, caplog) -> None:
    decoded = _all(DecodedImages(images, HEIGHT, WIDTH))
    assert decoded.dtype == torch.uint8 and decoded.shape == (6, 3, HEIGHT, WIDTH)
    with caplog.at_level(logging.INFO, logger="reid"):
        cached = kind(images, HEIGHT, WIDTH, max_gb=3.5 * IMAGE_GB, name="train", root=str(tmp_path / "dataset"))
    assert cached.cached == 3
    assert "3 of the 6 train images fit in data.cache_max_gb=" in caplog.text
    assert "the other 3 are decoded at every use" in caplog.text
    assert torch.equal(_all(cached), decoded)
    full = kind(images, HEIGHT, WIDTH, max_gb=1.0, name="train", root=str(tmp_path / "dataset"))
    assert full.cached == 6 and torch.equal(_all(full), decoded)


def test_disk_cache_is_reused_then_rebuilt_when_an_image_changes(images, tmp_path, monkeypatch) -> None:
    root = str(tmp_path / "dataset")
    first = DiskCache(images, HEIGHT, WIDTH, max_gb=1.0, name="train", root=root)
    assert first.file.parent == Path(root) / CACHE_DIR_NAME
    assert np.load(first.file, mmap_mode="r").shape == (6, HEIGHT, WIDTH, 3)
    decodes = _count_decodes(monkeypatch)
    again = DiskCache(images, HEIGHT, WIDTH, max_gb=1.0, name="train", root=root)
    assert again.file == first.file and decodes == []  # a hit: nothing decoded
    # Loader workers each map the file themselves (the pickled cache carries only its path).
    batches = list(DataLoader(again, batch_size=3, num_workers=2))
    before = _all(first)
    assert decodes == [] and torch.equal(torch.cat(batches), before)

    _jpeg(Path(images[4]), seed=99, size=(40, 80))  # another image in the same file: new size and mtime
    changed = DiskCache(images, HEIGHT, WIDTH, max_gb=1.0, name="train", root=root)
    assert changed.file != first.file and not first.file.exists()
    assert len(decodes) == 6  # the whole file is rebuilt
    assert torch.equal(changed[4], DecodedImages(images, HEIGHT, WIDTH)[4])
    assert not torch.equal(changed[4], before[4]) and torch.equal(changed[3], before[3])
    assert sorted(p.name for p in (Path(root) / CACHE_DIR_NAME).iterdir()) == [changed.file.name]


def test_disk_cache_falls_back_to_the_user_cache_directory(images, tmp_path, monkeypatch, caplog) -> None:
    root = tmp_path / "dataset"
    (root / CACHE_DIR_NAME).write_text("not a directory")  # the dataset root refuses a cache directory
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    with caplog.at_level(logging.INFO, logger="reid"):
        cached = DiskCache(images, HEIGHT, WIDTH, max_gb=1.0, name="train", root=str(root))
    assert cached.file.parent == tmp_path / "user" / "reid"
    assert f"cannot write in {root / CACHE_DIR_NAME}" in caplog.text
    assert torch.equal(_all(cached), _all(DecodedImages(images, HEIGHT, WIDTH)))


def _build(images: list[str], root: str, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    DiskCache(images, HEIGHT, WIDTH, max_gb=1.0, name="train", root=root)


def test_two_processes_building_the_same_cache_leave_one_complete_file(images, tmp_path) -> None:
    root = str(tmp_path / "dataset")
    context = multiprocessing.get_context("fork")
    start = context.Event()
    builders = [context.Process(target=_build, args=(images, root, start)) for _ in range(2)]
    for process in builders:
        process.start()
    start.set()
    for process in builders:
        process.join(timeout=120)
    assert [process.exitcode for process in builders] == [0, 0]
    files = os.listdir(Path(root) / CACHE_DIR_NAME)
    assert len(files) == 1 and files[0].endswith(".npy")  # no temp file left, no second name
    stored = torch.from_numpy(np.load(Path(root) / CACHE_DIR_NAME / files[0])).permute(0, 3, 1, 2)
    assert torch.equal(stored, _all(DecodedImages(images, HEIGHT, WIDTH)))
