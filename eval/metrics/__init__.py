"""Retrieval metrics (plain functions); `ret2_retrieval/` wraps them as a local `evaluate` module."""

from .retrieval import compute_retrieval_metrics, hit_rate_at_k, mrr_at_k, ndcg_at_k, pseudo_recall_at_k

__all__ = ["compute_retrieval_metrics", "hit_rate_at_k", "mrr_at_k", "ndcg_at_k", "pseudo_recall_at_k"]
