"""A `Ret2Index`'s embeddings in a Milvus collection (`pip install "ret2[milvus]"`), through `pymilvus`.

The same code writes to and searches a Milvus Lite file (embedded: `MilvusClient("./docs.db")`, no server) and a
Milvus standalone or cluster (`MilvusClient("http://host:19530", token="user:password")`): only the URI changes.
A collection holds one row per document: `id` (the document id, primary key), `row` (its position in the index, which
maps a hit back to the index's records), `vector` (the fp32 embedding), `text` (its text, "" without one),
`metadata` (a JSON field: the document's metadata dict) and `sparse`, the BM25 vector Milvus derives from `text`
through a BM25 schema function (analyzer: lower-cased words and the English stop words of `ret2.index.keyword`,
with its k1 and b, so that a keyword search returns the embedded index's bm25s ranking and scores: Milvus' BM25 is
Lucene's times k1 + 1, divided out here). Vectors are searched by inner product (cosine: the
embeddings are normalised). Multi-vector (ReT-1 mode) embeddings are not written: Milvus scores one vector per
row, not ReT-1's late interaction.

`search_collection` runs in Milvus itself: metadata filters (`ret2.index.filters.to_milvus` of the filter dict),
keyword search (BM25 over `sparse`) and hybrid search (`hybrid_search` of both, fused by `RRFRanker` or
`WeightedRanker`).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .index.filters import to_milvus
from .index.hybrid import RRF_K
from .index.keyword import BM25_B, BM25_K1, stop_words
from .options import FUSIONS, SEARCH_MODES
from .search import unit_rows

INSERT_BATCH = 5_000  # rows per insert call
ID_LENGTH = 1024  # longest document id a collection takes (VARCHAR max_length)
TEXT_LENGTH = 65_535  # longest text a collection takes, in UTF-8 bytes (Milvus' VARCHAR limit); longer ones are cut
# Seconds to wait for the first connection (pymilvus' own default is 10). A Milvus Lite file is served by a gRPC server
# in a thread of this process: on a busy machine its first answer took longer than 10 s (seen in CI, two test workers).
CONNECT_TIMEOUT = 60.0


def _client(uri: str, token: str = ""):
    """A `MilvusClient` for `uri`; `token` (default: the MILVUS_TOKEN environment variable) authenticates to a server."""
    token = token or os.environ.get("MILVUS_TOKEN", "")
    try:
        from pymilvus import MilvusClient
    except ImportError as err:
        raise ImportError('Milvus support needs pymilvus: pip install "pymilvus[milvus_lite]" milvus-lite') from err
    auth = {"token": token} if token else {}
    return MilvusClient(uri, timeout=CONNECT_TIMEOUT, **auth)


def write_collection(
    target: dict,
    ids: Sequence[str],
    shards: Sequence[np.ndarray],
    token: str = "",
    overwrite: bool = False,
    texts: Sequence[str | None] | None = None,
    metadata: Sequence[dict] | None = None,
) -> None:
    """Create `target["collection"]` at `target["uri"]` with a `target["index_type"]` index and insert every
    document (ids in order, embeddings (n_i, D) per shard, and each document's text and metadata dict, if given)."""
    if shards[0].ndim != 2:
        raise ValueError(f"Milvus takes one vector per document; got embeddings of shape {shards[0].shape[1:]}")
    client = _client(target["uri"], token)
    try:
        _write(client, target, ids, shards, overwrite, texts or [None] * len(ids), metadata or [{}] * len(ids))
    finally:
        client.close()  # an open Milvus Lite client keeps its embedded server (and the process) alive


def _cut(text: str | None) -> str:
    """`text` ("" for None) cut to TEXT_LENGTH UTF-8 bytes on a character boundary."""
    data = (text or "").encode()
    return text or "" if len(data) <= TEXT_LENGTH else data[:TEXT_LENGTH].decode(errors="ignore")


def _write(client, target: dict, ids: Sequence[str], shards: Sequence[np.ndarray], overwrite: bool,
           texts: Sequence[str | None], metadata: Sequence[dict]) -> None:  # fmt: skip
    from pymilvus import DataType, Function, FunctionType

    name = target["collection"]
    if client.has_collection(name):
        if not overwrite:
            raise ValueError(f"Milvus collection {name!r} already exists at {target['uri']}; pass overwrite=True "
                             "(ret2-index milvus: --overwrite) to replace it")
        client.drop_collection(name)
    _check_ids(ids)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_LENGTH)
    schema.add_field("row", DataType.INT64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(shards[0].shape[1]))
    analyzer = {"tokenizer": "standard", "filter": ["lowercase", {"type": "stop", "stop_words": stop_words()}]}
    schema.add_field("text", DataType.VARCHAR, max_length=TEXT_LENGTH, enable_analyzer=True, analyzer_params=analyzer)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("metadata", DataType.JSON)
    schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                 output_field_names=["sparse"]))  # fmt: skip
    index_params = client.prepare_index_params()
    index_params.add_index("vector", index_type=target["index_type"], metric_type="IP")
    index_params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                           params={"bm25_k1": BM25_K1, "bm25_b": BM25_B})  # fmt: skip
    client.create_collection(name, schema=schema)
    # On the empty collection, without waiting: the wait asks the server for a timestamp (AllocTimestamp), which
    # Milvus Lite does not implement (its server logs a NotImplementedError traceback, pymilvus then goes on).
    client.create_index(name, index_params, sync=False)
    _insert(client, name, ids, shards, 0, texts, metadata)
    client.load_collection(name)


