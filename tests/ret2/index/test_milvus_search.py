"""Filters, keyword and hybrid search run inside Milvus (Milvus Lite, `ret2.milvus`) and give what the embedded
index's own code gives on the same documents: the exact scan of the rows a filter keeps (ret2.search, Arrow),
bm25s' BM25 ranking and scores, and `ret2.index.hybrid`'s fusions."""

import random

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("bm25s")

from ret2.index.hybrid import rrf, weighted  # noqa: E402
from ret2.index.keyword import KeywordIndex  # noqa: E402
from ret2.index.metadata import part_table, select  # noqa: E402
from ret2.milvus import open_client, search_collection, write_collection  # noqa: E402
from ret2.search import search  # noqa: E402

WORDS = "red blue green dog cat beach mountain city night snow river tree car boat the a of".split()
N, DIM, K = 60, 16, 5
QUERIES = ["dog beach", "red car at night", "snow", "the mountain river"]
FILTERS = [
    {"album": "trip"},
    {"year": {"$gte": 2022}},
    {"$and": [{"album": {"$in": ["trip", "zoo"]}}, {"year": {"$lt": 2024}}]},
    {"$or": [{"album": "home"}, {"stars": {"$gt": 4}}]},
    {"$not": {"album": "trip"}},
    {"stars": {"$exists": False}},
    {"nobody": "x"},  # a field no document has: nothing matches
]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def docs():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) if i % 7 else None for i in range(N)]
    metadata = []
    for _ in range(N):
        m = {"album": rng.choice(["trip", "home", "zoo"]), "year": rng.randint(2019, 2025)}
        if rng.random() < 0.6:
            m["stars"] = rng.choice([1.0, 2.5, 4.5])
        metadata.append(m)
    vectors = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    return texts, metadata, _unit(vectors)


@pytest.fixture(scope="module")
def collection(docs, tmp_path_factory):
    texts, metadata, vectors = docs
    target = {"uri": str(tmp_path_factory.mktemp("milvus") / "docs.db"), "collection": "docs", "index_type": "FLAT"}
    write_collection(target, [f"d{i}" for i in range(N)], [vectors], texts=texts, metadata=metadata)
    client = open_client(target)
    yield target, client
    client.close()


@pytest.mark.parametrize("where", FILTERS, ids=[str(f) for f in FILTERS])
def test_a_filter_gives_the_exact_scan_of_the_rows_it_keeps(docs, collection, where):
    texts, metadata, vectors = docs
    target, client = collection
    allowed = select(part_table(metadata), where)
    queries = _unit(vectors[:3] + 0.1)
    scores, rows = search_collection(target, queries, K, client=client, filter=where)
    assert ((rows >= 0).sum(axis=1) == min(K, len(allowed))).all()  # k results whenever k documents match
    assert set(rows[rows >= 0].tolist()) <= set(allowed.tolist())
    if len(allowed):
        want_scores, want_rows = search(queries.astype(np.float16), [vectors.astype(np.float16)], K, allowed=allowed)
        np.testing.assert_array_equal(rows[:, : want_rows.shape[1]], want_rows)
        np.testing.assert_allclose(scores[:, : want_rows.shape[1]], want_scores, atol=2e-3)


def test_keyword_search_is_bm25s_ranking_and_scores_with_and_without_a_filter(docs, collection):
    texts, metadata, _ = docs
    target, client = collection
    keyword = KeywordIndex.build(texts)
    for where in (None, {"album": "trip"}):
        allowed = None if where is None else select(part_table(metadata), where)
        scores, rows = search_collection(target, None, K, client=client, filter=where, mode="keyword", texts=QUERIES)
        want_scores, want_rows = keyword.search(QUERIES, K, allowed=allowed)
        assert (want_rows >= 0).sum() > 2 * len(QUERIES)  # the queries do hit documents
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores[rows >= 0], want_scores[want_rows >= 0], rtol=1e-5)


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_hybrid_search_fuses_as_the_embedded_fusions_do(docs, collection, fusion):
    texts, metadata, vectors = docs
    target, client = collection
    queries = _unit(vectors[:4] + 0.1)
    scores, rows = search_collection(target, queries, K, client=client, mode="hybrid", texts=QUERIES, fusion=fusion,
                                     weights=(0.7, 0.3))  # fmt: skip
    # each side's top K, as Milvus' hybrid search fuses them
    vector = search(queries.astype(np.float16), [vectors.astype(np.float16)], K)
    keyword = KeywordIndex.build(texts).search(QUERIES, K)
    want_scores, want_rows = rrf([vector, keyword], K) if fusion == "rrf" else weighted([vector, keyword], K,
                                                                                          (0.7, 0.3))  # fmt: skip
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-6)
    # each document Milvus returns has the fused score the embedded fusion gives it (ties at the cut may differ)
    every_scores, every_rows = rrf([vector, keyword], 2 * K) if fusion == "rrf" else weighted([vector, keyword], 2 * K,
                                                                                              (0.7, 0.3))  # fmt: skip
    for q in range(len(QUERIES)):
        fused = dict(zip(every_rows[q].tolist(), every_scores[q].tolist()))
        for row, score in zip(rows[q].tolist(), scores[q].tolist()):
            assert fused[row] == pytest.approx(score, rel=1e-4), (q, row)


def test_every_filter_operator_selects_in_milvus_what_the_reference_does(tmp_path):
    """The operators of test_filters.py (every one, missing fields, $not over missing fields, mixed numbers) on
    metadata of random fields, evaluated by Milvus, against the plain-Python reference."""
    from test_filters import FILTERS as ALL_FILTERS
    from test_filters import _metadata, _reference

    metadata = _metadata(80, seed=3)
    vectors = _unit(np.random.default_rng(1).standard_normal((80, 8)).astype(np.float32))
    target = {"uri": str(tmp_path / "f.db"), "collection": "docs", "index_type": "FLAT"}
    write_collection(target, [f"d{i}" for i in range(80)], [vectors], metadata=metadata)
    client = open_client(target)
    try:
        for where in ALL_FILTERS:
            _, rows = search_collection(target, vectors[:1], 80, client=client, filter=where)
            want = {i for i, m in enumerate(metadata) if _reference(where, m)}
            assert set(rows[0][rows[0] >= 0].tolist()) == want, where
    finally:
        client.close()


def test_bad_requests_are_refused_naming_the_problem(docs, collection, tmp_path):
    _, _, vectors = docs
    target, client = collection
    with pytest.raises(ValueError, match="mode 'fuzzy' is not one of"):
        search_collection(target, vectors[:1], K, client=client, mode="fuzzy")
    with pytest.raises(ValueError, match="needs a text for every query"):
        search_collection(target, vectors[:1], K, client=client, mode="hybrid")
    with pytest.raises(ValueError, match="fusion 'max' is not one of"):
        search_collection(target, vectors[:1], K, client=client, mode="hybrid", texts=["dog"], fusion="max")
    with pytest.raises(ValueError, match=r"\$regex"):
        search_collection(target, vectors[:1], K, client=client, filter={"album": {"$regex": "t.*"}})
