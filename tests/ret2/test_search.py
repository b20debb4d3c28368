"""`ret2.search.search`: faiss and torch give the same exact ranking, chunked scans, late interaction, renormalised
stored vectors, the torch fallback, and the errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ret2 import search as search_module
from ret2.search import search
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
