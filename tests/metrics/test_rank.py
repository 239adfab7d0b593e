"""evaluate_rank: hand-computed protocol cases, agreement with the community numpy loop, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from reid.metrics import RankResult, evaluate_rank
from reid.metrics import rank as rank_module


def reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The community numpy form (torchreid / fast-reid eval_market1501) with a stable argsort.

    Returns (mAP, cmc, mINP, num_valid); cmc rows shorter than max_rank (tiny galleries)
    are padded with their last value, which is what "first hit at rank <= k" means.
    """
    distmat = np.asarray(distmat, dtype=np.float64)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        last = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        row = np.ones(max_rank)
        row[: min(max_rank, len(cmc))] = cmc[:max_rank]
        all_cmc.append(row)
        tmp = raw_cmc.cumsum() / (np.arange(len(raw_cmc)) + 1.0) * raw_cmc
        all_ap.append(tmp.sum() / raw_cmc.sum())
    if not all_ap:
        return None
    return float(np.mean(all_ap)), np.mean(all_cmc, axis=0), float(np.mean(all_inp)), len(all_ap)


PATHS = {
    "partition": {"_FULL_SORT_FRACTION": float("inf")},
    "full-sort": {"_FULL_SORT_FRACTION": 0.0},
    "torch-kernels": {"_runs_in_numpy": lambda d: False},
    "threads": {"_ROWS_PER_TASK": 1},
    "auto": {},
}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    """Run the test once per internal path (all must be exact) and once with the default routing.

    "partition" and "full-sort" force one way of building each row's sorted prefix,
    "torch-kernels" runs the row passes in torch as on a GPU, "threads" spreads single
    rows over two worker threads.
    """
    for name, value in PATHS[request.param].items():
        monkeypatch.setattr(rank_module, name, value)
    if request.param == "threads":
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        request.addfinalizer(lambda: torch.set_num_threads(threads))
    return request.param


def assert_matches_reference(result: RankResult, ref, tol: float = 1e-6) -> None:
    ref_map, ref_cmc, ref_inp, ref_valid = ref
    assert result.num_valid_queries == ref_valid
    assert result.mAP == pytest.approx(ref_map, abs=tol)
    assert result.mINP == pytest.approx(ref_inp, abs=tol)
    np.testing.assert_allclose(result.cmc, ref_cmc, atol=tol, rtol=0)


# ---------------------------------------------------------------- hand-computed cases


def test_same_camera_match_ranked_first_is_discarded(path):
    # Query pid 1, camera 0. Sorted by distance:
    #   g0 pid 1 cam 0  d=.1  same pid + same camera -> discarded
    #   g1 pid 2 cam 1  d=.2  negative             -> rank 1
    #   g2 pid 1 cam 1  d=.3  positive             -> rank 2
    #   g3 pid 3 cam 0  d=.4  negative             -> rank 3
    #   g4 pid 1 cam 2  d=.5  positive             -> rank 4
    # AP = (1/2 + 2/4) / 2 = 0.5 ; first hit at rank 2 ; mINP = 2 positives / rank 4 = 0.5
    # (keeping g0 would give AP = (1/1 + 2/3 + 3/5) / 3 = 0.7556 instead)
    result = evaluate_rank(
        np.array([[0.1, 0.2, 0.3, 0.4, 0.5]]),
        q_pids=np.array([1]), g_pids=np.array([1, 2, 1, 3, 1]),
        q_camids=np.array([0]), g_camids=np.array([0, 1, 1, 0, 2]),
        max_rank=4,
    )
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)
    np.testing.assert_array_equal(result.cmc, [0.0, 1.0, 1.0, 1.0])
    assert (result.num_valid_queries, result.num_excluded_queries) == (1, 0)


def test_distractors_ranked_above_the_match_lower_ap(path):
    # Query pid 5, camera 0; pid 0 = distractors (negatives, even in the query's camera).
    #   g0 pid 0 cam 1 d=.1 -> rank 1      g3 pid 0 cam 0 d=.4 -> rank 4
    #   g1 pid 0 cam 2 d=.2 -> rank 2      g4 pid 5 cam 3 d=.5 -> rank 5 (positive)
    #   g2 pid 5 cam 1 d=.3 -> rank 3 (+)  g5 pid 7 cam 1 d=.6 -> rank 6
    # AP = (1/3 + 2/5) / 2 = 11/30 ; first hit at rank 3 ; mINP = 2/5
    result = evaluate_rank(
        torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]),
        q_pids=[5], g_pids=[0, 0, 5, 0, 5, 7],
        q_camids=[0], g_camids=[1, 2, 1, 0, 3, 1],
        max_rank=6,
    )
    assert result.mAP == pytest.approx(11 / 30)
    assert result.mINP == pytest.approx(0.4)
    np.testing.assert_array_equal(result.cmc, [0, 0, 1, 1, 1, 1])
    assert result.rank(1) == 0.0 and result.rank(3) == 1.0


