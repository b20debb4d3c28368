"""`ret2.search.search`: faiss and torch give the same exact ranking, chunked scans, late interaction, renormalised
stored vectors, the torch fallback, the errors, the default backend, and int8 / binary search with rescoring."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ret2 import search as search_module
from ret2.search import build_ivfpq, build_quantized, recall_at_k, search, search_quantized, unit_rows
from modeling_ret2 import Ret2Model


def unit_fp16(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(shape, generator=g), dim=-1).half().numpy()


def exact_ranking(queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    """Reference: float64 scores (`Ret2Model.similarity`) of the re-normalised vectors, best first, ties to the lower
    index."""
    queries, docs = (F.normalize(torch.from_numpy(x).double(), dim=-1) for x in (queries, docs))
    scores = Ret2Model.similarity(queries, docs)
    return scores.sort(dim=1, descending=True, stable=True).indices[:, :k].numpy()


def split(docs: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(docs, np.cumsum(sizes)[:-1])


@pytest.fixture(scope="module")
def single():
    """Queries and a pool of 300 fp16 unit vectors in which docs 0-9 repeat as 200-209 (exact ties)."""
    docs = unit_fp16((300, 16), seed=0)
    docs[200:210] = docs[:10]
    queries = np.concatenate([unit_fp16((20, 16), seed=1), docs[:5]])  # the last 5 queries tie at the top
    return queries, docs


def test_faiss_and_torch_give_the_same_exact_ranking(single):
    """Both backends, whatever the sharding, return the float64 ranking with ties broken towards the lower index."""
    queries, docs = single
    expected = exact_ranking(queries, docs, 12)
    for backend in ("faiss", "torch"):
        for sizes in ([300], [7, 93, 200], [150, 1, 149]):
            scores, indices = search(queries, split(docs, sizes), 12, backend=backend)
            np.testing.assert_array_equal(indices, expected, err_msg=f"{backend} {sizes}")
            assert (np.diff(scores, axis=1) <= 0).all()
    _, indices = search(queries, [docs], 12)
    assert indices[-1][0] == 4 and indices[-1][1] == 204  # a query equal to doc 4 = doc 204: lower index first


def test_scan_chunks_do_not_change_results(single, monkeypatch):
    """A scan over many tiny chunks (the memory bound at work) returns the same ranking."""
    queries, docs = single
    expected = search(queries, [docs], 10, backend="torch")
    monkeypatch.setattr(search_module, "_BLOCK", 64)
    for backend in ("faiss", "torch"):
        scores, indices = search(queries, [docs], 10, backend=backend)
        np.testing.assert_array_equal(indices, expected[1])
        np.testing.assert_array_equal(scores, expected[0])


def test_multi_vector_late_interaction():
    queries, docs = unit_fp16((6, 4, 8), seed=2), unit_fp16((50, 5, 8), seed=3)
    scores, indices = search(queries, split(docs, [20, 30]), 7)
    np.testing.assert_array_equal(indices, exact_ranking(queries, docs, 7))
    reference = Ret2Model.similarity(*(F.normalize(torch.from_numpy(x).float(), dim=-1) for x in (queries, docs)))
    np.testing.assert_allclose(scores, reference.gather(1, torch.from_numpy(indices)).numpy(), rtol=1e-5)


def test_stored_vectors_are_renormalised(single):
    """Rows stored with any norm (fp16 rows scaled by 0.2-5, per token for multi-vector) rank as their unit versions,
    on both backends, and score as cosines (UniIR re-normalises stored embeddings too)."""
    rng = np.random.default_rng(0)
    queries, docs = single
    scaled_queries = queries * rng.uniform(0.2, 5.0, (len(queries), 1)).astype(np.float32)
    scaled_docs = (docs * rng.uniform(0.2, 5.0, (len(docs), 1))).astype(np.float16)
    for backend in ("faiss", "torch"):
        scores, indices = search(scaled_queries, [scaled_docs], 10, backend=backend)
        np.testing.assert_array_equal(indices, exact_ranking(scaled_queries, scaled_docs, 10), err_msg=backend)
        assert scores.max() <= 1.0 + 1e-6 and scores[-1, 0] == pytest.approx(1.0)  # the last queries are docs 0-4
    multi_queries, multi_docs = unit_fp16((6, 4, 8), seed=2), unit_fp16((50, 5, 8), seed=3)
    multi_docs = (multi_docs * rng.uniform(0.2, 5.0, (50, 5, 1))).astype(np.float16)
    scores, indices = search(multi_queries, [multi_docs], 7)
    np.testing.assert_array_equal(indices, exact_ranking(multi_queries, multi_docs, 7))
    assert scores.max() <= 4.0 + 1e-5  # a sum over 4 query tokens of cosines


def test_search_without_faiss_falls_back_to_torch(single, monkeypatch):
    queries, docs = single
    expected = search(queries, [docs], 5, backend="faiss")[1]
    monkeypatch.setattr(search_module, "_faiss", lambda: None)
    np.testing.assert_array_equal(search(queries, [docs], 5)[1], expected)
    with pytest.raises(ValueError, match="needs faiss"):
        search(queries, [docs], 5, backend="faiss")


def test_k_is_capped_by_the_pool_and_errors(single):
    queries, docs = single
    scores, indices = search(queries, [docs[:3]], 10)
    assert indices.shape == scores.shape == (len(queries), 3)
    with pytest.raises(ValueError, match="same D"):
        search(queries[:, :8], [docs], 5)
    with pytest.raises(ValueError, match="single vectors only"):
        search(unit_fp16((2, 3, 16), 0), [unit_fp16((5, 3, 16), 1)], 2, backend="faiss")
    with pytest.raises(ValueError, match="not one of"):
        search(queries, [docs], 5, backend="annoy")


# ----------------------------------------------------------------------------- quantized: int8 codes, sign bits


@pytest.fixture(scope="module")
def clustered():
    """2,000 fp16 unit vectors of width 128 around 20 centres, in two shards, and 40 queries drawn the same way."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 128)).astype(np.float32)
    points = centres[rng.integers(0, 20, 2040)] + 0.8 * rng.standard_normal((2040, 128)).astype(np.float32)
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float16)
    return points[2000:].astype(np.float32), [points[:700], points[700:2000]]


