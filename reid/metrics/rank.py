"""Market-1501 ranking metrics (mAP, CMC, mINP) without argsorting the gallery.

The community implementation (torchreid / fast-reid ``eval_market1501``) argsorts every
row of the distance matrix and walks it per query. Every metric only needs, for each of a
query's ~14 positives, the number of negatives ranked before it, so here:

1. Each query's positives come from label tables; their distances are sorted (ties by
   gallery index).
2. One pass counts, per query, the items at or below its last positive's distance: only
   those can rank before a positive (few for a good model, most of the row for a weak
   one).
3. Queries are grouped by that count; for each block the smallest ``count`` values of
   every row are selected (a partial partition) and sorted, values only, never indices.
   Two binary searches per positive in that sorted prefix give the items strictly below
   and at or below its distance; subtracting the query's own same-pid items leaves the
   negatives before it, whatever the model's quality.

Ranking rule (identical to a stable argsort of each row): gallery items are ordered by
ascending distance; among equal distances the lower gallery index ranks first, also when
a positive ties with a negative (found exactly: a positive's "at or below" count then
exceeds its "below" count by more than its own same-pid items; only those are recounted
by gallery index). Gallery items with the query's pid *and* camera are discarded, items
with the query's pid and another camera are positives, all other items are negatives.

On the CPU the two passes over the distance matrix run in numpy (its SIMD partition and
sort are far faster than torch's CPU sort), split over plain threads that block rather
than spin when idle; torch's own ops here are small, so they run on one thread. On a GPU
the same steps run in torch on the device.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024
# Peak bytes per distance-matrix element inside a block: the gathered rows, their sorted
# prefix and a comparison mask.
_BYTES_PER_ELEMENT = 16
# A block whose prefix would cover more than this fraction of the gallery sorts whole rows:
# the partition before the sort then no longer pays for itself.
_FULL_SORT_FRACTION = 0.8
# Rows per task handed to a worker thread; small enough to balance two busy cores.
_ROWS_PER_TASK = 64


@dataclass(frozen=True)
class PerQuery:
    """Each query's figures, in query order (numpy arrays of length num_query).

    ``ap``: its average precision (NaN for an excluded query, which has no positive);
    ``first_match``: the 1-based rank of its first positive among the gallery items the
    protocol keeps (0 for an excluded query); ``num_positives``: its positives (same pid,
    another camera). The mean of the finite ``ap`` is ``mAP``.
    """

    ap: np.ndarray
    first_match: np.ndarray
    num_positives: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Which queries were scored (those with at least one positive)."""
        return self.num_positives > 0


