import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid.data import ImageRecord, Market1501, SyntheticReID
from reid.data.synthetic import ABANDONED_AFTER_S, COMPLETE_MARKER

SMALL = {"num_train_ids": 3, "num_test_ids": 4, "images_per_camera": 2, "num_cameras": 3}


def _files(directory: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, directory)] = Path(path).read_bytes()
    return out


def _mtimes(directory: str) -> dict[str, int]:
    return {
        os.path.join(dirpath, name): os.stat(os.path.join(dirpath, name)).st_mtime_ns
        for dirpath, _, names in os.walk(directory)
        for name in names
    }


def _features(records: list[ImageRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feats = np.stack([np.asarray(Image.open(r.path).convert("RGB"), dtype=np.float64).ravel() / 255 for r in records])
    return feats, np.array([r.pid for r in records]), np.array([r.camid for r in records])


def _mean_ap(query: tuple, gallery: tuple) -> float:  # type: ignore[type-arg]
    """Market-style mAP: same pid + same camera gallery entries are ignored."""
    qf, qp, qc = query
    gf, gp, gc = gallery
    dist = (qf**2).sum(1)[:, None] + (gf**2).sum(1)[None, :] - 2 * qf @ gf.T
    aps = []
    for i in range(len(qf)):
        keep = ~((gp == qp[i]) & (gc == qc[i]))
        order = np.argsort(dist[i][keep], kind="stable")
        match = gp[keep][order] == qp[i]
        assert match.any(), "every query must have a match in another camera"
        ranks = np.flatnonzero(match) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticReID, object]:
    dataset = SyntheticReID(str(tmp_path_factory.mktemp("synthetic")))
    return dataset, dataset.load()


def test_default_layout_and_counts(default_set) -> None:  # type: ignore[no-untyped-def]
    dataset, splits = default_set
    assert splits.name == "synthetic"
    assert os.path.basename(dataset.dataset_dir) == "synthetic_v1_s0_tr24_te24_c4_i3_64x32"
    assert splits.num_classes == 24
    assert len(splits.train) == 24 * 4 * 3
    assert len(splits.query) == 24 * 2
    assert {r.camid for r in splits.query} == {0, 1}
    distractors = [r for r in splits.gallery if r.pid == 0]
    assert len(distractors) == 14
    assert len(splits.gallery) == 24 * 4 * 3 - 48 + 14
    assert {r.pid for r in splits.query} == {r.pid for r in splits.gallery} - {0}
    assert not {r.pid for r in splits.query} & set(range(1, 25))  # test ids follow the train ids
    with Image.open(splits.train[0].path) as image:
        assert image.size == (32, 64) and image.format == "JPEG"
    # the same folder is a plain Market-1501 dataset
    market = Market1501(dataset.dataset_dir).load()
    assert market.name == "market1501"
    assert [r.path for r in market.gallery] == [r.path for r in splits.gallery]


def test_naive_baseline_is_above_chance_but_far_from_solved(default_set) -> None:  # type: ignore[no-untyped-def]
    _, splits = default_set
    query, gallery = _features(splits.query), _features(splits.gallery)
    raw_pixels = _mean_ap(query, gallery)
    rng = np.random.default_rng(0)
    chance = np.mean(
        [
            _mean_ap((rng.random((len(query[0]), 8)), *query[1:]), (rng.random((len(gallery[0]), 8)), *gallery[1:]))
            for _ in range(5)
        ]
    )
    print(f"raw-pixel mAP {raw_pixels:.3f}, random-feature mAP {chance:.3f}")
    assert raw_pixels < 0.7
    assert raw_pixels > 1.5 * chance


def test_cache_is_reused(default_set) -> None:  # type: ignore[no-untyped-def]
    dataset, splits = default_set
    before = _mtimes(dataset.dataset_dir)
    assert os.path.join(dataset.dataset_dir, COMPLETE_MARKER) in before
    again = SyntheticReID(dataset.root).load()
    assert _mtimes(dataset.dataset_dir) == before
    assert again == splits
    assert os.listdir(dataset.root) == [os.path.basename(dataset.dataset_dir)]


def test_deterministic_bytes_and_seed_matters(tmp_path: Path) -> None:
    first = SyntheticReID(str(tmp_path / "a"), **SMALL)
    second = SyntheticReID(str(tmp_path / "b"), **SMALL)
    other_seed = SyntheticReID(str(tmp_path / "c"), seed=1, **SMALL)
    for dataset in (first, second, other_seed):
        dataset.load()
    files_a, files_b = _files(first.dataset_dir), _files(second.dataset_dir)
    assert len(files_a) == 3 * 3 * 2 + 4 * 3 * 2 + (4 // 2 + 2) + 1
    assert files_a == files_b
    files_c = _files(other_seed.dataset_dir)
    assert os.path.basename(other_seed.dataset_dir).startswith("synthetic_v1_s1_")
    assert sorted(files_c) == sorted(files_a)
    assert all(files_c[name] != files_a[name] for name in files_a if name.endswith(".jpg"))


def test_cache_key_covers_every_parameter(tmp_path: Path) -> None:
    base = SyntheticReID(str(tmp_path), **SMALL).cache_key
    for key, value in {
        "num_train_ids": 5,
        "num_test_ids": 5,
        "images_per_camera": 3,
        "num_cameras": 4,
        "height": 32,
        "width": 16,
        "seed": 9,
    }.items():
        assert SyntheticReID(str(tmp_path), **(SMALL | {key: value})).cache_key != base


def test_incomplete_folders_are_not_trusted(tmp_path: Path) -> None:
    dataset = SyntheticReID(str(tmp_path), **SMALL)
    # a generation killed mid-way leaves only a temp folder; a marker-less final folder is stale
    leftover = tmp_path / f"{dataset.cache_key}.tmp-killed"
    (leftover / "query").mkdir(parents=True)
    stale = Path(dataset.dataset_dir)
    (stale / "query").mkdir(parents=True)
    (stale / "query" / "0001_c1s1_000001_00.jpg").write_bytes(b"half written")
    splits = dataset.load()
    assert (stale / COMPLETE_MARKER).is_file()
    assert len(splits.query) == 4 * 1
    assert sorted(os.listdir(tmp_path)) == sorted([leftover.name, stale.name])


def test_temp_folders_of_killed_generations_are_removed_once_old(tmp_path: Path) -> None:
    dataset = SyntheticReID(str(tmp_path), **SMALL)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - ABANDONED_AFTER_S - 60
    folders = {}
    for label, pid, mtime in [("killed", dead.pid, old), ("recent", dead.pid, None), ("running", os.getpid(), old)]:
        folder = tmp_path / f"{dataset.cache_key}.tmp-{pid}-{label}"
        (folder / "query").mkdir(parents=True)
        if mtime is not None:
            os.utime(folder, (mtime, mtime))
        folders[label] = folder.name
    other = tmp_path / "another_key.tmp-1-x"
    other.mkdir()
    os.utime(other, (old, old))
    dataset.prepare()
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(dataset.dataset_dir), folders["recent"],
                                                   folders["running"], other.name])


