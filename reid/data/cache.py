"""Decoded images at the training size, decoded at every use or once into a cache (``data.cache``).

The recipe's first step resizes every image to ``data.height x data.width`` (:mod:`reid.data.transforms`), so a
cache of uint8 images at that size gives the pipelines exactly what decoding would: 256 x 128 x 3 = 96 KiB an
image, 1.2 GB for Market-1501's 12,936 training images. ``data.cache_max_gb`` bounds it: the images beyond the
bound are decoded at every use, with a log line saying how many.

- ``ram``: decoded once at start-up, in parallel, into shared memory that the loader workers read.
- ``disk``: a ``.npy`` file in ``.reid_cache/`` under the dataset root (a user cache directory if that is not
  writable), memory-mapped by every process that reads it, so the next run starts without decoding. Its name
  carries a digest of every image's path, size and modification time: a changed, added or removed image makes
  another file, built at the next start, and the stale one is deleted. Files are written to a temp file and
  renamed into place, so two runs building the same cache at once each leave a complete file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from reid.checkpoint import atomic_write
from reid.data.images import decode_resized

log = logging.getLogger("reid")

CACHE_DIR_NAME = ".reid_cache"
FORMAT_VERSION = 1
# A temp file nobody has written to for this long was left by a killed build (a live one writes continuously).
ABANDONED_AFTER_S = 600.0
_DECODE_BATCH = 64


class DecodedImages(Dataset):
    """The images of `paths` as uint8 ``3 x H x W`` tensors at ``height x width``, decoded at every use."""

    def __init__(self, paths: Sequence[str], height: int, width: int) -> None:
        self.paths = [str(p) for p in paths]
        self.height = int(height)
        self.width = int(width)

    @property
    def image_bytes(self) -> int:
        return self.height * self.width * 3

    @property
    def cached(self) -> int:
        """How many images (the first ones) come from a cache."""
        return 0

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, index: int) -> torch.Tensor:
        """Image `index` decoded from its file, as H x W x 3."""
        return torch.from_numpy(decode_resized(self.paths[index], self.height, self.width))

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.decode(index).permute(2, 0, 1)


class _Decode(Dataset):
    """H x W x 3 uint8 tensors, for filling a cache with loader workers."""

    def __init__(self, images: DecodedImages, count: int) -> None:
        self.images = images
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images.decode(index)


def decoded_batches(images: DecodedImages, count: int, num_workers: int) -> Any:
    """The first `count` images, decoded by `num_workers` processes, as H x W x 3 uint8 numpy batches in order."""
    # Its own generator: iterating a loader otherwise draws from the global RNG, which seeds the model's init.
    loader = DataLoader(_Decode(images, count), batch_size=_DECODE_BATCH, num_workers=num_workers,
                        generator=torch.Generator())
    return (batch.numpy() for batch in loader)


def capacity(max_gb: float, image_bytes: int) -> int:
    """How many images of `image_bytes` fit in `max_gb` gigabytes (10^9 bytes)."""
    return max(0, int(float(max_gb) * 1e9) // int(image_bytes))


def _log_bound(kind: str, name: str, kept: int, total: int, max_gb: float) -> None:
    if kept < total:
        log.info("data.cache=%s: %d of the %d %s images fit in data.cache_max_gb=%s; the other %d are decoded at "
                 "every use", kind, kept, total, name, max_gb, total - kept)


class RamCache(DecodedImages):
    """The first images that fit in `max_gb`, decoded once into shared memory (readable by loader workers)."""

    def __init__(self, paths: Sequence[str], height: int, width: int, max_gb: float, num_workers: int = 0,
                 name: str = "", root: str | None = None) -> None:
        super().__init__(paths, height, width)
        count = min(len(self.paths), capacity(max_gb, self.image_bytes))
        _log_bound("ram", name, count, len(self.paths), max_gb)
        started = time.perf_counter()
        self._pixels = torch.empty((count, self.height, self.width, 3), dtype=torch.uint8).share_memory_()
        target, start = self._pixels.numpy(), 0
        for batch in decoded_batches(self, count, num_workers):
            target[start:start + len(batch)] = batch
            start += len(batch)
        if count:
            log.info("decoded %d %s images into the RAM cache (%.2f GB) in %.1f s", count, name,
                     count * self.image_bytes / 1e9, time.perf_counter() - started)

    @property
    def cached(self) -> int:
        return len(self._pixels)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < len(self._pixels):
            return self._pixels[index].permute(2, 0, 1)
        return super().__getitem__(index)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def file_stamps(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime in ns) of every file: what a cache entry is valid for."""
    stamps = []
    for path in paths:
        stat = os.stat(path)
        stamps.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
    return stamps


