"""k-reciprocal re-ranking against the community implementation's numbers, ties included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reid.metrics import compute_distance_matrix, evaluate_rank, rerank
from reid.metrics.rerank import re_rank

# Made with torchreid's `utils/rerank.py` `re_ranking` (KaiyangZhou/deep-person-reid at 08bb2cc) applied to the
# three matrices `compute_distance_matrix` gives for these features, with its `np.argsort` made stable: the
# default quicksort leaves the order of exact ties to the numpy build (on the rounded features below, its result
# moves by 0.19 between the two sorts), and re_rank breaks ties in index order, as a stable sort does.
REFERENCE = np.load(Path(__file__).parent / "data" / "rerank_reference.npz")
CASES = sorted({key.split("__")[0] for key in REFERENCE.files})


def test_reference_cases_cover_ties_cosine_and_no_query_expansion():
    assert CASES == ["cosine_k5_k1", "euclidean_k20_k6", "euclidean_ties_k10_k4"]
    features = np.concatenate([REFERENCE["euclidean_ties_k10_k4__query"], REFERENCE["euclidean_ties_k10_k4__gallery"]])
    distances = compute_distance_matrix(features, features).numpy()
    assert (distances == np.round(distances)).all() and len(np.unique(distances)) < distances.size // 50


@pytest.mark.parametrize("block", [7, 2048])  # many square blocks of the distance matrix, or one
@pytest.mark.parametrize("case", CASES)
def test_equals_the_community_implementation(case, block, monkeypatch):
    monkeypatch.setattr(rerank, "_SQUARE_BLOCK", block)
    k1, k2, lambda_value = REFERENCE[f"{case}__params"]
    result = re_rank(torch.from_numpy(REFERENCE[f"{case}__query"]), torch.from_numpy(REFERENCE[f"{case}__gallery"]),
                     k1=int(k1), k2=int(k2), lambda_value=float(lambda_value),
                     metric=str(REFERENCE[f"{case}__metric"]))
    expected = REFERENCE[f"{case}__expected"]
    assert result.dtype == torch.float32 and result.shape == expected.shape
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-5)


def test_lambda_one_is_the_scaled_original_distance():
    query, gallery = REFERENCE["euclidean_k20_k6__query"], REFERENCE["euclidean_k20_k6__gallery"]
    squared = compute_distance_matrix(query, np.concatenate([query, gallery])).numpy() ** 2
    expected = squared[:, len(query):] / squared.max(axis=1, keepdims=True)
    np.testing.assert_allclose(re_rank(query, gallery, lambda_value=1.0).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_re_ranking_lifts_map_on_clustered_features():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(40), 8)
    features = (rng.normal(size=(40, 32))[pids] + 1.1 * rng.normal(size=(len(pids), 32))).astype(np.float32)
    camids = np.tile(np.arange(8), 40)
    is_query = camids == 0
    args = (pids[is_query], pids[~is_query], camids[is_query], camids[~is_query])
    before = evaluate_rank(compute_distance_matrix(features[is_query], features[~is_query]), *args).mAP
    after = evaluate_rank(re_rank(features[is_query], features[~is_query]), *args).mAP
    assert before == pytest.approx(0.5949, abs=1e-4)
    assert after == pytest.approx(0.7774, abs=1e-4)


@pytest.mark.parametrize("kwargs,message", [
    (dict(k1=0), "k1=0"),
    (dict(k1=200), "at most the 120 query"),
    (dict(lambda_value=1.5), "lambda_value=1.5"),
    (dict(metric="manhattan"), "manhattan"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    query, gallery = REFERENCE["euclidean_k20_k6__query"], REFERENCE["euclidean_k20_k6__gallery"]
    with pytest.raises(ValueError, match=message):
        re_rank(query, gallery, **kwargs)
