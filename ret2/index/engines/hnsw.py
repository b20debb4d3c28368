"""FAISS HNSW over the fp32 vectors: a graph walk per query (`ret2.search.build_hnsw` / `search_hnsw`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ret2.search import build_hnsw, search_hnsw, unit_rows

APPROXIMATE_STEM = "approximate"  # approximate-<revision>.faiss, named in the manifest (`Storage.versioned`)
APPROXIMATE_FILE = "approximate.faiss"  # the name before versioned files, still read


class HnswEngine:
    """`m` neighbours per node, built at depth `ef_construction`, searched at `ef_search` (a search option too).
    Memory: 4 * D + about 8 * m bytes a row, more than the fp16 vectors it approximates."""

    kind = "hnsw"

    def __init__(self, index, m: int, ef_construction: int, ef_search: int):
        self.index, self.m, self.ef_construction, self.ef_search = index, m, ef_construction, ef_search

    @classmethod
    def build(cls, shards: Sequence[np.ndarray], device=None, m: int = 32, ef_construction: int = 80,
              ef_search: int = 128) -> HnswEngine:  # fmt: skip
        """`device`: unused (FAISS HNSW searches on the CPU); taken as every approximate engine's `build` takes it."""
        if not isinstance(ef_search, int) or ef_search < 1:
            raise ValueError(f"ef_search must be a positive integer, got {ef_search!r}")
        return cls(build_hnsw(shards, m, ef_construction), m, ef_construction, ef_search)

    def save(self, storage) -> dict:
        import faiss

        data = faiss.serialize_index(self.index).tobytes()
        file = storage.versioned(APPROXIMATE_STEM, ".faiss")
        storage.write_file(file, data)
        return {"kind": self.kind, "file": file, "m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "bytes_per_document": round(len(data) / max(self.index.ntotal, 1), 1)}  # fmt: skip

    @classmethod
    def load(cls, storage, entry: dict, shards: Sequence[np.ndarray] = (), device=None) -> HnswEngine:
        """`shards`, `device`: unused (the graph holds its own vectors); taken as every approximate engine's `load`."""
        import faiss

        index = faiss.read_index(str(storage.path(entry.get("file", APPROXIMATE_FILE))))
        return cls(index, entry["m"], entry["ef_construction"], entry["ef_search"])

    def add(self, shards: Sequence[np.ndarray]) -> None:
        for shard in shards:
            self.index.add(unit_rows(np.asarray(shard)))

    def rebuilt(self, shards: Sequence[np.ndarray]) -> HnswEngine:
        """This engine's settings over other rows (a compacted index's): the graph built again (FAISS HNSW cannot
        remove nodes)."""
        return self.build(shards, m=self.m, ef_construction=self.ef_construction, ef_search=self.ef_search)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        return search_hnsw(self.index, queries, k, ef_search or self.ef_search, allowed=allowed)