def cache_directory(root: str | None) -> Path:
    """``<root>/.reid_cache`` where it can be written, else ``$XDG_CACHE_HOME/reid`` (default ``~/.cache/reid``)."""
    fallback = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reid"
    if root is not None:
        directory = Path(root) / CACHE_DIR_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
            return directory
        except OSError as exc:
            log.info("data.cache=disk: cannot write in %s (%s); caching in %s instead", directory, exc, fallback)
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


class DiskCache(DecodedImages):
    """The first images that fit in `max_gb`, in a memory-mapped ``.npy`` file built once and reused by later runs.

    Each process (every loader worker too) maps the file on first use; pickling this object sends only the path.
    """

    def __init__(self, paths: Sequence[str], height: int, width: int, max_gb: float, num_workers: int = 0,
                 name: str = "", root: str | None = None) -> None:
        super().__init__(paths, height, width)
        count = min(len(self.paths), capacity(max_gb, self.image_bytes))
        _log_bound("disk", name, count, len(self.paths), max_gb)
        self.count = count
        directory = cache_directory(root)
        kept = self.paths[:count]
        names = _digest([FORMAT_VERSION, self.height, self.width, [os.path.abspath(p) for p in kept]])
        family = f"{name or 'images'}-{self.height}x{self.width}-{names}"
        self.file = directory / f"{family}-{_digest(file_stamps(kept))}.npy"
        self._array: np.ndarray | None = None
        if count and not self.file.exists():
            self._build(num_workers, name)
        elif count:
            log.info("data.cache=disk: %d %s images from %s", count, name, self.file)
        self._remove_stale(directory, family)

    def _build(self, num_workers: int, name: str) -> None:
        started = time.perf_counter()
        shape = (self.count, self.height, self.width, 3)

        def write(handle: Any) -> None:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": shape}
            np.lib.format.write_array_header_2_0(handle, header)
            for batch in decoded_batches(self, self.count, num_workers):
                handle.write(np.ascontiguousarray(batch).tobytes())

        atomic_write(self.file, write)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.file, 0o666 & ~umask)  # as readable as the dataset, not mkstemp's owner-only
        log.info("data.cache=disk: decoded %d %s images into %s (%.2f GB) in %.1f s", self.count, name, self.file,
                 self.count * self.image_bytes / 1e9, time.perf_counter() - started)

    def _remove_stale(self, directory: Path, family: str) -> None:
        """Delete this cache's files for older versions of the images, and temp files of killed builds."""
        for path in directory.glob(f"{family}-*.npy"):
            if path != self.file:
                path.unlink(missing_ok=True)
                log.info("data.cache=disk: removed %s (images changed since it was built)", path)
        for path in directory.glob(f".{family}-*.tmp"):
            try:
                if time.time() - path.stat().st_mtime > ABANDONED_AFTER_S:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    @property
    def cached(self) -> int:
        return self.count

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def __getitem__(self, index: int) -> torch.Tensor:
        if index >= self.count:
            return super().__getitem__(index)
        if self._array is None:
            self._array = np.load(self.file, mmap_mode="r")
        return torch.from_numpy(np.array(self._array[index])).permute(2, 0, 1)


# data.cache -> the class that provides the decoded images.
CACHES: dict[str, type[DecodedImages]] = {"ram": RamCache, "disk": DiskCache}


def decoded_images(kind: str, paths: Sequence[str], height: int, width: int, max_gb: float, num_workers: int,
                   name: str, root: str | None) -> DecodedImages:
    """The decoded images of `paths` as ``data.cache`` (`none`, `ram`, `disk`) provides them."""
    if kind == "none":
        return DecodedImages(paths, height, width)
    return CACHES[kind](paths, height, width, max_gb=max_gb, num_workers=num_workers, name=name, root=root)
