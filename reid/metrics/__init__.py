"""Retrieval evaluation: distance matrices and the Market-1501 ranking protocol."""

from reid.metrics.distance import compute_distance_matrix
from reid.metrics.rank import RankResult, evaluate_rank

__all__ = ["RankResult", "compute_distance_matrix", "evaluate_rank"]
