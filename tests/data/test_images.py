import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid.data import DatasetError, ImageRecord, decode_resized, filter_readable, find_unreadable, read_image


def _write(path: Path, mode: str = "RGB", fmt: str = "JPEG") -> Path:
    Image.new(mode, (6, 12), 90 if mode == "L" else (10, 200, 30)).save(path, fmt)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_read_image_converts_to_rgb(tmp_path: Path) -> None:
    gray = _write(tmp_path / "gray.png", mode="L", fmt="PNG")
    image = read_image(str(gray))
    assert image.mode == "RGB" and image.size == (6, 12)


def test_read_image_failure_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(DatasetError) as info:
        read_image(str(bad))
    message = str(info.value)
    assert message.startswith(f"cannot read image {bad}: ")
    assert message.endswith("set dataset.skip_bad_images=true to skip unreadable images")
    with pytest.raises(DatasetError, match="cannot read image"):
        read_image(str(tmp_path / "missing.jpg"))


def test_find_unreadable_detects_each_kind(tmp_path: Path) -> None:
    good_jpg = _write(tmp_path / "good.jpg")
    good_png = _write(tmp_path / "good.png", fmt="PNG")
    trailing = _write(tmp_path / "trailing.jpg")
    trailing.write_bytes(trailing.read_bytes() + b"extra bytes after EOI")
    mislabelled = _write(tmp_path / "really_png.jpg", fmt="PNG")
    truncated_jpg = _truncate(_write(tmp_path / "trunc.jpg"))
    truncated_png = _truncate(_write(tmp_path / "trunc.png", fmt="PNG"))
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x89garbage" * 10)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    paths = [good_jpg, good_png, trailing, mislabelled, truncated_jpg, truncated_png, garbage, empty]
    bad = find_unreadable([str(p) for p in paths])
    assert [p for p, _ in bad] == [str(truncated_jpg), str(truncated_png), str(garbage), str(empty)]
    assert all(reason for _, reason in bad)


def test_filter_readable_raises_or_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = ImageRecord(str(_write(tmp_path / "a.jpg")), 0, 0)
    bad1 = ImageRecord(str(_truncate(_write(tmp_path / "b.jpg"))), 1, 0)
    bad2 = ImageRecord(str(tmp_path / "missing.jpg"), 1, 1)
    records = [good, bad1, bad2]
    with pytest.raises(DatasetError) as info:
        filter_readable(records, skip_bad_images=False, logger=logging.getLogger("t"))
    assert f"cannot read image {bad1.path}" in str(info.value)
    assert "2 unreadable image(s) in total" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="t"):
        kept = filter_readable(records, skip_bad_images=True, logger=logging.getLogger("t"))
    assert kept == [good]
    assert f"skipped 2 unreadable images (first: {bad1.path}: " in caplog.text
    assert filter_readable([good], skip_bad_images=False, logger=None) == [good]


def test_decode_resized_gives_uint8_at_the_target_size(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.png", fmt="PNG")
    pixels = decode_resized(str(path), 24, 10)
    assert pixels.dtype == np.uint8 and pixels.shape == (24, 10, 3) and pixels.flags.writeable
    assert (pixels == (10, 200, 30)).all()
    assert decode_resized(str(path), 12, 6).shape == (12, 6, 3)
