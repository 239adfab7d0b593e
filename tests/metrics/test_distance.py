"""compute_distance_matrix against direct formulas, and its argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid.metrics import compute_distance_matrix


@pytest.fixture
def features():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(37, 24, generator=gen), torch.randn(53, 24, generator=gen)


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_euclidean_is_squared_l2(features, chunk_size):
    q, g = features
    dist = compute_distance_matrix(q, g, metric="euclidean", chunk_size=chunk_size)
    expected = torch.cdist(q.double(), g.double()) ** 2
    assert dist.dtype == torch.float32 and dist.shape == (37, 53)
    torch.testing.assert_close(dist.double(), expected, atol=1e-4, rtol=1e-5)


def test_euclidean_of_identical_features_is_clamped_at_zero(features):
    q, _ = features
    dist = compute_distance_matrix(q * 100, q * 100)
    assert (dist >= 0).all()
    assert dist.diagonal().abs().max() < 1.0  # rounding noise only; |q|^2 is ~2e5 here


@pytest.mark.parametrize("chunk_size", [3, 4096])
def test_cosine_is_one_minus_cosine_similarity(features, chunk_size):
    q, g = features
    dist = compute_distance_matrix(q.numpy(), g.double(), metric="cosine", chunk_size=chunk_size)
    expected = 1 - F.cosine_similarity(q.double()[:, None, :], g.double()[None, :, :], dim=-1)
    assert dist.dtype == torch.float32
    torch.testing.assert_close(dist.double(), expected, atol=1e-5, rtol=0)
    # invariant to feature scale
    torch.testing.assert_close(compute_distance_matrix(q * 7, g, metric="cosine"), dist, atol=1e-5, rtol=0)


def test_numpy_and_torch_inputs_agree(features):
    q, g = features
    torch.testing.assert_close(compute_distance_matrix(q.numpy(), g.numpy()), compute_distance_matrix(q, g))


def test_unknown_metric_names_the_valid_ones(features):
    with pytest.raises(ValueError, match="euclidean, cosine"):
        compute_distance_matrix(*features, metric="manhattan")


def test_feature_dimension_mismatch(features):
    q, g = features
    with pytest.raises(ValueError, match="feature dimensions differ.*24.*23"):
        compute_distance_matrix(q, g[:, :23])


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_invalid_chunk_size(features, bad):
    with pytest.raises(ValueError, match="chunk_size"):
        compute_distance_matrix(*features, chunk_size=bad)


def test_non_2d_features_are_rejected():
    with pytest.raises(ValueError, match="query_features must be 2-D"):
        compute_distance_matrix(np.zeros(5), np.zeros((2, 5)))