def _check_ids(ids: Sequence[str]) -> None:
    too_long = next((i for i in ids if len(i.encode()) > ID_LENGTH), None)
    if too_long is not None:
        raise ValueError(f"document id {too_long[:80]!r}... is longer than {ID_LENGTH} bytes, Milvus's limit here")


def _insert(client, name: str, ids: Sequence[str], shards: Sequence[np.ndarray], first_row: int,
            texts: Sequence[str | None], metadata: Sequence[dict]) -> None:  # fmt: skip
    """Insert documents (ids, embeddings in shards, texts, metadata; index rows from `first_row`) and flush."""
    row = 0
    for shard in shards:
        for start in range(0, len(shard), INSERT_BATCH):
            block = unit_rows(shard[start : start + INSERT_BATCH])
            client.insert(name, [{"id": ids[row + j], "row": first_row + row + j, "vector": v.tolist(),
                                  "text": _cut(texts[row + j]), "metadata": metadata[row + j]}
                                 for j, v in enumerate(block)])  # fmt: skip
            row += len(block)
    client.flush(name)


def insert_rows(target: dict, ids: Sequence[str], shards: Sequence[np.ndarray], first_row: int, token: str = "",
                texts: Sequence[str | None] | None = None, metadata: Sequence[dict] | None = None) -> None:  # fmt: skip
    """Append documents to the collection of `write_collection` (an index's `add`): their rows in the index start at
    `first_row`."""
    if shards[0].ndim != 2:
        raise ValueError(f"Milvus takes one vector per document; got embeddings of shape {shards[0].shape[1:]}")
    _check_ids(ids)
    client = _client(target["uri"], token)
    try:
        _insert(client, target["collection"], ids, shards, first_row, texts or [None] * len(ids),
                metadata or [{}] * len(ids))  # fmt: skip
    finally:
        client.close()


def delete_ids(target: dict, ids: Sequence[str], token: str = "") -> None:
    """Delete documents from the collection by id (an index's `delete` / `upsert`)."""
    client = _client(target["uri"], token)
    try:
        for start in range(0, len(ids), INSERT_BATCH):
            client.delete(target["collection"], ids=list(ids[start : start + INSERT_BATCH]))
        client.flush(target["collection"])
    finally:
        client.close()


