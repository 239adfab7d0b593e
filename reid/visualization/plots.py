"""The CMC curve and the histogram of per-query AP, drawn with matplotlib's Agg canvas (no display, no global
backend switch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CMC_PNG = "cmc_curve.png"
AP_HISTOGRAM_PNG = "ap_histogram.png"


def _figure(size: tuple[float, float] = (6.4, 4.2)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_cmc(cmc: np.ndarray, path: str | Path, title: str = "CMC") -> Path:
    """Rank-k accuracy against k (1..len(cmc)), rank-1/5/10/20 marked."""
    cmc = np.asarray(cmc, dtype=float)
    ranks = np.arange(1, len(cmc) + 1)
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot(ranks, cmc, marker=".", color="tab:blue")
    for k in (1, 5, 10, 20):
        if k <= len(cmc):
            axes.annotate(f"R{k} {cmc[k - 1]:.3f}", (k, cmc[k - 1]), textcoords="offset points", xytext=(4, -12),
                          fontsize=8)
    axes.set_xlabel("rank k")
    axes.set_ylabel("queries with a match in the top k")
    axes.set_ylim(0, 1.02)
    axes.set_xlim(0.5, len(cmc) + 0.5)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def plot_ap_histogram(ap: np.ndarray, path: str | Path, title: str = "per-query AP") -> Path:
    """How the scored queries' AP spreads over [0, 1], the mean (mAP) marked."""
    ap = np.asarray(ap, dtype=float)
    ap = ap[np.isfinite(ap)]
    figure = _figure()
    axes = figure.add_subplot()
    axes.hist(ap, bins=20, range=(0.0, 1.0), color="tab:blue", edgecolor="white")
    if ap.size:
        axes.axvline(float(ap.mean()), color="tab:red", linestyle="--", label=f"mAP {ap.mean():.4f}")
        axes.legend()
    axes.set_xlabel("average precision")
    axes.set_ylabel("queries")
    axes.set_xlim(0, 1)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
