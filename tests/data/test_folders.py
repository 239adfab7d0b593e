import contextlib
import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from reid.data import DatasetError, IdentityFolders, ReidSplits


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (len(path.name) * 9 % 255, 80, 160)).save(path, "JPEG")


def _tree(root: Path, counts: dict[str, int], order: list[str] | None = None) -> Path:
    """Write ``counts[name]`` images per identity, creating identities in ``order``."""
    for name in order or list(counts):
        for i in range(counts[name]):
            _image(root / name / f"{name}_c{i % 3 + 1}_{i:03d}.jpg")
    (root / "notes.txt").write_text("files at the top level are ignored")
    return root


TEN_BY_FOUR = {f"id{i:02d}": 4 for i in range(10)} | {"single_a": 1, "single_b": 1}


def _relative(splits: ReidSplits) -> dict[str, list[tuple[str, int, int]]]:
    def rel(records):  # type: ignore[no-untyped-def]
        return sorted((os.path.relpath(r.path, splits.root), r.pid, r.camid) for r in records)

    return {"train": rel(splits.train), "query": rel(splits.query), "gallery": rel(splits.gallery)}


def _identity(path: str) -> str:
    return os.path.basename(os.path.dirname(path))


def test_open_split_counts_and_camids(tmp_path: Path) -> None:
    splits = IdentityFolders(str(_tree(tmp_path, TEN_BY_FOUR))).load()
    # 10 identities kept (the 1-image ones are dropped), 3 held out for test
    assert splits.num_classes == 7
    assert len(splits.train) == 28
    assert len(splits.query) == 6 and len(splits.gallery) == 6
    assert sorted({r.pid for r in splits.train}) == list(range(7))
    train_ids = {_identity(r.path) for r in splits.train}
    test_ids = {_identity(r.path) for r in splits.query + splits.gallery}
    assert not train_ids & test_ids and len(test_ids) == 3
    assert not any(name.startswith("single") for name in train_ids | test_ids)
    assert Counter(r.pid for r in splits.query) == Counter({pid: 2 for pid in {r.pid for r in splits.query}})
    assert {r.pid for r in splits.query} == {r.pid for r in splits.gallery}
    assert 0 not in {r.pid for r in splits.query}
    # no camera information: train/query camid 0, gallery camid 1
    assert {r.camid for r in splits.train} == {0}
    assert {r.camid for r in splits.query} == {0}
    assert {r.camid for r in splits.gallery} == {1}


def test_open_split_one_image_identity_goes_to_gallery(tmp_path: Path) -> None:
    counts = {"a": 1, "b": 1, "c": 1, "d": 3}
    splits = IdentityFolders(
        str(_tree(tmp_path, counts)), min_images_per_identity=1, test_identity_fraction=0.7
    ).load()
    assert len({_identity(r.path) for r in splits.query + splits.gallery}) == 3
    for record in splits.query:
        assert len([g for g in splits.gallery if g.pid == record.pid]) >= 1


def test_open_split_deterministic_and_order_independent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = list(TEN_BY_FOUR)
    first = _relative(IdentityFolders(str(_tree(tmp_path / "a", TEN_BY_FOUR)), seed=3).load())
    again = _relative(IdentityFolders(str(tmp_path / "a"), seed=3).load())
    assert first == again
    other_order = _relative(
        IdentityFolders(str(_tree(tmp_path / "b", TEN_BY_FOUR, order=names[::-1])), seed=3).load()
    )
    assert first == other_order

    real_scandir = os.scandir

    @contextlib.contextmanager
    def reversed_scandir(path):  # type: ignore[no-untyped-def]
        with real_scandir(path) as entries:
            yield iter(list(entries)[::-1])

    monkeypatch.setattr(os, "scandir", reversed_scandir)
    assert _relative(IdentityFolders(str(tmp_path / "a"), seed=3).load()) == first
    monkeypatch.undo()
    different_seeds = {
        tuple(sorted({_identity(r.path) for r in IdentityFolders(str(tmp_path / "a"), seed=s).load().query}))
        for s in range(6)
    }
    assert len(different_seeds) > 1


