"""Fusing rankings: reciprocal-rank fusion and weighted score fusion of a vector and a keyword ranking.

Reciprocal-rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009) scores a document by the sum over the rankings
that hold it of 1 / (RRF_K + rank), rank counted from 1: only ranks matter, so cosine and BM25 scales need no
calibration. RRF_K = 60, the paper's constant and Milvus' `RRFRanker` default, damps the weight of the very top
ranks. Weighted fusion sums `weight * normalised score` per ranking (a document missing from a ranking adds 0), each
score mapped to [0, 1] by its metric as Milvus' `WeightedRanker` does (norm_score=True): a cosine s to
0.5 + arctan(s) / pi, a BM25 score s (on Milvus' scale) to 2 arctan(s) / pi. The same documents and query thus fuse
alike on the embedded index and in Milvus; unlike a min-max over the results, the mapping of a score does not depend on
which other documents were retrieved.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ret2.options import FUSIONS

from .keyword import BM25_K1

RRF_K = 60  # reciprocal-rank fusion's constant (the paper's; Milvus' RRFRanker default)


def _fuse(rankings: Sequence[tuple[np.ndarray, np.ndarray]], k: int, contribution) -> tuple[np.ndarray, np.ndarray]:
    num_queries = len(rankings[0][1])
    out_scores, out_rows = np.full((num_queries, k), -np.inf, np.float32), np.full((num_queries, k), -1, np.int64)
    for q in range(num_queries):
        fused: dict[int, float] = {}
        for r, (scores, rows) in enumerate(rankings):
            for rank, (score, row, value) in enumerate(zip(scores[q], rows[q], contribution(r, scores[q], rows[q]))):
                if row >= 0:
                    fused[int(row)] = fused.get(int(row), 0.0) + value
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]  # ties to the lower row
        out_rows[q, : len(best)] = [row for row, _ in best]
        out_scores[q, : len(best)] = [score for _, score in best]
    return out_scores, out_rows


def rrf(rankings: Sequence[tuple[np.ndarray, np.ndarray]], k: int, rrf_k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion of rankings, each (scores (Nq, n), rows (Nq, n)) best first with -1 rows as padding:
    (fused scores (Nq, k), rows (Nq, k)), best first, ties to the lower row, -1 padding."""
    if not isinstance(rrf_k, int) or rrf_k < 0:
        raise ValueError(f"rrf_k must be an integer >= 0, got {rrf_k!r}")
    return _fuse(rankings, k, lambda r, scores, rows: 1.0 / (rrf_k + 1 + np.arange(len(rows))))


def _normalise_ip(scores: np.ndarray) -> np.ndarray:
    return 0.5 + np.arctan(scores) / np.pi


def _normalise_bm25(scores: np.ndarray) -> np.ndarray:
    return 2 * np.arctan((1 + BM25_K1) * scores) / np.pi  # of Milvus' BM25 scale: bm25s' (Lucene's) times k1 + 1


NORMALISERS = {"ip": _normalise_ip, "bm25": _normalise_bm25}


def weighted(rankings: Sequence[tuple[np.ndarray, np.ndarray]], k: int, weights: Sequence[float],
             metrics: Sequence[str] = ("ip", "bm25")) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Weighted fusion: the sum of weights[r] * (the document's score in ranking r, normalised to [0, 1] by its
    metric); a document missing from a ranking adds 0. Arguments and result as `rrf`; `metrics`, one per ranking:
    "ip" (cosine, the vector ranking) or "bm25" (the keyword ranking)."""
    if len(weights) != len(rankings) or any(not isinstance(w, (int, float)) or w < 0 for w in weights):
        raise ValueError(f"weights must be {len(rankings)} numbers >= 0, one per ranking, got {list(weights)!r}")
    if len(metrics) != len(rankings) or any(m not in NORMALISERS for m in metrics):
        raise ValueError(f"metrics must be {len(rankings)} of {list(NORMALISERS)}, one per ranking, got {list(metrics)!r}")
    return _fuse(rankings, k, lambda r, scores, rows: weights[r] * NORMALISERS[metrics[r]](scores.astype(np.float64)))
