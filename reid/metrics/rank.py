"""Market-1501 ranking metrics (mAP, CMC, mINP) without sorting the gallery.

The community implementation (torchreid / fast-reid ``eval_market1501``) argsorts every
row of the distance matrix; at Market-1501 scale that sort alone costs seconds, yet each
query has only ~14 positives, and every metric only needs, for each positive, the number
of negatives ranked before it. Queries are processed in blocks, each by one of two exact
paths:

* dense: every gallery item gets the number of the query's positives at or below its
  distance (one comparison pass per positive into a uint8 counter, or a batched
  ``searchsorted`` when there are many positives); a per-query histogram of that count
  over the negatives, cumulatively summed, gives the negatives before each positive.
* sparse: for queries whose positives all rank near the top (a good model), only the
  items up to the last positive's distance are gathered and binned the same way.

Each query's path is picked from a cost estimate on a sample of gallery columns.

Ranking rule (identical to a stable argsort of each row): gallery items are ordered by
ascending distance; among equal distances the lower gallery index ranks first, also when
a positive ties with a negative. Gallery items with the query's pid *and* camera are
discarded, items with the query's pid and another camera are positives, all other items
are negatives.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024
# Peak bytes per distance-matrix element inside a block: the int64 positive counts plus
# masks, or, on the sparse path, candidate index/value tensors when most items qualify.
_BYTES_PER_ELEMENT = 64
# A query takes the sparse path when (items up to its last positive) x (its positives) x
# this ratio is below the gallery size: the measured break-even against the dense path.
_SPARSE_COST_RATIO = 1.0
# Up to this many positives per query the dense path counts them with broadcast
# comparisons, _COMPARISON_GROUP positives per pass; beyond it a batched binary search is
# cheaper.
_MAX_COMPARISON_PASSES = 24
_COMPARISON_GROUP = 4
# Gallery columns sampled to estimate how many items rank before a query's last positive.
_SAMPLE_COLUMNS = 1024


@dataclass(frozen=True)
class RankResult:
    """Retrieval metrics over the queries that have at least one valid positive.

    ``cmc[k - 1]`` is the fraction of valid queries whose first positive ranks at ``k``
    or better; ``mINP`` is fast-reid's mean inverse negative penalty.
    """

    mAP: float
    cmc: np.ndarray = field(repr=False, compare=False)
    mINP: float
    num_valid_queries: int
    num_excluded_queries: int

    def rank(self, k: int) -> float:
        """Rank-k accuracy (``cmc[k - 1]``), so callers need not remember the offset."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank k must be in [1, {len(self.cmc)}], got {k}")
        return float(self.cmc[k - 1])


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(x))
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _as_labels(x: ArrayLike, name: str, length: int, axis: str) -> torch.Tensor:
    t = _as_tensor(x, name)
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(
            f"{name} must be 1-D with one entry per distmat {axis} ({length}), "
            f"got shape {tuple(t.shape)}"
        )
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.to(torch.int64)


def _as_distmat(distmat: ArrayLike) -> torch.Tensor:
    d = _as_tensor(distmat, "distmat")
    if d.dim() != 2:
        raise ValueError(
            f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(d.shape)}"
        )
    if d.dtype.is_complex or d.dtype == torch.bool:
        raise ValueError(f"distmat must be real-valued, got dtype {d.dtype}")
    if d.dtype in (torch.float16, torch.bfloat16):
        return d.float()
    if not d.dtype.is_floating_point:
        return d.double()
    return d


