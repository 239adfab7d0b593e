"""Retrieval evaluation: distance matrices, the Market-1501 ranking protocol, and k-reciprocal re-ranking."""

from reid.metrics.distance import compute_distance_matrix
from reid.metrics.rank import PerQuery, RankResult, evaluate_rank
from reid.metrics.rerank import re_rank

__all__ = ["PerQuery", "RankResult", "compute_distance_matrix", "evaluate_rank", "re_rank"]
