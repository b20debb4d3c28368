"""A `Ret2Index`'s embeddings in a Milvus collection (`pip install "ret2[milvus]"`), through `pymilvus`.

The same code writes to and searches a Milvus Lite file (embedded: `MilvusClient("./docs.db")`, no server) and a
Milvus standalone or cluster (`MilvusClient("http://host:19530", token="user:password")`): only the URI changes.
A collection holds one row per document: `id` (the document id, primary key), `row` (its position in the index, which
maps a hit back to the index's records) and `vector` (the fp32 embedding); it is searched by inner product (cosine:
the embeddings are normalised). Multi-vector (ReT-1 mode) embeddings are not written: Milvus scores one vector per
row, not ReT-1's late interaction.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .search import unit_rows

INSERT_BATCH = 5_000  # rows per insert call
ID_LENGTH = 1024  # longest document id a collection takes (VARCHAR max_length)


def _client(uri: str, token: str = ""):
    """A `MilvusClient` for `uri`; `token` (default: the MILVUS_TOKEN environment variable) authenticates to a server."""
    token = token or os.environ.get("MILVUS_TOKEN", "")
    try:
        from pymilvus import MilvusClient
    except ImportError as err:
        raise ImportError('Milvus support needs pymilvus: pip install "pymilvus[milvus_lite]" milvus-lite') from err
    return MilvusClient(uri, token=token) if token else MilvusClient(uri)


def write_collection(
    target: dict, ids: Sequence[str], shards: Sequence[np.ndarray], token: str = "", overwrite: bool = False
) -> None:
    """Create `target["collection"]` at `target["uri"]` with a `target["index_type"]` index and insert every
    document (ids in order, embeddings (n_i, D) per shard)."""
    if shards[0].ndim != 2:
        raise ValueError(f"Milvus takes one vector per document; got embeddings of shape {shards[0].shape[1:]}")
    client = _client(target["uri"], token)
    try:
        _write(client, target, ids, shards, overwrite)
    finally:
        client.close()  # an open Milvus Lite client keeps its embedded server (and the process) alive


def _write(client, target: dict, ids: Sequence[str], shards: Sequence[np.ndarray], overwrite: bool) -> None:
    from pymilvus import DataType

    name = target["collection"]
    if client.has_collection(name):
        if not overwrite:
            raise ValueError(f"Milvus collection {name!r} already exists at {target['uri']}; pass overwrite=True "
                             "(ret2-index milvus: --overwrite) to replace it")
        client.drop_collection(name)
    too_long = next((i for i in ids if len(i.encode()) > ID_LENGTH), None)
    if too_long is not None:
        raise ValueError(f"document id {too_long[:80]!r}... is longer than {ID_LENGTH} bytes, Milvus's limit here")
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_LENGTH)
    schema.add_field("row", DataType.INT64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(shards[0].shape[1]))
    index_params = client.prepare_index_params()
    index_params.add_index("vector", index_type=target["index_type"], metric_type="IP")
    client.create_collection(name, schema=schema)
    # On the empty collection, without waiting: the wait asks the server for a timestamp (AllocTimestamp), which
    # Milvus Lite does not implement (its server logs a NotImplementedError traceback, pymilvus then goes on).
    client.create_index(name, index_params, sync=False)
    row = 0
    for shard in shards:
        for start in range(0, len(shard), INSERT_BATCH):
            block = unit_rows(shard[start : start + INSERT_BATCH])
            client.insert(name, [{"id": ids[row + j], "row": row + j, "vector": v.tolist()} for j, v in enumerate(block)])
            row += len(block)
    client.flush(name)
    client.load_collection(name)


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
    target: dict, queries: np.ndarray, k: int, token: str = "", client=None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) (Nq, k) of query embeddings (Nq, D) against the collection, best first; -1 rows pad missing
    hits. `client`: an open client (`open_client`) to reuse; without one a client is opened and closed."""
    own = client is None
    client = open_client(target, token) if own else client
    try:
        load_collection(client, target["collection"])
        results = client.search(target["collection"], data=unit_rows(queries).tolist(), limit=k,
                                search_params={"metric_type": "IP"}, output_fields=["row"])  # fmt: skip
    finally:
        if own:
            client.close()
    scores, rows = np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
    for q, hits in enumerate(results):
        for j, hit in enumerate(hits):
            scores[q, j], rows[q, j] = hit["distance"], hit["entity"]["row"]
    return scores, rows
