"""`allowed` (the rows a metadata filter keeps) on every search of `ret2.search`: the exact scans (torch and faiss,
chunked, multi-vector), int8 / binary codes, HNSW and IVF-PQ rank only the allowed rows, equal to an exact
ranking of those rows, and return k results whenever k rows are allowed."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ret2 import search as search_module
from ret2.search import build_hnsw, build_ivfpq, build_quantized, recall_at_k, search, search_hnsw, search_quantized


def unit_fp16(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(shape, generator=g), dim=-1).half().numpy()


def filtered_truth(queries, docs, allowed, k):
    """Reference: float64 scores of the allowed rows only, best first, ties to the lower row."""
    q, d = (F.normalize(torch.from_numpy(x).double(), dim=-1) for x in (queries, docs[allowed]))
    order = (q @ d.T).sort(dim=1, descending=True, stable=True).indices[:, :k].numpy()
    return allowed[order]


@pytest.fixture(scope="module")
def pool():
    g = np.random.default_rng(0)
    centres = unit_fp16((8, 32), seed=5).astype(np.float32)
    docs = (centres[g.integers(0, 8, 3000)] + 0.3 * g.standard_normal((3000, 32))).astype(np.float16)
    queries = (centres[g.integers(0, 8, 12)] + 0.3 * g.standard_normal((12, 32))).astype(np.float32)
    return queries, [docs[:1000], docs[1000:1700], docs[1700:]], docs


ALLOWED = {"half": lambda n: np.arange(0, n, 2), "tenth": lambda n: np.arange(3, n, 10),
           "few": lambda n: np.array([5, 1200, 2999]), "none": lambda n: np.array([], np.int64)}  # fmt: skip


@pytest.mark.parametrize("which", list(ALLOWED))
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_exact_scan_ranks_only_the_allowed_rows(pool, which, backend, monkeypatch):
    queries, shards, docs = pool
    allowed = ALLOWED[which](len(docs))
    monkeypatch.setattr(search_module, "_BLOCK", 4096)  # many chunks, some without an allowed row
    scores, ids = search(queries, shards, 10, backend=backend, allowed=allowed)
    k = min(10, len(allowed))
    assert ids.shape == (len(queries), k)
    np.testing.assert_array_equal(ids, filtered_truth(queries, docs, allowed, k))
    assert np.isfinite(scores).all()


def test_multi_vector_scan_with_allowed():
    docs, queries = unit_fp16((200, 3, 16), seed=2), unit_fp16((4, 2, 16), seed=3)
    allowed = np.arange(1, 200, 7)
    _, full = search(queries, [docs], 200)
    _, ids = search(queries, [docs[:90], docs[90:]], 5, allowed=allowed[::-1])  # any order: sorted inside
    np.testing.assert_array_equal(ids, [[r for r in row if r in set(allowed)][:5] for row in full])


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_quantized_codes_with_allowed(pool, precision, monkeypatch):
    queries, shards, docs = pool
    index = build_quantized(shards, precision)
    allowed = np.arange(0, len(docs), 3)
    monkeypatch.setattr(search_module, "EXACT_FILTER_ROWS", 10)  # the FAISS selector, not the exact fallback
    _, ids = search_quantized(index, queries, shards, 10, rescore_multiplier=40, allowed=allowed)
    assert np.isin(ids, allowed).all()
    assert recall_at_k(filtered_truth(queries, docs, allowed, 10), ids) >= 0.9
    _, unrescored = search_quantized(index, queries, shards, 10, rescore_multiplier=0, allowed=allowed)
    assert np.isin(unrescored, allowed).all() and unrescored.shape == (12, 10)


def test_hnsw_with_allowed_returns_k_whenever_k_are_allowed(pool, monkeypatch):
    queries, shards, docs = pool
    index = build_hnsw(shards, m=8, ef_construction=40)
    for allowed in (np.arange(0, len(docs), 2), np.arange(7, len(docs), 97)):  # half; 31 rows
        monkeypatch.setattr(search_module, "EXACT_FILTER_ROWS", 10)
        scores, ids = search_hnsw(index, queries, 10, ef_search=64, allowed=allowed)
        assert ids.shape == (12, 10) and (ids >= 0).all() and np.isin(ids, allowed).all()
        truth = filtered_truth(queries, docs, allowed, 10)
        assert recall_at_k(truth, ids) >= 0.8
        monkeypatch.setattr(search_module, "EXACT_FILTER_ROWS", 20_000)  # the exact fallback: the exact answer
        _, exact = search_hnsw(index, queries, 10, allowed=allowed)
        assert recall_at_k(truth, exact) == 1.0
    scores, ids = search_hnsw(index, queries, 10, allowed=np.array([4, 8]))  # k capped at the two allowed
    assert ids.shape == (12, 2) and all(set(row) == {4, 8} for row in ids.tolist()) and (scores[:, 0] >= scores[:, 1]).all()


def test_ivfpq_with_allowed_fills_short_queries_exactly(pool, monkeypatch):
    queries, shards, docs = pool
    index = build_ivfpq(shards, nlist=16, m=8, train_size=2000)
    index.nprobe = 1  # one cell: a selective filter leaves few allowed rows in it
    allowed = np.arange(11, len(docs), 53)  # 57 rows
    monkeypatch.setattr(search_module, "EXACT_FILTER_ROWS", 10)
    scores, ids = search_quantized(index, queries, shards, 10, rescore_multiplier=4, allowed=allowed)
    assert ids.shape == (12, 10) and (ids >= 0).all() and np.isin(ids, allowed).all()
    index.nprobe = 16
    _, ids = search_quantized(index, queries, shards, 10, rescore_multiplier=20, allowed=np.arange(0, len(docs), 2))
    assert recall_at_k(filtered_truth(queries, docs, np.arange(0, len(docs), 2), 10), ids) >= 0.95


def test_bad_allowed_rows_are_named(pool):
    queries, shards, _ = pool
    with pytest.raises(ValueError, match="allowed row 3000 is outside the 3000 documents"):
        search(queries, shards, 5, allowed=np.array([1, 3000]))
