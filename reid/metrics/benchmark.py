"""Time distance matrix + Market-1501 evaluation on synthetic data of Market-1501 size.

    python -m reid.metrics.benchmark [--num-query 3368 --num-gallery 15913 --num-ids 751
                                      --dim 2048 --repeats 3 --seed 0 --noise 0.5 2.25 6.0]
                                     [--reference]

The features have identity structure (a random centre per identity, a small offset per
camera, per-image noise of varying strength), so mAP is in the range of a real model and
the ranks of positives are realistic; the cost of :func:`evaluate_rank` depends on how far
down the ranking the positives sit, so by default three noise levels are run: a well
trained, a weak and an untrained model, and a summary prints all three. Pids and cameras
follow Market-1501: 6 cameras, every identity seen by several of them, gallery images in
the query's own camera (which the protocol discards) and pid-0 distractors. ``--reference`` also times the community's
numpy per-query loop on a subset of queries, extrapolates it to all queries and checks
that both give the same metrics on that subset. Wall times are medians/minima over
``--repeats``; "cpu s" is process CPU time summed over threads (on a busy machine it is
the steadier figure, especially with ``--threads 1``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from reid.metrics.distance import compute_distance_matrix
from reid.metrics.rank import RankResult, evaluate_rank

NUM_CAMERAS = 6
DISTRACTOR_FRACTION = 0.1755  # Market-1501: 2,793 of the 15,913 test gallery images are pid 0


@dataclass
class SyntheticSplit:
    """Query/gallery features and labels; pid 0 marks gallery distractors."""

    q_feats: torch.Tensor
    g_feats: torch.Tensor
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray


def make_market_like(
    num_query: int = 3368,
    num_gallery: int = 15913,
    num_ids: int = 751,
    dim: int = 2048,
    seed: int = 0,
    noise: float = 1.4,
) -> SyntheticSplit:
    """Synthetic query/gallery split with Market-1501's label structure.

    ``noise`` scales per-image noise relative to the unit-variance identity centres; the
    default gives mAP around 0.8 at ``dim=2048`` (larger is harder).
    """
    if num_ids < 1 or num_query < 1:
        raise ValueError(f"num_ids and num_query must be >= 1, got {num_ids} and {num_query}")
    num_distractors = int(round(DISTRACTOR_FRACTION * num_gallery))
    num_id_images = num_gallery - num_distractors
    if num_id_images < 2 * num_ids:
        raise ValueError(
            f"num_gallery={num_gallery} leaves {num_id_images} non-distractor images, "
            f"fewer than two per identity (num_ids={num_ids})"
        )
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    # Each identity is seen by 2..6 cameras and has gallery images in at least two of them,
    # so every query has a positive; images per identity vary (Dirichlet shares).
    cams_of = [
        rng.choice(NUM_CAMERAS, size=rng.integers(2, NUM_CAMERAS + 1), replace=False) for _ in range(num_ids)
    ]
    extra = rng.multinomial(num_id_images - 2 * num_ids, rng.dirichlet(np.full(num_ids, 2.0)))
    per_id = 2 + extra
    id_pids = np.repeat(np.arange(1, num_ids + 1), per_id)
    id_cams = np.concatenate(
        [
            np.concatenate([rng.choice(cams, 2, replace=False), rng.choice(cams, n - 2)])
            for cams, n in zip(cams_of, per_id)
        ]
    )
    g_pids = np.concatenate([id_pids, np.zeros(num_distractors, dtype=np.int64)])
    g_camids = np.concatenate([id_cams, rng.integers(0, NUM_CAMERAS, num_distractors)])

    # Every identity gets queries round-robin, from cameras it is seen by.
    q_pids = np.resize(rng.permutation(np.arange(1, num_ids + 1)), num_query)
    q_camids = np.array([rng.choice(cams_of[p - 1]) for p in q_pids])

    centres = torch.randn(num_ids + 1, dim, generator=gen)
    cam_offset = 0.3 * torch.randn(NUM_CAMERAS, dim, generator=gen)

    def images(pids: np.ndarray, camids: np.ndarray, centre: torch.Tensor) -> torch.Tensor:
        scale = noise * torch.exp(0.15 * torch.randn(len(pids), 1, generator=gen))
        noise_part = scale * torch.randn(len(pids), dim, generator=gen)
        return centre + cam_offset[torch.as_tensor(camids)] + noise_part

    g_centres = centres[torch.as_tensor(g_pids)]
    g_centres[torch.as_tensor(g_pids == 0)] = torch.randn(num_distractors, dim, generator=gen)
    return SyntheticSplit(
        q_feats=images(q_pids, q_camids, centres[torch.as_tensor(q_pids)]),
        g_feats=images(g_pids, g_camids, g_centres),
        q_pids=q_pids,
        g_pids=g_pids,
        q_camids=q_camids,
        g_camids=g_camids,
    )


def reference_eval_market1501(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> tuple[float, np.ndarray, float]:
    """The community numpy form (torchreid / fast-reid ``eval_market1501``): (mAP, CMC, mINP).

    Kept verbatim in structure as the speed and correctness baseline; the only change is a
    stable argsort, which pins down the tie order that :func:`evaluate_rank` documents.
    """
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
        all_cmc.append(cmc[:max_rank])
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(tmp_cmc)]) * raw_cmc
        all_ap.append(tmp_cmc.sum() / num_rel)
    if not all_ap:
        raise ValueError("no query has a positive")
    return float(np.mean(all_ap)), np.asarray(all_cmc, dtype=np.float64).mean(0), float(np.mean(all_inp))


def _time(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float], object]:
    """Wall and process-CPU seconds of each call, and the last result."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu, out


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# Per-image noise for three model qualities on the default split (mAP at dim 2048, seed 0):
# well trained (1.000), weak (0.134, a plateau or an early epoch), untrained (0.003).
QUALITY_NOISE = {"well trained": 0.5, "weak": 2.25, "untrained": 6.0}


