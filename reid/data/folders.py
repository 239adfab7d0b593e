"""Generic "one folder per identity" datasets (e.g. animal re-id collections)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re

import numpy as np

from reid.data.images import filter_readable
from reid.data.market1501 import IMAGE_EXTENSIONS, list_images
from reid.data.records import DatasetError, ImageRecord, ReidSplits
from reid.errors import ConfigError

_LOG = logging.getLogger(__name__)

SPLITS = ("open", "closed")


def _stable_key(seed: int, *parts: str) -> int:
    """A seed-dependent integer derived from names only, so results never depend on
    filesystem listing order or on Python's randomised ``hash``."""
    digest = hashlib.sha256("\x1f".join((str(seed),) + parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _count_between(total: int, fraction: float, low: int, high: int) -> int:
    """``total * fraction`` rounded half up, clamped to ``[low, high]``."""
    return min(max(math.floor(total * fraction + 0.5), low), high)


class IdentityFolders:
    """Dataset laid out as ``root/<identity>/<image files>``.

    Parameters (all plain values so the class can be built by ``hydra.utils.instantiate``):

    - ``root``: folder with one sub-folder per identity; folder names are the identities.
    - ``split``: ``"open"`` (re-id norm: test identities are never seen in training) or
      ``"closed"`` (classifier-style: every identity trains, part of each identity's images
      is held out as query/gallery, and query/gallery pids equal the train labels).
    - ``query_fraction``: share of each test identity's held-out images that become
      queries; the rest go to the gallery (at least one image each).
    - ``min_images_per_identity``: identities with fewer readable images are dropped
      (e.g. 10 for a "min10" subset).
    - ``test_identity_fraction``: ``open`` split only; share of identities held out for
      test (at least one identity stays in train and one goes to test).
    - ``camera_pattern``: optional regex with exactly one group matched (``re.search``)
      against each file name, e.g. ``r"_c(\\d+)"``; the group's integer is the camid.
    - ``seed``: drives which identities/images are held out. Selection is keyed on the
      sorted folder and file names, so it does not depend on filesystem listing order.
    - ``skip_bad_images``: drop unreadable images (with a warning) instead of failing.
    - ``test_image_fraction``: ``closed`` split only; share of each identity's images held
      out for query+gallery (at least one image stays in train; identities need at least
      3 images to contribute a query and a gallery image).

    Camera ids: without ``camera_pattern`` there is no camera information, so train and
    query images get camid 0 and gallery images camid 1. The usual re-id protocol discards
    gallery matches with the same pid *and* camera as the query; giving query and gallery
    different camids keeps every true match instead of throwing them all away.

    Open-split query/gallery pids are ``1 + index`` of the identity in the sorted list of
    kept identities (never 0, which Market-style code treats as a distractor).
    """

    name = "identity_folders"

    def __init__(
        self,
        root: str,
        split: str = "open",
        query_fraction: float = 0.5,
        min_images_per_identity: int = 2,
        test_identity_fraction: float = 0.3,
        camera_pattern: str | None = None,
        seed: int = 0,
        skip_bad_images: bool = False,
        test_image_fraction: float = 0.3,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"IdentityFolders: split={split!r} is invalid: expected one of {SPLITS}")
        for key, value in (
            ("query_fraction", query_fraction),
            ("test_identity_fraction", test_identity_fraction),
            ("test_image_fraction", test_image_fraction),
        ):
            if not 0.0 < float(value) < 1.0:
                raise ConfigError(f"IdentityFolders: {key}={value!r} is invalid: expected 0 < {key} < 1")
        if int(min_images_per_identity) < 1:
            raise ConfigError(
                f"IdentityFolders: min_images_per_identity={min_images_per_identity!r} is invalid: "
                "expected an integer >= 1"
            )
        self.camera_regex: re.Pattern[str] | None = None
        if camera_pattern is not None:
            try:
                self.camera_regex = re.compile(camera_pattern)
            except re.error as exc:
                raise ConfigError(
                    f"IdentityFolders: camera_pattern={camera_pattern!r} is not a valid regex ({exc})"
                ) from exc
            if self.camera_regex.groups != 1:
                raise ConfigError(
                    f"IdentityFolders: camera_pattern={camera_pattern!r} has "
                    f"{self.camera_regex.groups} groups: expected exactly one group capturing "
                    r"the camera number, e.g. '_c(\d+)'"
                )
        self.root = str(root)
        self.split = split
        self.query_fraction = float(query_fraction)
        self.min_images_per_identity = int(min_images_per_identity)
        self.test_identity_fraction = float(test_identity_fraction)
        self.test_image_fraction = float(test_image_fraction)
        self.camera_pattern = camera_pattern
        self.seed = int(seed)
        self.skip_bad_images = bool(skip_bad_images)

    def _scan(self, root: str) -> dict[str, list[str]]:
        """Map identity name -> sorted readable image paths (before the min-images filter)."""
        if not os.path.isdir(root):
            raise DatasetError(
                f"IdentityFolders root {root} does not exist or is not a directory: expected "
                "a folder with one sub-folder of images per identity (root/<identity>/<image>)"
            )
        with os.scandir(root) as entries:
            identities = sorted(
                entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")
            )
        if not identities:
            raise DatasetError(
                f"IdentityFolders root {root} has no identity sub-folders: expected "
                f"root/<identity>/<image> with {'/'.join(IMAGE_EXTENSIONS)} images"
            )
        records = [
            ImageRecord(path=path, pid=index, camid=0)
            for index, identity in enumerate(identities)
            for path in list_images(os.path.join(root, identity))
        ]
        readable = filter_readable(records, self.skip_bad_images, _LOG)
        by_identity: dict[str, list[str]] = {identity: [] for identity in identities}
        for record in readable:
            by_identity[identities[record.pid]].append(record.path)
        return by_identity

    def _camid(self, path: str, default: int) -> int:
        if self.camera_regex is None:
            return default
        match = self.camera_regex.search(os.path.basename(path))
        if match is None or not match.group(1) or not match.group(1).isdigit():
            raise DatasetError(
                f"file name {path} does not match camera_pattern={self.camera_pattern!r}: "
                "expected the pattern's group to capture the camera number"
            )
        return int(match.group(1))

    def _shuffled(self, identity: str, paths: list[str]) -> list[str]:
        rng = np.random.default_rng(_stable_key(self.seed, "images", identity))
        return [paths[i] for i in rng.permutation(len(paths))]

    def _split_query_gallery(self, paths: list[str]) -> tuple[list[str], list[str]]:
        if len(paths) < 2:
            return [], list(paths)
        n_query = _count_between(len(paths), self.query_fraction, 1, len(paths) - 1)
        return sorted(paths[:n_query]), sorted(paths[n_query:])

    def load(self) -> ReidSplits:
        """Scan, filter by ``min_images_per_identity`` and split deterministically."""
        root = os.path.abspath(os.path.expanduser(self.root))
        scanned = self._scan(root)
        kept = {name: paths for name, paths in scanned.items() if len(paths) >= self.min_images_per_identity}
        if not kept:
            largest = max((len(p) for p in scanned.values()), default=0)
            raise DatasetError(
                f"IdentityFolders root {root} has no identity with at least "
                f"min_images_per_identity={self.min_images_per_identity} readable images "
                f"(largest identity has {largest}): expected root/<identity>/<image> folders "
                "with enough images, or a lower dataset.min_images_per_identity"
            )
        names = sorted(kept)
        if self.split == "open":
            train, query, gallery = self._open_split(root, names, kept)
        else:
            train, query, gallery = self._closed_split(names, kept)
        if not query or not gallery:
            raise DatasetError(
                f"IdentityFolders root {root} gives an empty query or gallery with split="
                f"{self.split!r}: expected identities with at least "
                f"{2 if self.split == 'open' else 3} images each"
            )
        return ReidSplits(name=self.name, root=root, train=train, query=query, gallery=gallery,
                          closed_set=self.split == "closed")

    def _open_split(
        self, root: str, names: list[str], kept: dict[str, list[str]]
    ) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        if len(names) < 2:
            raise DatasetError(
                f"IdentityFolders root {root} has only {len(names)} identity with at least "
                f"min_images_per_identity={self.min_images_per_identity} images: the open split "
                "expects at least 2 (one for train, one for test)"
            )
        n_test = _count_between(len(names), self.test_identity_fraction, 1, len(names) - 1)
        ranked = sorted(names, key=lambda name: (_stable_key(self.seed, "identity", name), name))
        test_names = set(ranked[:n_test])
        train_names = [name for name in names if name not in test_names]
        train = [
            ImageRecord(path, label, self._camid(path, 0))
            for label, name in enumerate(train_names)
            for path in kept[name]
        ]
        query: list[ImageRecord] = []
        gallery: list[ImageRecord] = []
        for index, name in enumerate(names):
            if name not in test_names:
                continue
            q_paths, g_paths = self._split_query_gallery(self._shuffled(name, kept[name]))
            query += [ImageRecord(p, index + 1, self._camid(p, 0)) for p in q_paths]
            gallery += [ImageRecord(p, index + 1, self._camid(p, 1)) for p in g_paths]
        return train, query, gallery

    def _closed_split(
        self, names: list[str], kept: dict[str, list[str]]
    ) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        train: list[ImageRecord] = []
        query: list[ImageRecord] = []
        gallery: list[ImageRecord] = []
        for label, name in enumerate(names):
            paths = kept[name]
            if len(paths) < 3:
                train += [ImageRecord(p, label, self._camid(p, 0)) for p in paths]
                continue
            shuffled = self._shuffled(name, paths)
            n_hold = _count_between(len(paths), self.test_image_fraction, 2, len(paths) - 1)
            held, rest = shuffled[:n_hold], sorted(shuffled[n_hold:])
            q_paths, g_paths = self._split_query_gallery(held)
            train += [ImageRecord(p, label, self._camid(p, 0)) for p in rest]
            query += [ImageRecord(p, label, self._camid(p, 0)) for p in q_paths]
            gallery += [ImageRecord(p, label, self._camid(p, 1)) for p in g_paths]
        return train, query, gallery
