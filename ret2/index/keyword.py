"""Keyword search: BM25 over the documents' texts, through bm25s (`pip install "ret2[keyword]"`).

Texts are tokenised by bm25s' tokenizer (lower-cased words of two or more letters or digits, English stop words
dropped, no stemming), the same for documents and queries, and scored by BM25 (bm25s' defaults: Lucene's variant,
k1 = 1.5, b = 0.75). A document without text, or sharing no word with the query, scores 0 and is not returned: a
keyword search returns k documents whenever k documents hold a query word (and pass the filter).

bm25s indexes a fixed corpus, so adding documents rebuilds the index from every text (IDF changes with the corpus
anyway); the saved index (`save`, a folder of bm25s' files) is loaded memory-mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

STOPWORDS = "en"


def _bm25s():
    try:
        import bm25s
    except ImportError as err:
        raise ImportError('keyword and hybrid search need bm25s: pip install "ret2[keyword]" (or pip install bm25s)') from err
    return bm25s


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    return _bm25s().tokenize(list(texts), stopwords=STOPWORDS, return_ids=False, show_progress=False)


class KeywordIndex:
    """BM25 over a fixed list of texts (None for a document without text), rows in the given order."""

    def __init__(self, retriever, size: int):
        self.retriever, self.size = retriever, size

    @classmethod
    def build(cls, texts: Sequence[str | None]) -> KeywordIndex:
        retriever = _bm25s().BM25()
        retriever.index(_tokenize([t or "" for t in texts]), show_progress=False)
        return cls(retriever, len(texts))

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> KeywordIndex:
        retriever = _bm25s().BM25.load(str(folder), mmap=True, show_progress=False)
        return cls(retriever, int(retriever.scores["num_docs"]))

    def __len__(self) -> int:
        return self.size

    def search(self, queries: Sequence[str], k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(BM25 scores (Nq, k) float32, rows (Nq, k) int64) of text queries, best first, ties to the lower row; -1
        rows (score -inf) pad where fewer than k documents (of `allowed`, sorted rows, when given) hold a query word."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        bad = next((q for q in queries if not isinstance(q, str)), None)
        if bad is not None:
            raise ValueError(f"keyword search takes text queries; got {type(bad).__name__} {bad!r}")
        candidates = np.arange(self.size) if allowed is None else np.asarray(allowed, np.int64)
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_rows = np.full((len(queries), k), -1, np.int64)
        for q, tokens in enumerate(_tokenize(queries)):
            scores = self.retriever.get_scores(tokens)[candidates]  # (n_allowed,)
            hit = np.flatnonzero(scores > 0)
            order = hit[np.lexsort((candidates[hit], -scores[hit]))][:k]  # by score, ties to the lower row
            out_scores[q, : len(order)], out_rows[q, : len(order)] = scores[order], candidates[order]
        return out_scores, out_rows