def test_queries_without_a_match_are_excluded_and_counted(path):
    # q0: the case above with AP 0.5, first hit at rank 2, mINP 0.5.
    # q1: pid 9 is not in the gallery at all -> excluded.
    # q2: pid 4's only gallery image (g5) is in q2's own camera 1 -> discarded -> excluded.
    # q3: pid 4 from camera 0 -> g5 is a positive; order g3(.1) g1(.2) g4(.3) g2(.4) g0(.5) g5(.6),
    #     so the single positive is at rank 6: AP = 1/6, first hit 6, mINP = 1/6.
    distmat = np.array(
        [
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.9],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            [0.5, 0.2, 0.4, 0.1, 0.3, 0.6],
        ],
        dtype=np.float32,
    )
    result = evaluate_rank(
        distmat,
        q_pids=np.array([1, 9, 4, 4]), g_pids=np.array([1, 2, 1, 3, 1, 4]),
        q_camids=np.array([0, 0, 1, 0]), g_camids=np.array([0, 1, 1, 0, 2, 1]),
        max_rank=6,
    )
    assert (result.num_valid_queries, result.num_excluded_queries) == (2, 2)
    assert result.mAP == pytest.approx((0.5 + 1 / 6) / 2)
    assert result.mINP == pytest.approx((0.5 + 1 / 6) / 2)
    # first hits at ranks 2 and 6
    np.testing.assert_allclose(result.cmc, [0, 0.5, 0.5, 0.5, 0.5, 1.0])


def test_all_queries_without_a_match_raises():
    with pytest.raises(ValueError, match="no query has a positive"):
        evaluate_rank(
            np.zeros((2, 3)),
            q_pids=[1, 2], g_pids=[1, 3, 4],
            q_camids=[0, 0], g_camids=[0, 1, 1], max_rank=3,  # pid 1's gallery image is in the query's camera
        )


@pytest.mark.parametrize(
    ("g_pids", "expected_ap", "expected_cmc", "expected_inp"),
    [
        # All four distances equal -> stable order g0, g1, g2, g3.
        # negative, positive, negative, positive: AP = (1/2 + 2/4)/2 = 0.5, mINP = 2/4
        ([2, 1, 3, 1], 0.5, [0, 1, 1, 1], 0.5),
        # positive, negative, positive, negative: AP = (1/1 + 2/3)/2 = 5/6, mINP = 2/3
        ([1, 2, 1, 3], 5 / 6, [1, 1, 1, 1], 2 / 3),
        # negative, negative, negative, positive: AP = 1/4, first hit 4, mINP = 1/4
        ([2, 3, 4, 1], 0.25, [0, 0, 0, 1], 0.25),
    ],
)
def test_ties_are_broken_by_gallery_index(path, g_pids, expected_ap, expected_cmc, expected_inp):
    result = evaluate_rank(
        np.ones((1, 4), dtype=np.float32),
        q_pids=[1], g_pids=g_pids, q_camids=[0], g_camids=[1, 2, 3, 4], max_rank=4,
    )
    assert result.mAP == pytest.approx(expected_ap)
    assert result.mINP == pytest.approx(expected_inp)
    np.testing.assert_array_equal(result.cmc, expected_cmc)


def test_tie_between_positive_and_negative_in_the_middle_of_the_ranking(path):
    # Query pid 1 cam 0. Distances: g0 .5 (neg), g1 .2 (pos), g2 .2 (neg), g3 .2 (pos),
    # g4 .1 (neg), g5 .2 (discarded: pid 1 cam 0), g6 .3 (pos).
    # Stable order: g4(.1) g1(.2) g2(.2) g3(.2) g5(.2, dropped) g6(.3) g0(.5)
    # ranks after dropping g5: g4 1, g1 2 (+), g2 3, g3 4 (+), g6 5 (+), g0 6
    # AP = (1/2 + 2/4 + 3/5) / 3 = 0.5333..., first hit 2, mINP = 3/5
    result = evaluate_rank(
        np.array([[0.5, 0.2, 0.2, 0.2, 0.1, 0.2, 0.3]]),
        q_pids=[1], g_pids=[2, 1, 3, 1, 4, 1, 1],
        q_camids=[0], g_camids=[1, 1, 1, 2, 1, 0, 3], max_rank=6,
    )
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert result.mINP == pytest.approx(3 / 5)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1, 1, 1, 1])


# ------------------------------------------------------------ agreement with the reference


