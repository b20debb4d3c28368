"""Retrieval metrics (plain functions); `ret2_retrieval/` wraps them as a local `evaluate` module:
`evaluate.load(str(ret2.metrics.EVALUATE_MODULE))`."""

from pathlib import Path

from .retrieval import (
    chance_hit_rate_at_k, compute_retrieval_metrics, hit_rate_at_k, mrr_at_k, ndcg_at_k, pseudo_recall_at_k,
)  # fmt: skip

EVALUATE_MODULE = Path(__file__).parent / "ret2_retrieval"  # the folder `evaluate.load` takes

__all__ = [
    "EVALUATE_MODULE",
    "chance_hit_rate_at_k", "compute_retrieval_metrics", "hit_rate_at_k", "mrr_at_k", "ndcg_at_k", "pseudo_recall_at_k",
]  # fmt: skip
