"""Fusion and keyword ranking on cases small enough to compute by hand."""

import numpy as np
import pytest
from conftest import pattern

from ret2.index import Ret2Index
from ret2.index.hybrid import rrf


def test_rrf_is_the_hand_computed_sum_of_reciprocal_ranks():
    """Vector ranking 3, 1, 2 and keyword ranking 1, 4, 3 (rows), RRF_K = 60, ranks from 1:
    row 1: 1/62 + 1/61, row 3: 1/61 + 1/63, row 4: 1/62, row 2: 1/63."""
    vector = (np.array([[0.9, 0.8, 0.7]]), np.array([[3, 1, 2]]))
    keyword = (np.array([[5.0, 4.0, 3.0]]), np.array([[1, 4, 3]]))
    scores, rows = rrf([vector, keyword], 4)
    assert rows.tolist() == [[1, 3, 4, 2]]
    np.testing.assert_allclose(scores[0], [1 / 62 + 1 / 61, 1 / 61 + 1 / 63, 1 / 62, 1 / 63], rtol=1e-6)
    scores, rows = rrf([vector, keyword], 6)  # deeper than the documents: -1 padding
    assert rows.tolist() == [[1, 3, 4, 2, -1, -1]] and np.isneginf(scores[0, 4:]).all()


def test_keyword_search_ranks_a_documents_exact_caption_first(tiny_model_dir, tmp_path):
    pytest.importorskip("bm25s")
    captions = ["a red bicycle leaning on a brick wall", "a red kite above the beach", "a brick house with a red door",
                "two dogs running on the beach", "a bicycle shop at night", "the wall of an old castle"]  # fmt: skip
    for i in range(len(captions)):
        pattern(300 + i).save(tmp_path / f"p{i}.png")
    records = [{"id": f"p{i}", "text": text, "image": f"p{i}.png"} for i, text in enumerate(captions)]
    index = Ret2Index.build(tmp_path / "idx", records, model=str(tiny_model_dir), image_root=tmp_path)
    for i, text in enumerate(captions):
        hits = index.search(text, k=3, mode="keyword")
        assert hits[0].id == f"p{i}" and hits[0].score > hits[1].score, (text, hits)