def test_backend_auto_is_torch():
    """`auto` picks torch, the faster backend at every size measured on the CPU (docs/benchmarks.md#search-at-scale)."""
    for device in ("cpu", "cuda"):
        assert search_module._resolve_backend("auto", False, torch.device(device)) == "torch"
    assert search_module._resolve_backend("faiss", False, torch.device("cpu")) == "faiss"


def test_quantized_top_k_agrees_with_exact(clustered):
    """The stated tolerance, as recall@10 against exact on this clustered collection: int8 codes alone >= 0.95 and
    with rescoring x4 the exact top 10; binary with rescoring x4 >= 0.7 (more than its codes alone), x10 (the default)
    >= 0.95. Rescored scores are the exact ones, and a multiplier covering every document gives the exact ranking."""
    queries, shards = clustered
    exact_scores, exact = search(queries, shards, 10)
    recall = {}
    for precision in ("int8", "binary"):
        for multiplier in (0, 4, 10):
            scores, ids = search(queries, shards, 10, precision=precision, rescore_multiplier=multiplier)
            recall[precision, multiplier] = recall_at_k(exact, ids)
            assert (np.diff(scores, axis=1) <= 0).all()
            if multiplier:
                found = exact == ids
                np.testing.assert_allclose(scores[found], exact_scores[found], rtol=1e-6)  # rescored: exact scores
        _, everything = search(queries, shards, 10, precision=precision, rescore_multiplier=200)
        np.testing.assert_array_equal(everything, exact)
    assert recall["int8", 0] >= 0.95 and recall["int8", 4] == 1.0, recall
    assert recall["binary", 0] < 0.7 <= recall["binary", 4] < recall["binary", 10] and recall["binary", 10] >= 0.95, recall
    raw_scores, _ = search(queries, shards, 10, precision="int8", rescore_multiplier=0)  # the codes' own scores
    assert np.abs(raw_scores - exact_scores).max() < 0.05


def test_quantized_codes_sizes_calibration_and_errors(clustered):
    """int8 spends a byte per dimension over each dimension's stored range, binary a bit; bad values are named."""
    _, shards = clustered
    docs = np.concatenate(shards).astype(np.float32)
    int8, binary = build_quantized(shards, "int8"), build_quantized(shards, "binary")
    assert (int8.ntotal, int8.code_size, binary.ntotal, binary.code_size) == (2000, 128, 2000, 16)
    decoded = int8.sa_decode(int8.sa_encode(unit_rows(docs)))
    step = (docs.max(0) - docs.min(0)) / 255  # the calibrated range of each dimension in 255 steps
    assert (np.abs(decoded - unit_rows(docs)) <= step).all()
    np.testing.assert_array_equal(binary.reconstruct_n(0, 3), np.packbits(docs[:3] > 0, axis=1))
    with pytest.raises(ValueError, match=r"precision 'int4' is not one of \['fp16', 'int8', 'binary'\]"):
        search(docs[:2], shards, 5, precision="int4")
    with pytest.raises(ValueError, match="rescore_multiplier must be an integer >= 0.*got -1"):
        search(docs[:2], shards, 5, precision="int8", rescore_multiplier=-1)
    with pytest.raises(ValueError, match="multiple of 8, got 12"):
        build_quantized([docs[:, :12]], "binary")
    with pytest.raises(ValueError, match="multi-vector"):
        search(docs[:8].reshape(2, 4, 128), [docs.reshape(500, 4, 128)], 5, precision="binary")


def test_ivfpq_with_rescoring_against_exact(clustered):
    """IVF-PQ (16 cells, 16 bytes a document) rescored from fp16: visiting every cell with enough candidates gives the
    exact top 10; one cell, and fewer candidates than asked, pads with -1 after the found ones; bad sizes are named."""
    queries, shards = clustered
    _, exact = search(queries, shards, 10)
    index = build_ivfpq(shards, nlist=16, m=16, train_size=1000)
    assert (index.ntotal, index.code_size, index.nlist) == (2000, 16, 16)
    index.nprobe = 16
    _, ids = search_quantized(index, queries, shards, 10, rescore_multiplier=20)
    assert recall_at_k(exact, ids) >= 0.99
    index.nprobe = 1
    scores, ids = search_quantized(index, queries, shards, 1000, rescore_multiplier=2)  # 2,000 asked, one cell holds fewer
    assert (ids == -1).any() and ((ids == -1) == np.isneginf(scores)).all()
    assert all((row[row >= 0].size == len(set(row[row >= 0]))) and (row[np.argmax(row < 0):] < 0).all() for row in ids)
    with pytest.raises(ValueError, match="m=24 must divide the embedding width 128"):
        build_ivfpq(shards, nlist=16, m=24)
    with pytest.raises(ValueError, match="nlist=4096 cells need at least as many documents; the collection holds 2000"):
        build_ivfpq(shards, nlist=4096, m=16)
