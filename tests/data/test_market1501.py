import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from reid.data import DatasetError, ImageRecord, Market1501, ReidSplits


def _jpeg(path: Path, color: tuple[int, int, int] = (120, 40, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), color).save(path, "JPEG")


def _market(root: Path) -> Path:
    train = root / "bounding_box_train"
    query = root / "query"
    gallery = root / "bounding_box_test"
    for name in [
        "0007_c1s1_000001_01.jpg",
        "0007_c2s1_000002_01.jpg",
        "0003_c3s1_000003_01.jpg",
        "0003_c1s1_000004_01.jpeg",
        "0010_c6s1_000005_01.png",
        "-1_c1s1_000006_01.jpg",
        "0000_c1s1_000007_01.jpg",
    ]:
        _jpeg(train / name)
    for name in ["0003_c1s1_000010_00.jpg", "0010_c2s1_000011_00.jpg", "-1_c1s1_000012_00.jpg"]:
        _jpeg(query / name)
    for name in [
        "0003_c2s1_000020_01.jpg",
        "0010_c1s1_000021_01.jpg",
        "0000_c3s1_000022_01.jpg",
        "-1_c4s1_000023_01.jpg",
    ]:
        _jpeg(gallery / name)
    (gallery / "Thumbs.db").write_bytes(b"not an image")
    (train / "readme.txt").write_text("ignored")
    return root


def _names(records: list[ImageRecord]) -> list[str]:
    return [os.path.basename(r.path) for r in records]


def test_parses_names_relabels_and_filters(tmp_path: Path) -> None:
    splits = Market1501(str(_market(tmp_path))).load()
    assert isinstance(splits, ReidSplits)
    assert splits.name == "market1501"
    # junk (-1) and distractors (0) dropped from train; relabel in sorted original-pid order
    assert {(os.path.basename(r.path), r.pid, r.camid) for r in splits.train} == {
        ("0003_c1s1_000004_01.jpeg", 0, 0),
        ("0003_c3s1_000003_01.jpg", 0, 2),
        ("0007_c1s1_000001_01.jpg", 1, 0),
        ("0007_c2s1_000002_01.jpg", 1, 1),
        ("0010_c6s1_000005_01.png", 2, 5),
    }
    assert splits.num_classes == 3
    assert [(r.pid, r.camid) for r in splits.query] == [(3, 0), (10, 1)]
    assert sorted((r.pid, r.camid) for r in splits.gallery) == [(0, 2), (3, 1), (10, 0)]
    assert all(r.pid != 0 for r in splits.query)
    assert "Thumbs.db" not in _names(splits.gallery)


def test_summary_table(tmp_path: Path) -> None:
    text = Market1501(str(_market(tmp_path))).load().summary()
    lines = text.splitlines()
    assert "#ids" in lines[1] and "#images" in lines[1] and "#cameras" in lines[1]
    train_row = next(line for line in lines if line.startswith("train"))
    assert train_row.split()[1:] == ["3", "5", "4"]
    gallery_row = next(line for line in lines if line.startswith("gallery"))
    assert gallery_row.split()[1:] == ["3", "3", "3"]


def test_descends_into_official_archive_folder(tmp_path: Path) -> None:
    _market(tmp_path / "Market-1501-v15.09.15")
    splits = Market1501(str(tmp_path)).load()
    assert splits.root.endswith("Market-1501-v15.09.15")
    assert splits.num_classes == 3


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as info:
        Market1501(str(missing)).load()
    message = str(info.value)
    assert str(missing) in message
    assert "does not exist" in message
    assert "bounding_box_train/, query/, bounding_box_test/" in message


def test_root_without_subfolders(tmp_path: Path) -> None:
    (tmp_path / "query").mkdir()
    with pytest.raises(DatasetError) as info:
        Market1501(str(tmp_path)).load()
    message = str(info.value)
    assert str(tmp_path) in message
    assert "missing bounding_box_train/, bounding_box_test/" in message
    assert "Market-1501-v15.09.15" in message


def test_empty_subfolder(tmp_path: Path) -> None:
    _market(tmp_path)
    for path in (tmp_path / "query").iterdir():
        path.unlink()
    with pytest.raises(DatasetError) as info:
        Market1501(str(tmp_path)).load()
    message = str(info.value)
    assert str(tmp_path / "query") in message
    assert "no images" in message
    assert "0002_c1s1_000451_03.jpg" in message


def test_badly_named_file(tmp_path: Path) -> None:
    _market(tmp_path)
    bad = tmp_path / "bounding_box_test" / "person_7.jpg"
    _jpeg(bad)
    with pytest.raises(DatasetError) as info:
        Market1501(str(tmp_path)).load()
    message = str(info.value)
    assert str(bad) in message
    assert "0002_c1s1_000451_03.jpg" in message


def test_camera_zero_is_rejected(tmp_path: Path) -> None:
    _market(tmp_path)
    bad = tmp_path / "query" / "0003_c0s1_000099_00.jpg"
    _jpeg(bad)
    with pytest.raises(DatasetError, match="1-based camera"):
        Market1501(str(tmp_path)).load()


def test_subset_with_only_junk(tmp_path: Path) -> None:
    _market(tmp_path)
    for path in (tmp_path / "query").iterdir():
        path.unlink()
    _jpeg(tmp_path / "query" / "-1_c1s1_000012_00.jpg")
    with pytest.raises(DatasetError, match="no usable images"):
        Market1501(str(tmp_path)).load()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_image_is_reported(tmp_path: Path, kind: str) -> None:
    _market(tmp_path)
    bad = tmp_path / "bounding_box_test" / "0003_c4s1_000030_01.jpg"
    if kind == "garbage":
        bad.write_bytes(b"\x00garbage" * 50)
    elif kind == "truncated":
        _jpeg(bad)
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        Market1501(str(tmp_path)).load()
    message = str(info.value)
    assert f"cannot read image {bad}" in message
    assert "1 unreadable image(s) in total" in message
    assert "dataset.skip_bad_images=true" in message


def test_corrupt_images_skipped_with_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _market(tmp_path)
    bad_train = tmp_path / "bounding_box_train" / "0007_c3s1_000040_01.jpg"
    bad_gallery = tmp_path / "bounding_box_test" / "0010_c4s1_000041_01.jpg"
    bad_train.write_bytes(b"garbage")
    bad_gallery.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="2 unreadable image"):
        Market1501(str(tmp_path)).load()
    with caplog.at_level(logging.WARNING):
        splits = Market1501(str(tmp_path), skip_bad_images=True).load()
    assert "skipped 2 unreadable images (first: " in caplog.text
    assert str(bad_train) in caplog.text
    assert str(bad_train) not in [r.path for r in splits.train]
    assert str(bad_gallery) not in [r.path for r in splits.gallery]
    assert len(splits.train) == 5 and len(splits.gallery) == 3