@dataclass(frozen=True)
class RankResult:
    """Retrieval metrics over the queries that have at least one valid positive.

    ``cmc[k - 1]`` is the fraction of valid queries whose first positive ranks at ``k``
    or better; ``mINP`` is fast-reid's mean inverse negative penalty.

    With ``evaluate_rank(..., per_query=True)``, ``per_query`` holds each query's figures
    in query order; otherwise it is None.
    """

    mAP: float
    cmc: np.ndarray = field(repr=False, compare=False)
    mINP: float
    num_valid_queries: int
    num_excluded_queries: int
    per_query: PerQuery | None = field(default=None, repr=False, compare=False)

    def rank(self, k: int) -> float:
        """Rank-k accuracy (``cmc[k - 1]``), so callers need not remember the offset."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank k must be in [1, {len(self.cmc)}], got {k}")
        return float(self.cmc[k - 1])


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(x))
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _as_labels(x: ArrayLike, name: str, length: int, axis: str, device: torch.device) -> torch.Tensor:
    t = _as_tensor(x, name)
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(
            f"{name} must be 1-D with one entry per distmat {axis} ({length}), "
            f"got shape {tuple(t.shape)}"
        )
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


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
    per_query: bool = False,
) -> RankResult:
    """Market-1501 mAP / CMC / mINP, equal to the community ``eval_market1501``.

    Accepts numpy arrays or torch tensors in any mix; a CUDA ``distmat`` is evaluated on
    its device (labels are moved there). Same-pid same-camera gallery items are discarded
    per query; queries left without a positive are excluded and counted. Equal distances
    rank by gallery index (a stable argsort), so the result is exact and deterministic. A
    gallery smaller than ``max_rank`` clamps it with a warning, as the community code
    does. ``chunk_size`` (queries per block) only bounds memory; by default a block stays
    near 256 MB. On the CPU the heavy passes use ``torch.get_num_threads()`` threads.
    ``per_query`` also returns each query's AP, first-match rank and positive count
    (``RankResult.per_query``), figures the computation has anyway.
    Raises ValueError on inconsistent shapes, NaN distances in an evaluated row, or when
    no query has a positive.
    """
    d = _as_distmat(distmat)
    num_q, num_g = d.shape
    qp = _as_labels(q_pids, "q_pids", num_q, "row", d.device)
    gp = _as_labels(g_pids, "g_pids", num_g, "column", d.device)
    qc = _as_labels(q_camids, "q_camids", num_q, "row", d.device)
    gc = _as_labels(g_camids, "g_camids", num_g, "column", d.device)
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
    with _RowKernels.for_distmat(d) as kernels:
        return _evaluate(d, qp, gp, qc, gc, max_rank, step, kernels, per_query)


def _evaluate(
    d: torch.Tensor,
    qp: torch.Tensor,
    gp: torch.Tensor,
    qc: torch.Tensor,
    gc: torch.Tensor,
    max_rank: int,
    step: int,
    kernels: _RowKernels,
    per_query: bool = False,
) -> RankResult:
    num_q = d.shape[0]
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

    # Items that can rank before a positive: those at or below the query's last positive.
    reach = torch.cat(
        [kernels.count_at_most(rows, _last_positive(d, rows, qp, qc, groups)) for rows in valid.split(step)]
    )
    # Blocks of queries with similar reach keep every row's sorted prefix short.
    order = torch.argsort(reach, stable=True)
    ap_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    block_first, block_ap = [], []
    for block in order.split(step):
        ap, inp, first = _evaluate_block(d, valid[block], reach[block], qp, qc, groups, kernels)
        ap_sum += ap.sum()
        inp_sum += inp.sum()
        block_first.append(first)
        if per_query:
            block_ap.append(ap)

    first_hit = torch.cat(block_first)
    hits = torch.bincount(first_hit.clamp(max=max_rank + 1) - 1, minlength=max_rank + 1)
    cmc = (torch.cumsum(hits[:max_rank], 0).double() / num_valid).cpu().numpy()
    cmc.flags.writeable = False
    return RankResult(
        mAP=float(ap_sum) / num_valid,
        cmc=cmc,
        mINP=float(inp_sum) / num_valid,
        num_valid_queries=num_valid,
        num_excluded_queries=num_q - num_valid,
        per_query=_per_query(valid[order], torch.cat(block_ap), first_hit, num_pos) if per_query else None,
    )


def _per_query(rows: torch.Tensor, ap: torch.Tensor, first_hit: torch.Tensor, num_pos: torch.Tensor) -> PerQuery:
    """Scatter the blocks' per-row figures (rows in evaluation order) back into query order."""
    num_q = num_pos.numel()
    query_ap = torch.full((num_q,), float("nan"), dtype=torch.float64, device=ap.device)
    query_ap[rows] = ap
    first = torch.zeros(num_q, dtype=torch.int64, device=first_hit.device)
    first[rows] = first_hit
    return PerQuery(ap=query_ap.cpu().numpy(), first_match=first.cpu().numpy(), num_positives=num_pos.cpu().numpy())