def test_closed_split_counts(tmp_path: Path) -> None:
    counts = {"a": 4, "b": 10, "c": 2, "d": 3}
    splits = IdentityFolders(str(_tree(tmp_path, counts)), split="closed").load()
    assert splits.num_classes == 4
    label = {_identity(r.path): r.pid for r in splits.train}
    assert label == {"a": 0, "b": 1, "c": 2, "d": 3}
    per_id = {
        name: (
            sum(_identity(r.path) == name for r in splits.train),
            sum(_identity(r.path) == name for r in splits.query),
            sum(_identity(r.path) == name for r in splits.gallery),
        )
        for name in counts
    }
    # held out = 30% rounded, at least 2 and at most n-1; half of it (at least 1) is query
    assert per_id == {"a": (2, 1, 1), "b": (7, 2, 1), "c": (2, 0, 0), "d": (1, 1, 1)}
    for record in splits.query + splits.gallery:
        assert record.pid == label[_identity(record.path)]
    all_paths = [r.path for r in splits.train + splits.query + splits.gallery]
    assert len(all_paths) == len(set(all_paths)) == sum(counts.values())
    assert _relative(splits) == _relative(IdentityFolders(str(tmp_path), split="closed").load())


def test_min_images_filter(tmp_path: Path) -> None:
    counts = {"big1": 10, "big2": 12, "big3": 11, "small": 9}
    splits = IdentityFolders(str(_tree(tmp_path, counts)), min_images_per_identity=10).load()
    used = {_identity(r.path) for r in splits.train + splits.query + splits.gallery}
    assert used == {"big1", "big2", "big3"}
    assert splits.num_classes == 2


def test_camera_pattern(tmp_path: Path) -> None:
    root = _tree(tmp_path, TEN_BY_FOUR)
    splits = IdentityFolders(str(root), camera_pattern=r"_c(\d+)_").load()
    for record in splits.train + splits.query + splits.gallery:
        index = int(os.path.basename(record.path).rsplit("_", 1)[1].split(".")[0])
        assert record.camid == index % 3 + 1
    bad = root / "id00" / "no_camera_here.jpg"
    _image(bad)
    with pytest.raises(DatasetError) as info:
        IdentityFolders(str(root), camera_pattern=r"_c(\d+)_", test_identity_fraction=0.9).load()
    assert str(bad) in str(info.value) and "camera_pattern" in str(info.value)


def test_bad_roots(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(DatasetError) as info:
        IdentityFolders(str(missing)).load()
    assert str(missing) in str(info.value) and "root/<identity>/<image>" in str(info.value)

    flat = tmp_path / "flat"
    flat.mkdir()
    _image(flat / "x.jpg")
    with pytest.raises(DatasetError) as info:
        IdentityFolders(str(flat)).load()
    assert str(flat) in str(info.value) and "no identity sub-folders" in str(info.value)

    few = _tree(tmp_path / "few", {"a": 3, "b": 2})
    with pytest.raises(DatasetError) as info:
        IdentityFolders(str(few), min_images_per_identity=10).load()
    message = str(info.value)
    assert str(few) in message and "min_images_per_identity=10" in message and "largest identity has 3" in message

    lonely = _tree(tmp_path / "lonely", {"a": 5})
    with pytest.raises(DatasetError, match="at least 2"):
        IdentityFolders(str(lonely)).load()


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="split='random'"):
        IdentityFolders("x", split="random")
    with pytest.raises(ValueError, match="query_fraction=1.5"):
        IdentityFolders("x", query_fraction=1.5)
    with pytest.raises(ValueError, match="exactly one group"):
        IdentityFolders("x", camera_pattern=r"_c\d+")
    with pytest.raises(ValueError, match="not a valid regex"):
        IdentityFolders("x", camera_pattern=r"_c(\d+")


def test_unreadable_images(tmp_path: Path) -> None:
    root = _tree(tmp_path, TEN_BY_FOUR)
    bad = root / "id03" / "broken.jpg"
    bad.write_bytes(b"broken")
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        IdentityFolders(str(root)).load()
    splits = IdentityFolders(str(root), skip_bad_images=True).load()
    assert str(bad) not in {r.path for r in splits.train + splits.query + splits.gallery}
