"""Retrieval metrics (plain functions); `ret2_retrieval/` wraps them as a local `evaluate` module."""

from .retrieval import (
    chance_hit_rate_at_k, compute_retrieval_metrics, hit_rate_at_k, mrr_at_k, ndcg_at_k, pseudo_recall_at_k,
)  # fmt: skip

__all__ = [
    "chance_hit_rate_at_k", "compute_retrieval_metrics", "hit_rate_at_k", "mrr_at_k", "ndcg_at_k", "pseudo_recall_at_k",
]  # fmt: skip
