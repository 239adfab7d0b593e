"""Plain data containers shared by every dataset loader.

Loaders only produce lists of :class:`ImageRecord`; images are decoded lazily by
:class:`reid.data.images.ImageDataset`, so building splits stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reid.errors import DatasetError

__all__ = ["DatasetError", "ImageRecord", "ReidSplits"]


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

    @property
    def num_cameras(self) -> int:
        """Rows of a table indexed by camid (a model's camera embedding): 1 + the largest camid of any subset."""
        return 1 + max((r.camid for r in (*self.train, *self.query, *self.gallery)), default=0)

    def limit_evaluation(self, max_queries: int | None, max_gallery: int | None) -> ReidSplits:
        """A copy evaluated on at most `max_queries` queries and `max_gallery` gallery images (a debug budget).

        Queries are taken one identity at a time, so as many identities as possible stay; the gallery keeps the
        kept queries' matches first, again one identity at a time, then fills up with the other images. Both keep
        their original order, and the choice is deterministic.
        """
        query = _round_robin(self.query, max_queries)
        kept_pids = {r.pid for r in query}
        matches = [r for r in self.gallery if r.pid in kept_pids]
        others = [r for r in self.gallery if r.pid not in kept_pids]
        chosen = set(map(id, _round_robin(matches, max_gallery)))
        room = None if max_gallery is None else max_gallery - len(chosen)
        chosen.update(map(id, others[:room]))
        gallery = [r for r in self.gallery if id(r) in chosen]
        return ReidSplits(self.name, self.root, self.train, query, gallery)

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


def _round_robin(records: list[ImageRecord], limit: int | None) -> list[ImageRecord]:
    """At most `limit` records, taking one of each identity in turn; in their original order."""
    if limit is None or len(records) <= limit:
        return list(records)
    by_pid: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        by_pid.setdefault(record.pid, []).append(index)
    queues = [by_pid[pid] for pid in sorted(by_pid)]
    picked: list[int] = []
    depth = 0
    while len(picked) < limit:
        picked.extend(queue[depth] for queue in queues if depth < len(queue))
        depth += 1
    return [records[i] for i in sorted(picked[:limit])]
