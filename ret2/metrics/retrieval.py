"""Retrieval metrics as plain functions: the one implementation of each formula.

Per-query functions take one ranked list of ids (best first, assumed without repeats) and the set of
positive ids. A positive absent from the ranked list (e.g. missing from the pool) never hits; a K
larger than the list uses the whole list. `compute_retrieval_metrics` averages them over queries and
names them `recall@k`, `mrr@k`, `ndcg@k`, `pseudo_recall@k`, as fractions in [0, 1].

"recall@k" is UniIR's (and M2KR's) hit rate: 1 if any positive is in the top k, else 0. It is not the
fraction of positives retrieved; the name is kept for comparability with the published tables.

This file must import nothing but the standard library: `ret2_retrieval/retrieval.py` is a symlink
to it, which `evaluate.load` copies next to the `evaluate` module (see that module).
"""

from __future__ import annotations

import math
from typing import Collection, Mapping, Sequence

Answer = str | int | float | Mapping[str, object]


def hit_rate_at_k(ranked: Sequence[str], positives: Collection[str], k: int) -> float:
    """1.0 if any positive is among the first k ids, else 0.0 (UniIR's "Recall@k")."""
    return float(any(doc in positives for doc in ranked[:k]))


def mrr_at_k(ranked: Sequence[str], positives: Collection[str], k: int) -> float:
    """1 / rank of the first positive within the first k ids (rank from 1), 0.0 if none."""
    for rank, doc in enumerate(ranked[:k], start=1):
        if doc in positives:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], positives: Collection[str], k: int) -> float:
    """Binary-relevance nDCG: sum of 1/log2(rank+1) over positives in the top k, divided by the
    ideal DCG of min(#positives, k) positives at the top. 0.0 when there are no positives."""
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], start=1) if doc in positives)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(positives), k) + 1))
    return dcg / ideal if ideal else 0.0


def chance_hit_rate_at_k(pool_size: int, num_positives: int, k: int) -> float:
    """Expected `hit_rate_at_k` of a random ranking: 1 - C(N - p, k) / C(N, k) for p positives among N candidates."""
    if not 0 <= num_positives <= pool_size:
        raise ValueError(f"num_positives={num_positives} must be in [0, pool_size={pool_size}]")
    k = min(k, pool_size)
    return 1 - math.comb(pool_size - num_positives, k) / math.comb(pool_size, k)


def _answer_text(answer: Answer) -> str:
    # M2KR gives some answers as {"wikidata": value, ...}: match the value as a string.
    return str(answer["wikidata"] if isinstance(answer, Mapping) else answer).strip().lower()


def pseudo_recall_at_k(ranked_texts: Sequence[str], answers: Sequence[Answer] | None, k: int) -> float:
    """1.0 if any of the first k passage texts contains any gold answer (lower-cased substring
    match, answers stripped as in the FLMR / ReT code), else 0.0. No answers give 0.0."""
    needles = [_answer_text(a) for a in answers or ()]
    return float(any(needle in text.lower() for text in ranked_texts[:k] for needle in needles))


def compute_retrieval_metrics(
    ranked_ids: Sequence[Sequence[str]],
    positives: Sequence[Collection[str]],
    ks: Sequence[int] = (1, 5, 10),
    ranked_texts: Sequence[Sequence[str]] | None = None,
    answers: Sequence[Sequence[Answer] | None] | None = None,
) -> dict[str, float]:
    """Mean `recall@k`, `mrr@k` and `ndcg@k` over queries for every k in `ks`, plus
    `pseudo_recall@k` when `ranked_texts` (the texts of `ranked_ids`) and `answers` are given.

    Example: ``compute_retrieval_metrics([["d1", "d2"]], [{"d2"}], ks=[1, 2])`` gives
    ``{"recall@1": 0.0, "mrr@1": 0.0, "ndcg@1": 0.0, "recall@2": 1.0, "mrr@2": 0.5, "ndcg@2": 0.63...}``.
    """
    n = len(ranked_ids)
    if n == 0:
        raise ValueError("no queries: ranked_ids is empty")
    if len(positives) != n:
        raise ValueError(f"ranked_ids has {n} queries but positives has {len(positives)}")
    if (ranked_texts is None) != (answers is None):
        raise ValueError("pseudo recall needs both ranked_texts and answers (got only one)")
    if ranked_texts is not None and not len(ranked_texts) == len(answers) == n:
        raise ValueError(f"ranked_texts ({len(ranked_texts)}) and answers ({len(answers)}) must have {n} entries")
    bad = [k for k in ks if not isinstance(k, int) or k < 1]
    if bad or not ks:
        raise ValueError(f"ks must be a non-empty list of positive integers, got {list(ks)}")
    positives = [p if isinstance(p, (set, frozenset)) else set(p) for p in positives]
    results = {}
    for k in ks:
        results[f"recall@{k}"] = sum(hit_rate_at_k(r, p, k) for r, p in zip(ranked_ids, positives)) / n
        results[f"mrr@{k}"] = sum(mrr_at_k(r, p, k) for r, p in zip(ranked_ids, positives)) / n
        results[f"ndcg@{k}"] = sum(ndcg_at_k(r, p, k) for r, p in zip(ranked_ids, positives)) / n
        if ranked_texts is not None:
            results[f"pseudo_recall@{k}"] = sum(pseudo_recall_at_k(t, a, k) for t, a in zip(ranked_texts, answers)) / n
    return results