@dataclass(frozen=True)
class _GroupIndex:
    """Gallery items grouped by pid (``g_order[start[pid]:start[pid] + count[pid]]``)."""

    gp: torch.Tensor
    gc: torch.Tensor
    g_order: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor

    def same_pid(self, qp: torch.Tensor, qc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each query's same-pid gallery items in gallery order, which are real, which positives.

        Rows are padded by repeating their first item (every query here has one), so the
        indices are always valid gallery columns; padding is never a positive.
        """
        start, count = self.start[qp], self.count[qp]
        offs = torch.arange(int(count.max()), device=qp.device)
        in_group = offs < count[:, None]
        same = self.g_order[torch.where(in_group, start[:, None] + offs, start[:, None])]
        return same, in_group, in_group & (self.gc[same] != qc[:, None])


def _last_positive(
    d: torch.Tensor, rows: torch.Tensor, qp: torch.Tensor, qc: torch.Tensor, groups: _GroupIndex
) -> torch.Tensor:
    """The distance of each query's farthest positive."""
    same, _, is_pos = groups.same_pid(qp[rows], qc[rows])
    neg_inf = torch.tensor(float("-inf"), dtype=d.dtype, device=d.device)
    return torch.where(is_pos, d[rows[:, None], same], neg_inf).amax(1)


def _evaluate_block(
    d: torch.Tensor,
    rows: torch.Tensor,
    reach: torch.Tensor,
    qp: torch.Tensor,
    qc: torch.Tensor,
    groups: _GroupIndex,
    kernels: _RowKernels,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row AP, INP and first-positive ranks for queries that all have a positive.

    ``reach``: per row, the number of items at or below its last positive.
    """
    qp, qc = qp[rows], qc[rows]
    same, in_group, is_pos = groups.same_pid(qp, qc)
    same_d = d[rows[:, None], same]
    # Positives first (stable, so gallery order is kept), then a stable sort by distance:
    # positives end up ordered by (distance, gallery index), padding (+inf) last.
    by_kind = torch.argsort((~is_pos).to(torch.uint8), dim=1, stable=True)
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
    pos_d = torch.where(is_pos, same_d, inf).gather(1, by_kind)
    pos_i = same.gather(1, by_kind)
    pos_d, by_dist = torch.sort(pos_d, dim=1, stable=True)
    pos_i = pos_i.gather(1, by_dist)
    num_pos = is_pos.sum(1)
    p = int(num_pos.max())
    pos_d, pos_i = pos_d[:, :p].contiguous(), pos_i[:, :p]
    real = torch.arange(p, device=d.device) < num_pos[:, None]

    below, at_or_below = kernels.positions(rows, reach, pos_d)
    # The query's own same-pid items (positives and discarded ones) are no negatives;
    # padding sorts last as +inf, so it only counts as equal to a positive at +inf.
    same_sorted = torch.sort(torch.where(in_group, same_d, inf), dim=1).values
    same_below = torch.searchsorted(same_sorted, pos_d, right=False)
    same_equal = torch.searchsorted(same_sorted, pos_d, right=True) - same_below
    same_equal -= torch.where(pos_d == inf, (~in_group).sum(1, keepdim=True), 0)
    neg_before = below - same_below
    tied = real & (at_or_below - below > same_equal)
    if bool(tied.any()):
        r, k = torch.nonzero(tied, as_tuple=True)
        neg_before[r, k] += _tied_negatives_before(d, rows[r], pos_d[r, k], pos_i[r, k], qp[r], groups.gp)

    k = torch.arange(1, p + 1, dtype=torch.float64, device=d.device)
    ranks = neg_before.double() + k
    ap = torch.where(real, k / ranks, 0.0).sum(1) / num_pos
    inp = num_pos / ranks.gather(1, (num_pos - 1)[:, None]).squeeze(1)
    return ap, inp, neg_before[:, 0] + 1


def _tied_negatives_before(
    d: torch.Tensor,
    rows: torch.Tensor,
    value: torch.Tensor,
    index: torch.Tensor,
    qp: torch.Tensor,
    gp: torch.Tensor,
) -> torch.Tensor:
    """Negatives at exactly a positive's distance with a lower gallery index (rare)."""
    columns = torch.arange(d.shape[1], device=d.device)
    out = []
    for part in torch.arange(rows.numel(), device=d.device).split(max(1, _block_rows(d.shape[1], None))):
        ahead = (d[rows[part]] == value[part, None]) & (columns < index[part, None])
        out.append((ahead & (gp != qp[part, None])).sum(1))
    return torch.cat(out)


class _RowKernels:
    """The two passes over the distance matrix's rows: counting, and ranking values in them.

    On the CPU they run in numpy, ``threads`` workers on tasks of a few rows, while torch
    runs on one thread (its ops here are small, and idle OpenMP workers spin, taking the
    core the workers need when the machine is busy); on another device in torch.
    """

    def __init__(self, d: torch.Tensor, pool: ThreadPoolExecutor | None) -> None:
        self.d = d
        self.pool = pool
        self.host = d.numpy() if _runs_in_numpy(d) else None

    @classmethod
    @contextlib.contextmanager
    def for_distmat(cls, d: torch.Tensor) -> Iterator[_RowKernels]:
        """Kernels for ``d``; on the CPU, torch is held to one thread while they live."""
        if not _runs_in_numpy(d):
            yield cls(d, None)
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if threads > 1 and d.shape[0] > _ROWS_PER_TASK:
                with ThreadPoolExecutor(threads, thread_name_prefix="evaluate_rank") as pool:
                    yield cls(d, pool)
            else:
                yield cls(d, None)
        finally:
            torch.set_num_threads(threads)

    def count_at_most(self, rows: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """Per row, the number of items with distance <= ``bound``; raises on NaN."""
        if self.host is None:
            block = self.d.index_select(0, rows)
            _check_no_nan(block)
            return (block <= bound[:, None]).sum(1)
        host, rows_np, bound_np = self.host, rows.numpy(), bound.numpy()
        counts = np.empty(rows_np.size, dtype=np.int64)

        def task(lo: int, hi: int) -> None:
            block = host[rows_np[lo:hi]]
            _check_no_nan(block)
            counts[lo:hi] = np.count_nonzero(block <= bound_np[lo:hi, None], axis=1)

        self._run(task, rows_np.size)
        return torch.from_numpy(counts)

    def positions(
        self, rows: torch.Tensor, reach: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, how many of its items are < and <= each of its ``values``.

        Exact for values up to the row's ``reach``-th smallest distance: only that many
        of the smallest items of each row (the most over a task's rows) are selected (a
        partition) and sorted.
        """
        if self.host is None:
            prefix = torch.sort(self.d.index_select(0, rows), dim=1).values[:, : int(reach.max())].contiguous()
            return torch.searchsorted(prefix, values), torch.searchsorted(prefix, values, right=True)
        host, rows_np, reach_np = self.host, rows.numpy(), reach.numpy()
        below = torch.empty(values.shape, dtype=torch.int64)
        at_or_below = torch.empty(values.shape, dtype=torch.int64)

        def task(lo: int, hi: int) -> None:
            # Task-sized copies (a few MB) are reused by the allocator; one block-sized
            # buffer would be mapped afresh and page-faulted on every block.
            block = host[rows_np[lo:hi]]
            length = int(reach_np[lo:hi].max())
            if length > _FULL_SORT_FRACTION * block.shape[1]:
                block.sort(axis=1)
                prefix = block
            else:
                block.partition(length - 1, axis=1)
                prefix = np.sort(block[:, :length], axis=1)
            sorted_rows = torch.from_numpy(prefix)
            torch.searchsorted(sorted_rows, values[lo:hi], out=below[lo:hi])
            torch.searchsorted(sorted_rows, values[lo:hi], right=True, out=at_or_below[lo:hi])

        self._run(task, rows_np.size)
        return below, at_or_below

    def _run(self, task: Callable[[int, int], None], num_rows: int) -> None:
        bounds = [(lo, min(lo + _ROWS_PER_TASK, num_rows)) for lo in range(0, num_rows, _ROWS_PER_TASK)]
        if self.pool is None or len(bounds) == 1:
            for lo, hi in bounds:
                task(lo, hi)
            return
        for future in [self.pool.submit(task, lo, hi) for lo, hi in bounds]:
            future.result()


def _runs_in_numpy(d: torch.Tensor) -> bool:
    """Whether the row passes run in numpy (CPU tensors) rather than torch (other devices)."""
    return d.device.type == "cpu"


def _check_no_nan(block: np.ndarray | torch.Tensor) -> None:
    # A sum is NaN if any entry is; only then (or on overflow) look element by element.
    lib = np if isinstance(block, np.ndarray) else torch
    if not bool(lib.isfinite(block.sum())) and bool(lib.isnan(block).any()):
        raise ValueError("distmat contains NaN, so the ranking is undefined")