def random_problem(rng, num_q, num_g, num_ids, num_cams, kind, dtype):
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    q_camids = rng.integers(0, num_cams, num_q)
    g_camids = rng.integers(0, num_cams, num_g)
    if kind == "continuous":
        # identity structure so that positives tend to rank high (mixes sparse/dense routing)
        centres = rng.normal(size=(num_ids, 8))
        qf = centres[q_pids] + rng.normal(scale=rng.uniform(0.3, 1.5), size=(num_q, 8))
        gf = centres[g_pids] + rng.normal(scale=1.0, size=(num_g, 8))
        distmat = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    elif kind == "integer":  # many ties, including positive/negative ties
        distmat = rng.integers(0, 6, (num_q, num_g)).astype(np.float64)
    else:  # "coarse": few distinct values, some infinite, some negative
        distmat = rng.integers(-2, 3, (num_q, num_g)).astype(np.float64)
        distmat[rng.random(distmat.shape) < 0.1] = np.inf
    return distmat.astype(dtype), q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["continuous", "integer", "coarse"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_agrees_with_reference_on_random_inputs(path, seed, kind, dtype):
    rng = np.random.default_rng([seed, ["continuous", "integer", "coarse"].index(kind)])
    for num_q, num_g, num_ids, num_cams in [(1, 1, 1, 1), (7, 23, 3, 2), (40, 150, 12, 3), (33, 97, 40, 6)]:
        distmat, *labels = random_problem(rng, num_q, num_g, num_ids, num_cams, kind, dtype)
        max_rank = min(10, num_g)
        ref = reference_eval(distmat, *labels, max_rank=max_rank)
        chunk_size = int(rng.integers(1, 8))
        if ref is None:
            with pytest.raises(ValueError, match="no query has a positive"):
                evaluate_rank(distmat, *labels, max_rank=max_rank, chunk_size=chunk_size)
            continue
        result = evaluate_rank(distmat, *labels, max_rank=max_rank, chunk_size=chunk_size)
        assert_matches_reference(result, ref)
        assert result.num_excluded_queries == num_q - ref[3]


def reference_per_query(distmat, q_pids, g_pids, q_camids, g_camids):
    """Each query's AP, first-match rank and positive count by the plain loop (NaN / 0 when excluded)."""
    ap, first, positives = [], [], []
    for row, pid, cam in zip(np.asarray(distmat, dtype=np.float64), q_pids, q_camids):
        order = np.argsort(row, kind="stable")
        kept = ~((g_pids[order] == pid) & (g_camids[order] == cam))
        hits = (g_pids[order] == pid)[kept]
        positives.append(int(hits.sum()))
        if not hits.any():
            ap.append(np.nan)
            first.append(0)
            continue
        ranks = np.flatnonzero(hits) + 1
        ap.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        first.append(int(ranks[0]))
    return np.array(ap), np.array(first), np.array(positives)


@pytest.mark.parametrize("kind", ["continuous", "integer"])
def test_per_query_figures_match_a_plain_loop(path, kind):
    rng = np.random.default_rng(11)
    distmat, *labels = random_problem(rng, 37, 90, 9, 3, kind, np.float32)
    labels[0][[2, 5, 30]] = 99  # pids absent from the gallery: excluded queries
    result = evaluate_rank(distmat, *labels, max_rank=10, chunk_size=5, per_query=True)
    ap, first, positives = reference_per_query(distmat, *labels)
    assert (positives == 0).any() and (positives > 0).sum() == result.num_valid_queries
    np.testing.assert_allclose(result.per_query.ap, ap, atol=1e-9, rtol=0)
    np.testing.assert_array_equal(result.per_query.first_match, first)
    np.testing.assert_array_equal(result.per_query.num_positives, positives)
    np.testing.assert_array_equal(result.per_query.valid, positives > 0)
    assert np.nanmean(result.per_query.ap) == pytest.approx(result.mAP, abs=1e-12)
    assert evaluate_rank(distmat, *labels, max_rank=10).per_query is None


@pytest.mark.parametrize("to_torch", [(True, False, True, False, True), (False, True, False, True, False)])
def test_numpy_and_torch_inputs_in_any_mix(to_torch):
    rng = np.random.default_rng(7)
    distmat, *labels = random_problem(rng, 30, 120, 10, 4, "continuous", np.float32)
    args = [torch.from_numpy(a) if t else a for a, t in zip([distmat, *labels], to_torch)]
    result = evaluate_rank(*args, max_rank=20, chunk_size=4)
    assert_matches_reference(result, reference_eval(distmat, *labels, max_rank=20))


def test_market_like_problem_with_default_routing_and_chunking():
    # Large enough that blocks take both paths and the default chunking is used.
    rng = np.random.default_rng(3)
    num_ids, dim = 60, 16
    g_pids = np.concatenate([np.repeat(np.arange(1, num_ids + 1), 12), np.zeros(300, dtype=np.int64)])
    g_camids = rng.integers(0, 6, len(g_pids))
    q_pids = np.repeat(np.arange(1, num_ids + 1), 4)
    q_camids = rng.integers(0, 6, len(q_pids))
    centres = rng.normal(size=(num_ids + 1, dim))
    gf = centres[g_pids] + rng.normal(scale=0.9, size=(len(g_pids), dim))
    qf = centres[q_pids] + rng.normal(scale=rng.uniform(0.3, 2.0, (len(q_pids), 1)), size=(len(q_pids), dim))
    distmat = torch.cdist(torch.from_numpy(qf).float(), torch.from_numpy(gf).float()) ** 2
    labels = (q_pids, g_pids, q_camids, g_camids)
    result = evaluate_rank(distmat, *labels)
    assert_matches_reference(result, reference_eval(distmat.numpy(), *labels))
    assert 0.05 < result.mAP < 0.99


# ------------------------------------------------------------------ API and error cases


def test_result_is_frozen_and_rank_is_one_based():
    result = evaluate_rank(np.array([[0.2, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=2)
    assert isinstance(result, RankResult)
    assert result.cmc.dtype == np.float64 and result.cmc.shape == (2,)
    assert result.rank(1) == 0.0 and result.rank(2) == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.mAP = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="rank k"):
        result.rank(0)


def test_max_rank_is_clamped_to_gallery_size_with_a_warning():
    with pytest.warns(UserWarning, match="clamping max_rank to 3"):
        result = evaluate_rank(np.array([[0.3, 0.1, 0.2]]), [1], [2, 3, 1], [0], [1, 1, 1], max_rank=50)
    # order g1 g2 g0: positive g2 at rank 2
    np.testing.assert_array_equal(result.cmc, [0, 1, 1])
    assert result.mAP == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"q_pids": np.array([1, 2, 3])}, "q_pids"),
        ({"g_pids": np.array([1, 2])}, "g_pids"),
        ({"q_camids": np.array([0])}, "q_camids"),
        ({"g_camids": np.zeros((4, 1), dtype=np.int64)}, "g_camids"),
        ({"distmat": np.zeros(8)}, "distmat"),
        ({"q_pids": np.array([1.0, 2.0])}, "q_pids"),
    ],
)
def test_shape_and_type_mismatches_name_the_argument(kwargs, name):
    args = {
        "distmat": np.zeros((2, 4)),
        "q_pids": np.array([1, 2]),
        "g_pids": np.array([1, 2, 1, 2]),
        "q_camids": np.array([0, 0]),
        "g_camids": np.array([1, 1, 1, 1]),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        evaluate_rank(**args)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_invalid_max_rank_and_chunk_size(bad):
    args = (np.zeros((1, 2)), [1], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(*args, max_rank=bad)
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_rank(*args, chunk_size=bad)


def test_nan_distance_raises(path):
    distmat = np.array([[0.1, np.nan, 0.3]])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(distmat, [1], [1, 2, 1], [0], [1, 1, 2], max_rank=3)


def test_torch_thread_count_is_restored_after_the_threaded_path(monkeypatch):
    monkeypatch.setattr(rank_module, "_ROWS_PER_TASK", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rng = np.random.default_rng(5)
        distmat, *labels = random_problem(rng, 20, 60, 6, 3, "continuous", np.float32)
        result = evaluate_rank(distmat, *labels, max_rank=10)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert_matches_reference(result, reference_eval(distmat, *labels, max_rank=10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_distmat_is_evaluated_on_the_device(monkeypatch):
    rng = np.random.default_rng(11)
    distmat, *labels = random_problem(rng, 40, 150, 12, 3, "integer", np.float32)
    seen = []
    positions = rank_module._RowKernels.positions

    def spy(self, rows, reach, values):
        seen.append((self.host is None, values.device.type))
        return positions(self, rows, reach, values)

    monkeypatch.setattr(rank_module._RowKernels, "positions", spy)
    result = evaluate_rank(torch.from_numpy(distmat).cuda(), *labels, max_rank=10, chunk_size=7)
    assert seen and set(seen) == {(True, "cuda")}  # the rows were ranked on the device, not copied to the host
    assert_matches_reference(result, reference_eval(distmat, *labels, max_rank=10))


def test_benchmark_runs_and_agrees_on_a_tiny_problem(capsys):
    from reid.metrics.benchmark import main

    main(["--num-query", "40", "--num-gallery", "300", "--num-ids", "20", "--dim", "32",
          "--repeats", "1", "--reference", "--reference-queries", "10", "--metric", "cosine"])
    out = capsys.readouterr().out
    assert out.count("evaluation benchmark, noise") == 3
    assert out.count("(OK)") == 3
    summary = out[out.index("summary"):].splitlines()
    assert [line.split()[:2] for line in summary[2:]] == [["0.5", "well"], ["2.25", "weak"], ["6", "untrained"]]
