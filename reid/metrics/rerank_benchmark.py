"""Time k-reciprocal re-ranking at Market-1501 (or MSMT17) scale and report its peak memory.

    python -m reid.metrics.rerank_benchmark [--num-query 3368 --num-gallery 15913 --num-ids 751 --dim 2048]
    python -m reid.metrics.rerank_benchmark --msmt17      # 11,659 queries x 82,161 gallery images, 3,060 ids

Features come from `reid.metrics.benchmark.make_market_like` (identity structure, cameras, distractors), so the
mAP before and after re-ranking is that of a plausible model. Memory is the process's peak resident set above
what it held once the features existed; the output matrix (query x gallery float32) is part of it.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from collections.abc import Sequence

import torch

from reid.metrics.benchmark import cpu_model, make_market_like
from reid.metrics.distance import compute_distance_matrix
from reid.metrics.rank import evaluate_rank
from reid.metrics.rerank import re_rank

MSMT17 = {"num_query": 11659, "num_gallery": 82161, "num_ids": 3060}


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reid.metrics.rerank_benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--num-query", type=int, default=3368)
    parser.add_argument("--num-gallery", type=int, default=15913)
    parser.add_argument("--num-ids", type=int, default=751)
    parser.add_argument("--msmt17", action="store_true", help="MSMT17's sizes instead of Market-1501's")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--noise", type=float, default=1.4, help="per-image noise; larger means lower mAP")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    sizes = MSMT17 if args.msmt17 else {"num_query": args.num_query, "num_gallery": args.num_gallery,
                                        "num_ids": args.num_ids}
    split = make_market_like(**sizes, dim=args.dim, seed=args.seed, noise=args.noise)
    q, g = split.q_feats.to(args.device), split.g_feats.to(args.device)
    labels = (split.q_pids, split.g_pids, split.q_camids, split.g_camids)
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads, {platform.python_version()}, "
          f"torch {torch.__version__}, device {args.device}")
    print(f"{sizes['num_query']} queries x {sizes['num_gallery']} gallery, {args.dim}-d, "
          f"k1={args.k1} k2={args.k2} lambda={args.lambda_value}")
    before = evaluate_rank(compute_distance_matrix(q, g), *labels).mAP
    baseline = _resident_mib()
    start = time.perf_counter()
    distances = re_rank(q, g, k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)
    if distances.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = _peak_mib() - baseline
    after = evaluate_rank(distances, *labels).mAP
    print(f"re_rank: {seconds:.1f} s, peak memory {peak:.0f} MiB above the features "
          f"(output {distances.numel() * 4 / 2**20:.0f} MiB)")
    print(f"mAP {before:.4f} -> {after:.4f} after re-ranking")


if __name__ == "__main__":
    main()
