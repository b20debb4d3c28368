"""Keyword search: BM25 over the documents' texts, through bm25s (`pip install "ret2[keyword]"`).

Texts are tokenised by bm25s' tokenizer (lower-cased runs of letters and digits, English stop words dropped, no
stemming: the tokens of Milvus' standard analyzer, so both score alike), the same for documents and queries, and scored by BM25 (bm25s' defaults: Lucene's variant,
k1 = 1.5, b = 0.75). A document without text, or sharing no word with the query, scores 0 and is not returned: a
keyword search returns k documents whenever k documents hold a query word (and pass the filter).

bm25s indexes a fixed corpus, so adding documents rebuilds the index from every text (IDF changes with the corpus
anyway); the saved index (`save`, a folder of bm25s' files) is loaded memory-mapped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

TOKEN_PATTERN = r"(?u)\b\w+\b"  # every run of word characters: Milvus' standard analyzer's tokens
BM25_K1, BM25_B = 1.5, 0.75  # BM25's term-frequency saturation and length normalisation (bm25s' defaults)
NO_WORDS_FILE = "no-words.json"  # the saved index of texts that hold no word: {"num_docs"}


def stop_words() -> list[str]:
    """The English stop words dropped from documents and queries (bm25s'; Milvus' analyzer is given the same)."""
    from bm25s.stopwords import STOPWORDS_EN

    return list(STOPWORDS_EN)


def _bm25s():
    try:
        import bm25s
    except ImportError as err:
        raise ImportError('keyword and hybrid search need bm25s: pip install "ret2[keyword]" (or pip install bm25s)') from err
    return bm25s


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    return _bm25s().tokenize(list(texts), token_pattern=TOKEN_PATTERN, stopwords=stop_words(), return_ids=False,
                             show_progress=False)  # fmt: skip


class KeywordIndex:
    """BM25 over a fixed list of texts (None for a document without text), rows in the given order."""

    def __init__(self, retriever, size: int):
        self.retriever, self.size = retriever, size

    @classmethod
    def build(cls, texts: Sequence[str | None]) -> KeywordIndex:
        """The BM25 index of `texts`; where no text holds a word (images only, or stop words only), an index that
        matches nothing (bm25s cannot index an empty vocabulary)."""
        tokens = _tokenize([t or "" for t in texts])
        if not any(tokens):
            return cls(None, len(texts))
        retriever = _bm25s().BM25(k1=BM25_K1, b=BM25_B)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, len(texts))

    def save(self, folder: Path) -> None:
        if self.retriever is None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / NO_WORDS_FILE).write_text(json.dumps({"num_docs": self.size}))
        else:
            self.retriever.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> KeywordIndex:
        if (folder / NO_WORDS_FILE).is_file():
            return cls(None, json.loads((folder / NO_WORDS_FILE).read_text())["num_docs"])
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
        if self.retriever is None:  # no document holds a word
            return out_scores, out_rows
        for q, tokens in enumerate(_tokenize(queries)):
            scores = self.retriever.get_scores(tokens)[candidates]  # (n_allowed,)
            hit = np.flatnonzero(scores > 0)
            order = hit[np.lexsort((candidates[hit], -scores[hit]))][:k]  # by score, ties to the lower row
            out_scores[q, : len(order)], out_rows[q, : len(order)] = scores[order], candidates[order]
        return out_scores, out_rows
