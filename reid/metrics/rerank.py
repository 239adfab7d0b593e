"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) from features, in memory linear in the number of images.

The definition and defaults are those of the community implementation (torchreid's `re_ranking`, which
fast-reid and the strong baseline share) applied to the three matrices `compute_distance_matrix` gives: the
given distances squared and each row scaled by its maximum; k1-reciprocal neighbour sets, expanded by the
round(k1/2)-reciprocal sets of their members that overlap them by more than 2/3; Gaussian-weighted neighbour
vectors, averaged over each image's k2 nearest neighbours (query expansion); the Jaccard distance between those
vectors, blended with the scaled original distance by `lambda_value`.

That implementation builds dense (q+g)² matrices: 8.6 GB at Market-1501 scale, some 200 GB at MSMT17's. Here
only the nearest neighbours of each image and its sparse neighbour vector are kept (O(N·k) memory), distance
rows are computed a block at a time, and the Jaccard distances of one block of queries at a time come from an
inverted index over the gallery's vectors. Everything is torch, so it runs on CPU or CUDA tensors alike.
"""

from __future__ import annotations

import numpy as np
import torch

from reid.metrics.distance import METRICS, ArrayLike, _as_features, compute_distance_matrix

# Each image keeps this many times its k1 + 1 nearest neighbours with their distances, so the weights of its
# expanded neighbour set (neighbours of neighbours) are mostly looked up rather than recomputed.
_LOOKUP_FACTOR = 4
# Candidates each image keeps beyond the k it needs, so exact ties at the k-th place can be told apart.
_SPARE = 8
# Side of the square blocks of the image x image distance matrix computed at a time.
_SQUARE_BLOCK = 2048
# Temporaries of one block stay under this many bytes (the output matrix itself is query x gallery float32).
_BLOCK_BYTES = 256 * 1024 * 1024


def re_rank(query_features: ArrayLike, gallery_features: ArrayLike, k1: int = 20, k2: int = 6,
            lambda_value: float = 0.3, metric: str = "euclidean") -> torch.Tensor:
    """Re-ranked query x gallery distances (float32, on the features' device); smaller is more similar."""
    q = _as_features(query_features, "query_features")
    g = _as_features(gallery_features, "gallery_features").to(q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: query_features has {q.shape[1]}, "
                         f"gallery_features has {g.shape[1]}")
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; valid metrics are {', '.join(METRICS)}")
    features = torch.cat([q, g])
    num_query, total = len(q), len(features)
    if not (isinstance(k1, int) and isinstance(k2, int)) or k1 < 1 or k2 < 1 or max(k1 + 1, k2) > total:
        raise ValueError(f"k1={k1!r}, k2={k2!r}: expected integers >= 1 with k1 + 1 and k2 at most the "
                         f"{total} query + gallery images")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value={lambda_value!r}: expected a value in [0, 1]")

    width = min(total, max(k1 + 1, k2) * _LOOKUP_FACTOR)
    original = torch.empty((num_query, total - num_query), dtype=torch.float32, device=features.device)
    scale, neighbours, scaled = _nearest(features, width, metric, original)
    vectors = _neighbour_vectors(features, scale, neighbours, scaled, k1, metric)
    if k2 != 1:
        vectors = _expand_queries(vectors, neighbours[:, :k2], total)
    return _blend(original, vectors, lambda_value)


def _distances(rows: torch.Tensor, features: torch.Tensor, metric: str) -> torch.Tensor:
    """The reference's working distance: `compute_distance_matrix`'s value, squared."""
    return compute_distance_matrix(rows, features, metric=metric).square_()


def _row_block(total: int, width: int) -> int:
    return max(1, min(total, _BLOCK_BYTES // max(1, 4 * width)))


def _nearest(features: torch.Tensor, k: int, metric: str,
             original: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image's largest working distance, its k nearest images by scaled distance (nearest first), and
    those scaled distances; the queries' scaled distances to the gallery go into `original` on the way.

    The order of exact ties decides which images are neighbours, so it is defined: a stable sort's, equal
    distances in index order (the community code's quicksort argsort leaves it to the numpy build). Distances
    are symmetric, so each square block of the image x image matrix is computed once and serves the rows of
    both its images' ranges; each row keeps its `k + _SPARE` smallest (distance, index) pairs. Scaling a row
    can make distinct distances equal, so rows whose k-th and last kept candidates then tie are ranked again.
    """
    num_query, total = len(original), len(features)
    keep = min(total, k + _SPARE)
    device = features.device
    best = torch.full((total, keep), torch.iinfo(torch.int64).max, dtype=torch.long, device=device)
    scale = torch.zeros(total, dtype=torch.float32, device=device)
    size = _SQUARE_BLOCK
    for first in range(0, total, size):
        rows = slice(first, min(total, first + size))
        for second in range(first, total, size):
            columns = slice(second, min(total, second + size))
            block = _distances(features[rows], features[columns], metric)
            if first < num_query and columns.stop > num_query:
                within = slice(max(0, num_query - second), None)
                original[first:min(num_query, rows.stop), max(0, second - num_query):columns.stop - num_query] = \
                    block[:num_query - first, within]
            _merge(best, scale, rows, block, second)
            if second != first:
                _merge(best, scale, columns, block.t(), first)
    original /= scale[:num_query, None]
    values, indices = _unpack(best)
    ranked = _pack(values / scale[:, None], indices).sort(dim=1).values
    scaled, neighbours = _unpack(ranked)
    unsure = (scaled[:, k - 1] == scaled[:, -1]).nonzero().flatten() if keep < total else []
    for row in unsure:
        exact = _distances(features[row:row + 1], features, metric)[0] / scale[row]
        neighbours[row] = exact.sort(stable=True).indices[:keep]
        scaled[row] = exact[neighbours[row]]
    return scale, neighbours[:, :k].contiguous(), scaled[:, :k].contiguous()


def _pack(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(value, index) as one int64 that orders like the pair: the bits of a float >= 0 order like its value."""
    return (values.contiguous().view(torch.int32).long() << 32) | indices


def _unpack(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (keys >> 32).int().view(torch.float32), keys & 0xFFFFFFFF


def _merge(best: torch.Tensor, scale: torch.Tensor, rows: slice, block: torch.Tensor, offset: int) -> None:
    """Fold one block of distances (columns from `offset`) into its rows' kept candidates and maxima.

    The block's own selection may drop some of several equal distances at its last kept place; then the row's
    k-th and last kept distances are equal too, which `_nearest` catches and ranks again in full.
    """
    scale[rows] = torch.maximum(scale[rows], block.amax(dim=1))
    found = block.topk(min(best.shape[1], block.shape[1]), dim=1, largest=False, sorted=False)
    keys = _pack(found.values, found.indices + offset)
    best[rows] = torch.cat([best[rows], keys], dim=1).topk(best.shape[1], dim=1, largest=False, sorted=False).values


def _reciprocal(neighbours: torch.Tensor) -> torch.Tensor:
    """mask[i, a]: image i is among the neighbours of its a-th neighbour (so that neighbour is k-reciprocal)."""
    total, k = neighbours.shape
    mask = torch.empty((total, k), dtype=torch.bool, device=neighbours.device)
    step = _row_block(total, k * k)
    for begin in range(0, total, step):
        rows = torch.arange(begin, min(total, begin + step), device=neighbours.device)
        mask[rows] = (neighbours[neighbours[rows]] == rows[:, None, None]).any(dim=2)
    return mask


def _pair_distances(features: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                    metric: str) -> torch.Tensor:
    """Working distances of image rows[i] to images columns[i, :], by the same formula as the matrices."""
    a = features[rows]
    b = features[columns]
    if metric == "cosine":
        a = torch.nn.functional.normalize(a, dim=-1)
        b = torch.nn.functional.normalize(b, dim=-1)
        value = 1.0 - torch.einsum("nd,nwd->nw", a, b)
    else:
        value = (a.square().sum(-1)[:, None] + b.square().sum(-1) - 2.0 * torch.einsum("nd,nwd->nw", a, b))
        value = value.clamp_(min=0.0)
    return value.square_()


def _neighbour_vectors(features: torch.Tensor, scale: torch.Tensor, neighbours: torch.Tensor,
                       scaled: torch.Tensor, k1: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's sparse neighbour vector, as (columns, weights) padded with column N and weight 0."""
    total = len(features)
    knn = neighbours[:, :k1 + 1]
    half = int(np.around(k1 / 2.0)) + 1
    knn_half = neighbours[:, :half]
    recip = _reciprocal(knn)
    recip_half = _reciprocal(knn_half)
    width = (k1 + 1) * (1 + half)
    columns = torch.full((total, width), total, dtype=torch.long, device=features.device)
    step = _row_block(total, (k1 + 1) * half * (k1 + 1))
    for begin in range(0, total, step):
        rows = slice(begin, min(total, begin + step))
        own, own_mask = knn[rows], recip[rows]
        candidate_sets = knn_half[own]                                       # (b, k1+1, half)
        candidate_masks = recip_half[own] & own_mask[:, :, None]
        shared = ((candidate_sets[..., None] == own[:, None, None, :]) & own_mask[:, None, None, :]).any(dim=3)
        overlap = (shared & candidate_masks).sum(dim=2).double()
        joins = own_mask & (overlap > 2.0 / 3.0 * candidate_masks.sum(dim=2).double())
        members = torch.cat([torch.where(own_mask, own, total),
                             torch.where(candidate_masks & joins[:, :, None], candidate_sets, total).flatten(1)], 1)
        members = members.sort(dim=1).values
        repeated = torch.zeros_like(members, dtype=torch.bool)
        repeated[:, 1:] = members[:, 1:] == members[:, :-1]
        columns[rows] = members.masked_fill_(repeated, total).sort(dim=1).values
    used = int((columns < total).sum(dim=1).max())
    columns = columns[:, :used].contiguous()
    distance = torch.zeros(columns.shape, dtype=torch.float32, device=features.device)
    found = torch.zeros(columns.shape, dtype=torch.bool, device=features.device)
    step = _row_block(total, used * neighbours.shape[1])
    for begin in range(0, total, step):
        rows = slice(begin, min(total, begin + step))
        matches = columns[rows, :, None] == neighbours[rows, None, :]
        found[rows] = matches.any(dim=2)
        distance[rows] = scaled[rows].gather(1, matches.int().argmax(dim=2))
    # Members of the expanded set beyond an image's lookup list: their distances computed pair by pair.
    row_of, slot_of = ((columns < total) & ~found).nonzero(as_tuple=True)
    step = _row_block(len(row_of), max(1, features.shape[1]))
    for begin in range(0, len(row_of), step):
        rows, slots = row_of[begin:begin + step], slot_of[begin:begin + step]
        pair = _pair_distances(features, rows, columns[rows, slots][:, None], metric)[:, 0]
        distance[rows, slots] = pair / scale[rows]
    valid = columns < total
    weights = torch.where(valid, torch.exp(-distance), torch.zeros_like(distance))
    return columns, weights / weights.sum(dim=1, keepdim=True)


def _expand_queries(vectors: tuple[torch.Tensor, torch.Tensor], nearest: torch.Tensor,
                    total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's vector replaced by the mean of its k2 nearest images' vectors (its own included)."""
    columns, weights = vectors
    k2 = nearest.shape[1]
    out_columns, out_weights = [], []
    step = _row_block(total, 3 * k2 * columns.shape[1])
    for begin in range(0, total, step):
        rows = nearest[begin:begin + step]
        cols = columns[rows].flatten(1)
        vals = weights[rows].flatten(1)
        cols, order = cols.sort(dim=1)
        vals = vals.gather(1, order)
        starts = torch.ones_like(cols, dtype=torch.bool)
        starts[:, 1:] = cols[:, 1:] != cols[:, :-1]
        slot = starts.cumsum(dim=1) - 1
        summed = torch.zeros_like(vals).scatter_add_(1, slot, vals)
        merged = torch.full_like(cols, total).scatter_(1, slot, cols)
        out_columns.append(merged)
        out_weights.append(summed / k2)
    columns, weights = torch.cat(out_columns), torch.cat(out_weights)
    used = int((columns < total).sum(dim=1).max())
    return columns[:, :used].contiguous(), weights[:, :used].contiguous()


def _blend(original: torch.Tensor, vectors: tuple[torch.Tensor, torch.Tensor], lambda_value: float) -> torch.Tensor:
    """(1 - λ) Jaccard distance of the vectors + λ scaled original distance, for every query x gallery pair;
    written over `original` (the queries' scaled distances to the gallery)."""
    columns, weights = vectors
    num_query, num_gallery = original.shape
    total = num_query + num_gallery
    device = original.device
    # Inverted index over the gallery's vectors: for each column, the gallery images holding it, and their weights.
    gallery_columns = columns[num_query:]
    valid = gallery_columns < total
    owner = torch.arange(num_gallery, device=device)[:, None].expand_as(gallery_columns)[valid]
    index_columns = gallery_columns[valid]
    order = index_columns.argsort(stable=True)
    index_owner, index_weight = owner[order], weights[num_query:][valid][order]
    index_start = torch.zeros(total + 1, dtype=torch.long, device=device)
    index_start[1:] = torch.bincount(index_columns, minlength=total).cumsum(0)

    step = _row_block(num_query, num_gallery + 4 * columns.shape[1] * max(1, len(index_owner) // max(1, total)))
    for begin in range(0, num_query, step):
        rows = slice(begin, min(num_query, begin + step))
        query_columns = columns[rows]
        held = query_columns < total
        local = torch.arange(query_columns.shape[0], device=device)[:, None].expand_as(query_columns)[held]
        column, weight = query_columns[held], weights[rows][held]
        first, count = index_start[column], index_start[column + 1] - index_start[column]
        pair_local = torch.repeat_interleave(local, count)
        pair_weight = torch.repeat_interleave(weight, count)
        offsets = torch.arange(int(count.sum()), device=device) - torch.repeat_interleave(count.cumsum(0) - count,
                                                                                           count)
        position = torch.repeat_interleave(first, count) + offsets
        overlap = torch.zeros((query_columns.shape[0], num_gallery), dtype=torch.float32, device=device)
        overlap.index_put_((pair_local, index_owner[position]), torch.minimum(pair_weight, index_weight[position]),
                           accumulate=True)
        jaccard = 1.0 - overlap / (2.0 - overlap)
        original[rows] = jaccard * (1.0 - lambda_value) + original[rows] * lambda_value
    return original