def test_losing_a_concurrent_generation_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    winner = SyntheticReID(str(tmp_path), **SMALL)
    loser = SyntheticReID(str(tmp_path), **SMALL)
    real_write = SyntheticReID._write

    def write_after_winner(self: SyntheticReID, out_dir: str) -> None:
        winner.prepare()  # another process finishes first, while this one is still writing
        real_write(self, out_dir)

    monkeypatch.setattr(loser, "_write", write_after_winner.__get__(loser))
    winner_dir = loser.prepare()
    before = _mtimes(winner_dir)
    assert loser.prepare() == winner_dir
    assert _mtimes(winner_dir) == before
    assert os.listdir(tmp_path) == [os.path.basename(winner_dir)]
    assert len(loser.load().train) == 3 * 3 * 2


def test_identities_share_colours() -> None:
    from reid.data.synthetic import _make_identity

    identities = [_make_identity(np.random.default_rng([0, 0, i])) for i in range(48)]
    tops = [ident.top for ident in identities]
    assert len(set(tops)) < len(tops) // 3
    combos = {(i.top, i.pattern, i.bottom, i.bottom_type, i.accessory, i.hair) for i in identities}
    assert len(combos) == len(identities)


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_cameras=1 is invalid"):
        SyntheticReID(str(tmp_path), num_cameras=1)
    with pytest.raises(ValueError, match="at most 9999"):
        SyntheticReID(str(tmp_path), num_train_ids=9000, num_test_ids=1000)
