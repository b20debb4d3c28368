"""Retrieval metrics on hand-computed cases, and the `evaluate` module giving the same numbers."""

import math

import evaluate
import pytest
from conftest import REPO

from ret2.metrics import compute_retrieval_metrics, hit_rate_at_k, mrr_at_k, ndcg_at_k, pseudo_recall_at_k

METRICS_DIR = REPO / "ret2" / "metrics"
L3 = 1 / math.log2(3)  # discount of rank 2: 0.6309...
L5 = 1 / math.log2(5)  # discount of rank 4: 0.4307...

# Query A: positives at ranks 2 and 4. Query B: its positive is not in the pool. Query C: a
# one-element ranking searched with k beyond its length.
RANKED = [["a", "b", "c", "d"], ["x", "y"], ["p"]]
POSITIVES = [{"b", "d"}, {"z"}, {"p"}]


def test_hit_rate_is_any_positive_in_top_k():
    assert [hit_rate_at_k(RANKED[0], POSITIVES[0], k) for k in (1, 2, 4)] == [0.0, 1.0, 1.0]
    assert hit_rate_at_k(RANKED[1], POSITIVES[1], 10) == 0.0  # positive missing from the pool never hits
    assert hit_rate_at_k(RANKED[2], POSITIVES[2], 50) == 1.0  # k beyond the list uses the whole list


def test_mrr_is_reciprocal_rank_of_first_positive_within_k():
    assert [mrr_at_k(RANKED[0], POSITIVES[0], k) for k in (1, 2, 10)] == [0.0, 0.5, 0.5]
    assert mrr_at_k(RANKED[1], POSITIVES[1], 10) == 0.0
    assert mrr_at_k(RANKED[2], POSITIVES[2], 50) == 1.0


def test_ndcg_binary_relevance_by_hand():
    # k=2: DCG = 1/log2(3) (rank 2); ideal has min(2, 2) = 2 positives: 1 + 1/log2(3).
    assert ndcg_at_k(RANKED[0], POSITIVES[0], 2) == pytest.approx(L3 / (1 + L3))  # 0.3869
    # k=4: DCG = 1/log2(3) + 1/log2(5); ideal is still 2 positives at ranks 1, 2.
    assert ndcg_at_k(RANKED[0], POSITIVES[0], 4) == pytest.approx((L3 + L5) / (1 + L3))  # 0.6509
    # More positives than k: ideal DCG counts only k of them, so a perfect top 2 scores 1.
    assert ndcg_at_k(["a", "b", "c"], {"a", "b", "c", "d"}, 2) == pytest.approx(1.0)
    # A positive missing from the pool still counts in the ideal DCG.
    assert ndcg_at_k(["a", "b"], {"b", "zz"}, 2) == pytest.approx(L3 / (1 + L3))
    assert ndcg_at_k(RANKED[1], POSITIVES[1], 10) == 0.0
    assert ndcg_at_k(RANKED[2], POSITIVES[2], 50) == 1.0
    assert ndcg_at_k(["a"], set(), 5) == 0.0


def test_pseudo_recall_lowercased_substring_and_wikidata_dicts():
    texts = ["The capital is Paris.", "Rome was founded in 753 BC."]
    assert pseudo_recall_at_k(texts, ["rome"], 1) == 0.0
    assert pseudo_recall_at_k(texts, ["rome"], 2) == 1.0
    assert pseudo_recall_at_k(texts, [" PARIS "], 1) == 1.0  # answers stripped and lower-cased
    assert pseudo_recall_at_k(texts, [{"wikidata": 753, "other": "x"}], 2) == 1.0  # dict: its wikidata value
    assert pseudo_recall_at_k(texts, None, 2) == 0.0
    assert pseudo_recall_at_k(texts, ["London"], 10) == 0.0


def test_compute_retrieval_metrics_means_by_hand():
    m = compute_retrieval_metrics(RANKED, POSITIVES, ks=[1, 2])
    assert set(m) == {"recall@1", "mrr@1", "ndcg@1", "recall@2", "mrr@2", "ndcg@2"}
    assert m["recall@1"] == pytest.approx(1 / 3)  # only C
    assert m["recall@2"] == pytest.approx(2 / 3)  # A and C
    assert m["mrr@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["ndcg@2"] == pytest.approx((L3 / (1 + L3) + 0 + 1) / 3)  # 0.4623
    assert all(0.0 <= v <= 1.0 for v in m.values())


def test_compute_retrieval_metrics_pseudo_recall_and_errors():
    m = compute_retrieval_metrics([["p1", "p2"]], [{"p9"}], [1, 2],
                                  ranked_texts=[["no", "yes: Rome"]], answers=[["rome"]])
    assert (m["recall@2"], m["pseudo_recall@1"], m["pseudo_recall@2"]) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="positives has 1"):
        compute_retrieval_metrics(RANKED, POSITIVES[:1])
    with pytest.raises(ValueError, match=r"ks must be .* got \[0\]"):
        compute_retrieval_metrics(RANKED, POSITIVES, ks=[0])
    with pytest.raises(ValueError, match="no queries"):
        compute_retrieval_metrics([], [])
    with pytest.raises(ValueError, match="both ranked_texts and answers"):
        compute_retrieval_metrics(RANKED, POSITIVES, ranked_texts=[[], [], []])


def test_evaluate_module_uses_the_same_implementation(tmp_path):
    """Pins the single source of truth: the module's `retrieval.py` is the plain functions' file."""
    assert (METRICS_DIR / "ret2_retrieval" / "retrieval.py").resolve() == (METRICS_DIR / "retrieval.py").resolve()
    metric = evaluate.load(str(METRICS_DIR / "ret2_retrieval"), cache_dir=str(tmp_path))
    got = metric.compute(predictions=RANKED, references=[sorted(p) for p in POSITIVES], ks=[1, 2, 10])
    assert got == pytest.approx(compute_retrieval_metrics(RANKED, POSITIVES, ks=[1, 2, 10]))
    got = metric.compute(predictions=[["p1"]], references=[["p1"]], ks=[1], ranked_texts=[["Rome"]], answers=[["rome"]])
    assert got == {"recall@1": 1.0, "mrr@1": 1.0, "ndcg@1": 1.0, "pseudo_recall@1": 1.0}


def test_chance_hit_rate_matches_counting():
    from itertools import combinations

    from ret2.metrics import chance_hit_rate_at_k

    # 6 candidates, positives {0, 1}, top 2: 9 of the 15 unordered pairs contain a positive
    pairs = list(combinations(range(6), 2))
    assert chance_hit_rate_at_k(6, 2, 2) == pytest.approx(sum(0 in c or 1 in c for c in pairs) / len(pairs)) == 0.6
    assert chance_hit_rate_at_k(10, 0, 5) == 0.0 and chance_hit_rate_at_k(4, 1, 10) == 1.0
    with pytest.raises(ValueError, match="num_positives=5"):
        chance_hit_rate_at_k(4, 5, 1)