def _dense_codes(q: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Relabel arbitrary integer ids as 0..n-1 so they can index count tables."""
    values, inverse = torch.unique(torch.cat([q, g]), return_inverse=True)
    return inverse[: q.numel()], inverse[q.numel() :], int(values.numel())


def _block_rows(num_gallery: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return int(chunk_size)
    return max(1, _MEMORY_BUDGET_BYTES // (max(num_gallery, 1) * _BYTES_PER_ELEMENT))


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    *,
    chunk_size: int | None = None,
) -> RankResult:
    """Market-1501 mAP / CMC / mINP, equal to the community ``eval_market1501``.

    Accepts numpy arrays or torch tensors in any mix (GPU tensors are copied to the CPU).
    Same-pid same-camera gallery items are discarded per query; queries left without a
    positive are excluded and counted. Equal distances rank by gallery index (a stable
    argsort), so the result is exact and deterministic. A gallery smaller than
    ``max_rank`` clamps it with a warning, as the community code does. ``chunk_size``
    (queries per block) only bounds memory; by default a block stays near 256 MB.
    Raises ValueError on inconsistent shapes, NaN distances in an evaluated row, or when
    no query has a positive.
    """
    d = _as_distmat(distmat)
    num_q, num_g = d.shape
    qp = _as_labels(q_pids, "q_pids", num_q, "row")
    gp = _as_labels(g_pids, "g_pids", num_g, "column")
    qc = _as_labels(q_camids, "q_camids", num_q, "row")
    gc = _as_labels(g_camids, "g_camids", num_g, "column")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    max_rank = int(max_rank)
    step = _block_rows(num_g, chunk_size)
    if num_g < max_rank:
        warnings.warn(
            f"gallery has only {num_g} items, fewer than max_rank={max_rank}; "
            f"clamping max_rank to {num_g}",
            stacklevel=2,
        )
        max_rank = num_g

    qp, gp, num_pids = _dense_codes(qp, gp)
    qc, gc, num_cams = _dense_codes(qc, gc)

    # Positive counts come from label tables alone, before any distance is read.
    g_order = torch.argsort(gp, stable=True)
    pid_count = torch.bincount(gp, minlength=num_pids)
    pid_start = torch.cumsum(pid_count, 0) - pid_count
    keys, key_count = torch.unique(gp * num_cams + gc, return_counts=True)
    q_keys = qp * num_cams + qc
    num_pos = pid_count[qp].clone()
    if keys.numel():
        slot = torch.searchsorted(keys, q_keys).clamp_(max=keys.numel() - 1)
        num_pos -= torch.where(keys[slot] == q_keys, key_count[slot], 0)
    valid = torch.nonzero(num_pos > 0).squeeze(1)
    num_valid = int(valid.numel())
    if num_valid == 0:
        raise ValueError(
            f"no query has a positive: none of the {num_q} queries shares a pid with a "
            "gallery item from another camera, so mAP/CMC are undefined"
        )
    groups = _GroupIndex(gp, gc, g_order, pid_start, pid_count)
    sparse = torch.cat(
        [_prefer_sparse(d, rows, qp[rows], qc[rows], groups) for rows in valid.split(step)]
    )

    ap_sum = 0.0
    inp_sum = 0.0
    first_hit = []
    for use_sparse in (True, False):
        # Blocks of queries with similar positive counts keep the padding small.
        rows = valid[sparse == use_sparse]
        rows = rows[torch.argsort(num_pos[rows], stable=True)]
        for block_rows in rows.split(step) if rows.numel() else ():
            ap, inp, first = _evaluate_block(
                d.index_select(0, block_rows), qp[block_rows], qc[block_rows], groups, use_sparse
            )
            ap_sum += ap
            inp_sum += inp
            first_hit.append(first)

    hits = torch.bincount(torch.cat(first_hit).clamp(max=max_rank + 1) - 1, minlength=max_rank + 1)
    cmc = (torch.cumsum(hits[:max_rank], 0).double() / num_valid).numpy()
    cmc.flags.writeable = False
    return RankResult(
        mAP=ap_sum / num_valid,
        cmc=cmc,
        mINP=inp_sum / num_valid,
        num_valid_queries=num_valid,
        num_excluded_queries=num_q - num_valid,
    )


@dataclass(frozen=True)
class _GroupIndex:
    """Gallery items grouped by pid (``g_order[start[pid]:start[pid] + count[pid]]``)."""

    gp: torch.Tensor
    gc: torch.Tensor
    g_order: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor

    def same_pid(self, qp: torch.Tensor, qc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's same-pid gallery items in gallery order, and which are positives.

        Rows are padded by repeating their first item (every query here has one), so the
        indices are always valid gallery columns; padding is never a positive.
        """
        start, count = self.start[qp], self.count[qp]
        offs = torch.arange(int(count.max()))
        in_group = offs < count[:, None]
        same = self.g_order[torch.where(in_group, start[:, None] + offs, start[:, None])]
        return same, in_group & (self.gc[same] != qc[:, None])


def _prefer_sparse(
    d: torch.Tensor, rows: torch.Tensor, qp: torch.Tensor, qc: torch.Tensor, groups: _GroupIndex
) -> torch.Tensor:
    """Per query, whether the sparse path is expected to be cheaper than the dense one.

    The sparse path costs about (items up to the last positive) x (positives); that count
    is estimated from an evenly spaced sample of gallery columns.
    """
    num_g = d.shape[1]
    same, is_pos = groups.same_pid(qp, qc)
    neg_inf = torch.tensor(float("-inf"), dtype=d.dtype)
    last_d = torch.where(is_pos, d[rows[:, None], same], neg_inf).amax(1, keepdim=True)
    cols = torch.unique(torch.linspace(0, num_g - 1, min(num_g, _SAMPLE_COLUMNS)).long())
    below = torch.count_nonzero(d[rows[:, None], cols[None, :]] <= last_d, dim=1)
    candidates = below.double() * (num_g / cols.numel())
    return candidates * is_pos.sum(1) * _SPARSE_COST_RATIO < num_g


def _evaluate_block(
    dist: torch.Tensor,
    qp: torch.Tensor,
    qc: torch.Tensor,
    groups: _GroupIndex,
    use_sparse: bool,
) -> tuple[float, float, torch.Tensor]:
    """AP sum, INP sum and first-positive ranks for queries that all have a positive."""
    n, num_g = dist.shape
    # A sum is NaN if any entry is; only then (or on overflow) look element by element.
    if not bool(torch.isfinite(dist.sum())) and bool(torch.isnan(dist).any()):
        raise ValueError("distmat contains NaN, so the ranking is undefined")

    same, is_pos = groups.same_pid(qp, qc)
    # Positives first (stable, so gallery order is kept), then a stable sort by distance:
    # positives end up ordered by (distance, gallery index), padding last.
    by_kind = torch.argsort((~is_pos).to(torch.uint8), dim=1, stable=True)
    pos_i = torch.where(is_pos, same, num_g).gather(1, by_kind)
    inf = torch.tensor(float("inf"), dtype=dist.dtype)
    pos_d = torch.where(is_pos, dist.gather(1, same), inf).gather(1, by_kind)
    pos_d, by_dist = torch.sort(pos_d, dim=1, stable=True)
    pos_i = pos_i.gather(1, by_dist)
    num_pos = is_pos.sum(1)
    p = int(num_pos.max())
    pos_d, pos_i = pos_d[:, :p].contiguous(), pos_i[:, :p].contiguous()

    if use_sparse:
        last_d = pos_d.gather(1, (num_pos - 1)[:, None])
        neg_before = _negatives_before_sparse(dist, qp, groups.gp, pos_d, pos_i, last_d)
    else:
        neg_before = _negatives_before_dense(dist, same, pos_d, pos_i)

    k = torch.arange(1, p + 1, dtype=torch.float64)
    ranks = neg_before.double() + k
    ap = torch.where(k <= num_pos[:, None], k / ranks, 0.0).sum(1) / num_pos
    inp = num_pos / ranks.gather(1, (num_pos - 1)[:, None]).squeeze(1)
    return float(ap.sum()), float(inp.sum()), neg_before[:, 0] + 1


def _negatives_before_dense(
    dist: torch.Tensor, same: torch.Tensor, pos_d: torch.Tensor, pos_i: torch.Tensor
) -> torch.Tensor:
    """Negatives ranked before each positive, from a pass over every gallery item.

    ``before[r, g]`` = positives at or below item g's distance; items tied with a
    positive are corrected by gallery index afterwards (rare for real features).
    """
    n, num_g = dist.shape
    p = pos_d.shape[1]
    before = _positives_at_or_below(dist, pos_d)
    before.scatter_(1, same, p + 1)
    ones = torch.ones((1, 1), dtype=torch.int64).expand(n, num_g)
    hist = torch.zeros((n, p + 2), dtype=torch.int64).scatter_add_(1, before, ones)
    # Bin m >= 1 holds items with p_m <= d < p_{m+1}; one ties with p_m iff the bin is
    # not empty and its minimum is p_m.
    low = torch.full((n, p + 2), float("inf"), dtype=dist.dtype)
    low.scatter_reduce_(1, before, dist, "amin")
    tied = (low[:, 1 : p + 1] == pos_d) & (hist[:, 1 : p + 1] > 0)
    tied_rows = torch.nonzero(tied.any(1)).squeeze(1)
    if tied_rows.numel():
        sub_d, sub_b = dist[tied_rows], before[tied_rows]
        in_bins = (sub_b >= 1) & (sub_b <= p)
        at = pos_d[tied_rows].gather(1, (sub_b - 1).clamp_(0, p - 1))
        rr, g = torch.nonzero(in_bins & (sub_d == at), as_tuple=True)
        r = tied_rows[rr]
        right = sub_b[rr, g]
        left = torch.searchsorted(pos_d, pos_d, right=False)[r, right - 1]
        exact = _tied_positives_before(pos_d, pos_i, r, left, g)
        hist.index_put_((r, right), torch.full_like(r, -1), accumulate=True)
        hist.index_put_((r, exact), torch.ones_like(r), accumulate=True)
    return torch.cumsum(hist[:, :p], 1)


def _positives_at_or_below(dist: torch.Tensor, pos_d: torch.Tensor) -> torch.Tensor:
    """For every item, the number of sorted positive distances (row of ``pos_d``) <= it.

    With few positives, broadcast comparisons against a group of positives at a time,
    summed into a uint8 counter, beat a batched binary search (whose branches are
    unpredictable); grouping keeps the number of kernel launches low, which matters when
    the CPU is shared. With many positives the search wins.
    """
    p = pos_d.shape[1]
    if p > _MAX_COMPARISON_PASSES:
        return torch.searchsorted(pos_d, dist, right=True)
    count = torch.zeros(dist.shape, dtype=torch.uint8)
    for j in range(0, p, _COMPARISON_GROUP):
        group = pos_d[:, j : j + _COMPARISON_GROUP, None]
        count.add_((dist[:, None, :] >= group).sum(1, dtype=torch.uint8))
    return count.long()


def _negatives_before_sparse(
    dist: torch.Tensor,
    qp: torch.Tensor,
    gp: torch.Tensor,
    pos_d: torch.Tensor,
    pos_i: torch.Tensor,
    last_d: torch.Tensor,
) -> torch.Tensor:
    """Negatives ranked before each positive, visiting only items up to the last positive.

    Cheaper than the dense pass when few items rank before a query's last positive.
    """
    n, num_g = dist.shape
    p = pos_d.shape[1]
    flat = torch.nonzero((dist <= last_d).view(-1)).squeeze(1)
    r = torch.div(flat, num_g, rounding_mode="floor")
    g = flat - r * num_g
    dv = torch.take(dist, flat)
    row_d = pos_d.index_select(0, r)
    below = torch.searchsorted(row_d, dv[:, None]).squeeze(1)
    # An item equal to the next positive's distance is tied: order those by gallery index.
    nxt = row_d.gather(1, below.clamp(max=p - 1)[:, None]).squeeze(1)
    tied = torch.nonzero((below < p) & (nxt == dv)).squeeze(1)
    if tied.numel():
        below[tied] = _tied_positives_before(pos_d, pos_i, r[tied], below[tied], g[tied])
    # Positives and same-camera items go to the spare bin p, which no positive reads.
    below = torch.where(gp[g] != qp[r], below, p)
    hist = torch.bincount(r * (p + 1) + below, minlength=n * (p + 1)).view(n, p + 1)
    return torch.cumsum(hist[:, :p], 1)


def _tied_positives_before(
    pos_d: torch.Tensor,
    pos_i: torch.Tensor,
    r: torch.Tensor,
    left: torch.Tensor,
    g: torch.Tensor,
) -> torch.Tensor:
    """Positives ranked before items that tie with a positive's distance.

    ``left`` counts each item's strictly closer positives, so its tie group starts at
    ``left`` and runs while the distance stays equal; the group's gallery indices are
    ascending, so it is scanned in lockstep until an index exceeds the item's own ``g``.
    """
    p = pos_i.shape[1]
    value = pos_d[r, left]
    exact = left.clone()
    active = torch.ones_like(r, dtype=torch.bool)
    while bool(active.any()):
        j = exact.clamp(max=p - 1)
        active &= (exact < p) & (pos_d[r, j] == value) & (pos_i[r, j] < g)
        exact += active
    return exact