@dataclass
class LevelTimes:
    """One noise level's metrics and its (b) evaluate_rank wall seconds."""

    noise: float
    result: RankResult
    eval_times: list[float]
    eval_cpu: list[float]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments; per noise level build the split, time each stage and print a table; then a summary."""
    parser = argparse.ArgumentParser(prog="python -m reid.metrics.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--num-query", type=int, default=3368)
    parser.add_argument("--num-gallery", type=int, default=15913)
    parser.add_argument("--num-ids", type=int, default=751)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise", type=float, nargs="+", default=list(QUALITY_NOISE.values()),
        help="per-image noise levels, larger means lower mAP (default: "
        + ", ".join(f"{v} {k}" for k, v in QUALITY_NOISE.items()) + ")",
    )
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    parser.add_argument("--max-rank", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--reference", action="store_true", help="also time the community numpy loop on a subset")
    parser.add_argument("--reference-queries", type=int, default=200, help="queries in the --reference subset")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    levels = [_benchmark_level(args, noise) for noise in args.noise]
    names = {v: k for k, v in QUALITY_NOISE.items()}
    print("summary: (b) evaluate_rank per model quality")
    print(f"{'noise':>7}  {'quality':<14}{'mAP':>8}{'R1':>8}{'mINP':>8}{'median s':>10}{'min s':>10}{'min cpu s':>11}")
    for level in levels:
        r = level.result
        print(
            f"{level.noise:>7g}  {names.get(level.noise, ''):<14}{r.mAP:>8.4f}{r.rank(1):>8.4f}{r.mINP:>8.4f}"
            f"{statistics.median(level.eval_times):>10.3f}{min(level.eval_times):>10.3f}{min(level.eval_cpu):>11.3f}"
        )


def _benchmark_level(args: argparse.Namespace, noise: float) -> LevelTimes:
    """Time stages (a)-(c) at one noise level and print them; with --reference, check agreement too."""
    data = make_market_like(args.num_query, args.num_gallery, args.num_ids, args.dim, args.seed, noise)
    labels = (data.q_pids, data.g_pids, data.q_camids, data.g_camids)

    def distances() -> torch.Tensor:
        return compute_distance_matrix(data.q_feats, data.g_feats, metric=args.metric)

    def total() -> RankResult:
        return evaluate_rank(distances(), *labels, max_rank=args.max_rank)

    dist_times, dist_cpu, distmat = _time(distances, args.repeats)
    eval_times, eval_cpu, result = _time(
        lambda: evaluate_rank(distmat, *labels, max_rank=args.max_rank), args.repeats
    )
    total_times, total_cpu, _ = _time(total, args.repeats)

    same_pid = data.g_pids[None, :] == data.q_pids[:, None]
    same_cam = data.g_camids[None, :] == data.q_camids[:, None]
    print(f"Market-1501-scale evaluation benchmark, noise {noise:g}")
    print(
        f"  queries {args.num_query}, gallery {args.num_gallery} "
        f"({int((data.g_pids == 0).sum())} distractors), identities {args.num_ids}, "
        f"cameras {NUM_CAMERAS}, dim {args.dim}, metric {args.metric}, seed {args.seed}"
    )
    print(
        f"  per query: {(same_pid & ~same_cam).sum(1).mean():.1f} positives, "
        f"{(same_pid & same_cam).sum(1).mean():.1f} same-camera items discarded"
    )
    print(
        f"  {cpu_model()} ({os.cpu_count()} CPUs), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}, distmat {distmat.dtype}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'stage':<34}{'median s':>10}{'min s':>10}{'min cpu s':>11}")
    for name, times, cpu in (
        ("(a) distance matrix", dist_times, dist_cpu),
        ("(b) evaluate_rank", eval_times, eval_cpu),
        ("(c) total features -> mAP/CMC", total_times, total_cpu),
    ):
        print(f"{name:<34}{statistics.median(times):>10.3f}{min(times):>10.3f}{min(cpu):>11.3f}")
    print(
        f"mAP {result.mAP:.4f}  R1 {result.rank(1):.4f}  R5 {result.rank(min(5, len(result.cmc))):.4f}  "
        f"R10 {result.rank(min(10, len(result.cmc))):.4f}  mINP {result.mINP:.4f}  "
        f"valid queries {result.num_valid_queries}, excluded {result.num_excluded_queries}"
    )

    if args.reference:
        n = min(args.reference_queries, args.num_query)
        rows = np.linspace(0, args.num_query - 1, n).round().astype(np.int64)
        sub = distmat[torch.as_tensor(rows)].numpy()
        sub_labels = (data.q_pids[rows], data.g_pids, data.q_camids[rows], data.g_camids)
        start = time.perf_counter()
        ref_map, ref_cmc, ref_inp = reference_eval_market1501(sub, *sub_labels, max_rank=args.max_rank)
        ref_time = time.perf_counter() - start
        ours = evaluate_rank(sub, *sub_labels, max_rank=args.max_rank)
        diff = max(abs(ref_map - ours.mAP), abs(ref_inp - ours.mINP), float(np.abs(ref_cmc - ours.cmc).max()))
        extrapolated = ref_time * args.num_query / n
        print(
            f"reference numpy loop: {ref_time:.2f} s for {n} queries -> {extrapolated:.1f} s extrapolated "
            f"to {args.num_query} ({extrapolated / statistics.median(eval_times):.0f}x evaluate_rank's median)"
        )
        print(
            f"agreement on the subset: mAP {ref_map:.6f} vs {ours.mAP:.6f}, "
            f"max |difference| over mAP/mINP/CMC = {diff:.1e} ({'OK' if diff <= 1e-6 else 'MISMATCH'})"
        )
        sort_times, _, _ = _time(lambda: torch.argsort(distmat, dim=1, stable=True), 1)
        print(f"for scale: a stable argsort of every distmat row alone takes {sort_times[0]:.2f} s")
        if diff > 1e-6:
            raise SystemExit(1)
    return LevelTimes(noise, result, eval_times, eval_cpu)



if __name__ == "__main__":
    main()