def load_collection(client, name: str) -> None:
    """Load collection `name` into memory unless it is loaded: a collection written by another process (or before a
    Milvus restart) is released, and a search of it fails until it is loaded."""
    from pymilvus.client.types import LoadState

    if client.get_load_state(name)["state"] != LoadState.Loaded:
        client.load_collection(name)


def open_client(target: dict, token: str = ""):
    """A client of the collection's Milvus (close it when done: an open Milvus Lite client keeps its server alive)."""
    return _client(target["uri"], token)


def search_collection(
    target: dict,
    queries: np.ndarray | None,
    k: int,
    token: str = "",
    client=None,
    filter: dict | None = None,
    mode: str = "vector",
    texts: Sequence[str] | None = None,
    fusion: str = "rrf",
    weights: Sequence[float] = (0.5, 0.5),
    row_of: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) (Nq, k) against the collection, best first; -1 rows pad missing hits. `client`: an open client
    (`open_client`) to reuse; without one a client is opened and closed. `row_of`: each document id's row in the
    index now (hits are mapped by their id, so a compacted index needs no rewrite of the collection); None: the rows
    stored with the documents.

    mode "vector": query embeddings (Nq, D) by inner product; "keyword": BM25 of the query `texts` (Nq); "hybrid":
    both, each ranking's top k fused by `RRFRanker(RRF_K)` (fusion="rrf") or `WeightedRanker(*weights)`
    ("weighted"). `filter`: a metadata filter (`ret2.index.filters`), evaluated by Milvus before the top k."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode {mode!r} is not one of {list(SEARCH_MODES)}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion {fusion!r} is not one of {list(FUSIONS)}")
    if mode != "vector" and (texts is None or any(not isinstance(t, str) for t in texts)):
        raise ValueError(f"mode {mode!r} needs a text for every query (texts=...)")
    expression = to_milvus(filter) if filter is not None else ""
    own = client is None
    client = open_client(target, token) if own else client
    try:
        name = target["collection"]
        load_collection(client, name)
        if (filter is not None or mode != "vector") and "sparse" not in {
            f["name"] for f in client.describe_collection(name)["fields"]
        }:
            raise ValueError(f"Milvus collection {name!r} holds vectors only (written by an older ret2); write it "
                             "again (to_milvus(..., overwrite=True)) for filters and keyword search")  # fmt: skip
        vector = {"data": unit_rows(queries).tolist(), "anns_field": "vector", "param": {"metric_type": "IP"}} \
            if mode != "keyword" else None  # fmt: skip
        keyword = {"data": list(texts), "anns_field": "sparse", "param": {"metric_type": "BM25"}} \
            if mode != "vector" else None  # fmt: skip
        if mode == "hybrid":
            from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

            requests = [AnnSearchRequest(**r, limit=k, expr=expression) for r in (vector, keyword)]
            ranker = RRFRanker(RRF_K) if fusion == "rrf" else WeightedRanker(*weights)
            results = client.hybrid_search(name, requests, ranker, limit=k, output_fields=["row"])
        else:
            request = vector or keyword
            results = client.search(name, data=request["data"], anns_field=request["anns_field"], limit=k,
                                    search_params=request["param"], filter=expression, output_fields=["row"])  # fmt: skip
    finally:
        if own:
            client.close()
    num_queries = len(texts) if mode == "keyword" else len(queries)
    scores, rows = np.full((num_queries, k), -np.inf, np.float32), np.full((num_queries, k), -1, np.int64)
    for q, hits in enumerate(results):
        for j, hit in enumerate(hits):
            # BM25: Milvus Lite returns the score negated (a distance), a Milvus server the score itself; Milvus'
            # BM25 is bm25s' (Lucene's) times (k1 + 1), a constant: divided by it, both report the same score
            score = abs(hit["distance"]) / (1 + BM25_K1) if mode == "keyword" else hit["distance"]
            row = hit["entity"]["row"] if row_of is None else row_of.get(hit["id"], -1)
            scores[q, j], rows[q, j] = (score, row) if row >= 0 else (-np.inf, -1)
    return scores, rows
