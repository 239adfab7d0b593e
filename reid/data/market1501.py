"""Market-1501 loader (official folder layout and file naming)."""

from __future__ import annotations

import logging
import os
import re

from reid.data.images import filter_readable
from reid.data.records import DatasetError, ImageRecord, ReidSplits

_LOG = logging.getLogger(__name__)

SUBSETS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
ARCHIVE_FOLDER = "Market-1501-v15.09.15"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
NAME_EXAMPLE = "0002_c1s1_000451_03.jpg"
# <pid: 4 digits or -1>_c<camera, 1-based>... e.g. 0002_c1s1_000451_03.jpg
_NAME_RE = re.compile(r"^(-1|\d+)_c(\d+)")
_LAYOUT = "bounding_box_train/, query/, bounding_box_test/"


def _has_layout(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, sub)) for sub in SUBSETS.values())


def _parse_name(path: str) -> tuple[int, int]:
    """Return ``(pid, camid)`` with a 0-based camid, or raise naming the file."""
    name = os.path.basename(path)
    match = _NAME_RE.match(name)
    camera = int(match.group(2)) if match else 0
    if match is None or camera < 1:
        raise DatasetError(
            f"unexpected Market-1501 file name {path}: expected "
            f"<pid>_c<camera>s<seq>_<frame>_<box>.jpg with a 4-digit pid (or -1 for junk) "
            f"and a 1-based camera number, e.g. {NAME_EXAMPLE}"
        )
    return int(match.group(1)), camera - 1


def list_images(folder: str) -> list[str]:
    """Sorted image files directly inside ``folder``; other files and dotfiles are ignored."""
    with os.scandir(folder) as entries:
        names = sorted(
            entry.name
            for entry in entries
            if entry.is_file()
            and not entry.name.startswith(".")
            and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        )
    return [os.path.join(folder, name) for name in names]


class Market1501:
    """Market-1501 in its official layout.

    ``root`` must contain ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``
    (or a single ``Market-1501-v15.09.15/`` folder that does, as unpacked from the
    official archive). pid -1 (junk) is dropped everywhere, pid 0 (distractors) is kept
    in the gallery only, train pids are relabelled ``0..C-1`` in sorted order of the
    original pid, query/gallery keep the original pids. Camera ids are stored 0-based.
    """

    name = "market1501"

    def __init__(self, root: str, skip_bad_images: bool = False) -> None:
        self.root = str(root)
        self.skip_bad_images = bool(skip_bad_images)

    def resolve_root(self) -> str:
        """Return the folder holding the three subset folders, or raise explaining why not."""
        root = os.path.abspath(os.path.expanduser(self.root))
        if not os.path.isdir(root):
            raise DatasetError(
                f"Market-1501 root {root} does not exist or is not a directory: expected a "
                f"folder containing {_LAYOUT} (the official Market-1501 layout)"
            )
        if _has_layout(root):
            return root
        nested = os.path.join(root, ARCHIVE_FOLDER)
        if os.path.isdir(nested) and _has_layout(nested):
            return nested
        missing = [sub + "/" for sub in SUBSETS.values() if not os.path.isdir(os.path.join(root, sub))]
        raise DatasetError(
            f"Market-1501 root {root} is missing {', '.join(missing)}: expected a folder "
            f"containing {_LAYOUT} (or a single {ARCHIVE_FOLDER}/ folder that does)"
        )

    def _read_subset(self, root: str, subset: str) -> list[ImageRecord]:
        folder = os.path.join(root, SUBSETS[subset])
        paths = list_images(folder)
        if not paths:
            raise DatasetError(
                f"Market-1501 folder {folder} contains no images: expected .jpg/.jpeg/.png "
                f"files named like {NAME_EXAMPLE}"
            )
        records = []
        for path in paths:
            pid, camid = _parse_name(path)
            records.append(ImageRecord(path=path, pid=pid, camid=camid))
        return records

    def load(self) -> ReidSplits:
        """Parse, validate and integrity-check all three subsets."""
        root = self.resolve_root()
        subsets = {subset: self._read_subset(root, subset) for subset in SUBSETS}
        # junk is never used; distractors only make sense as gallery clutter
        subsets["train"] = [r for r in subsets["train"] if r.pid > 0]
        subsets["query"] = [r for r in subsets["query"] if r.pid > 0]
        subsets["gallery"] = [r for r in subsets["gallery"] if r.pid >= 0]

        everything = subsets["train"] + subsets["query"] + subsets["gallery"]
        readable = {r.path for r in filter_readable(everything, self.skip_bad_images, _LOG)}
        for subset in SUBSETS:
            kept = [r for r in subsets[subset] if r.path in readable]
            if not kept:
                folder = os.path.join(root, SUBSETS[subset])
                raise DatasetError(
                    f"Market-1501 folder {folder} has no usable images after dropping junk "
                    f"(pid -1){', distractors (pid 0)' if subset != 'gallery' else ''} and "
                    f"unreadable files: expected images of real identities named like {NAME_EXAMPLE}"
                )
            subsets[subset] = kept

        relabel = {pid: label for label, pid in enumerate(sorted({r.pid for r in subsets["train"]}))}
        train = [ImageRecord(r.path, relabel[r.pid], r.camid) for r in subsets["train"]]
        return ReidSplits(
            name=self.name,
            root=root,
            train=train,
            query=subsets["query"],
            gallery=subsets["gallery"],
        )
