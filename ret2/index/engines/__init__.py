"""The search engines of an index. Each is a small class with one interface, built from the index's vectors and kept
beside them in the index folder:

    engine = Kind.build(shards, **params)        # from the fp16 embeddings (n_i, D) in shards, rows in order
    entry = engine.save(storage)                # its files in the folder; `entry` goes into index.json
    engine = Kind.load(storage, entry)          # reopened
    engine.add(shards)                          # rows appended after the current ones, in order
    scores, rows = engine.search(queries, k, allowed=None, **options)   # (Nq, k) each, best first, -1 rows pad

`allowed` is the sorted rows a metadata filter keeps (None: every row); an engine returns k rows whenever k are
allowed. The engines: `ExactEngine` (the fp16 scan, `ret2.search.search`), `QuantizedEngine` (int8 / binary codes,
rescored from fp16), `HnswEngine` (FAISS HNSW) and `IvfPqEngine` (FAISS IVF-PQ, rescored from fp16): the
approximate ones, one of which an index holds (`APPROXIMATE`); `MilvusEngine` is a Milvus collection, which evaluates
filters itself (`ret2.milvus`).
"""

from __future__ import annotations

from .flat import ExactEngine, QuantizedEngine
from .hnsw import HnswEngine
from .ivfpq import IvfPqEngine
from .milvus import MilvusEngine

APPROXIMATE = {"hnsw": HnswEngine, "ivfpq": IvfPqEngine}  # the kinds of approximate index (`build_approximate`)

__all__ = ["APPROXIMATE", "ExactEngine", "HnswEngine", "IvfPqEngine", "MilvusEngine", "QuantizedEngine"]
