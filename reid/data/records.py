"""Plain data containers shared by every dataset loader.

Loaders only produce lists of :class:`ImageRecord`; images are decoded lazily by
:class:`reid.data.images.ImageDataset`, so building splits stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class DatasetError(ValueError):
    """A dataset root, layout or image is unusable.

    Raised instead of a bare ``OSError``/``KeyError`` so that the message can name the
    offending path and say what was expected there.
    """


@dataclass(frozen=True)
class ImageRecord:
    """One image of one identity seen by one camera.

    ``camid`` is 0-based; ``pid`` is the training label for train records and the
    dataset's own identity number for query/gallery records (in a closed-set split, the
    training label there too).
    """

    path: str
    pid: int
    camid: int


@dataclass
class ReidSplits:
    """The three subsets of a re-identification dataset.

    Train pids are relabelled ``0..num_classes-1`` so they can index a classifier;
    query/gallery pids are only compared for equality by the evaluation protocol.
    ``closed_set``: query/gallery images belong to training identities and their pids are
    the training labels, so the classifier's logits can be scored on them as well.
    """

    name: str
    root: str
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)
    closed_set: bool = False

    @property
    def num_classes(self) -> int:
        """Number of distinct train identities, i.e. the classifier's output size."""
        return len({r.pid for r in self.train})

    def summary(self) -> str:
        """Return a small aligned table (subset, #ids, #images, #cameras) for logging."""
        header = ("subset", "#ids", "#images", "#cameras")
        rows = [header]
        for subset_name, records in (
            ("train", self.train),
            ("query", self.query),
            ("gallery", self.gallery),
        ):
            rows.append(
                (
                    subset_name,
                    str(len({r.pid for r in records})),
                    str(len(records)),
                    str(len({r.camid for r in records})),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

        def fmt(row: tuple[str, ...]) -> str:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
            return "  ".join(cells)

        rule = "-" * len(fmt(header))
        lines = [f"dataset {self.name} ({self.root})", fmt(header), rule]
        lines += [fmt(row) for row in rows[1:]]
        return "\n".join(lines)
