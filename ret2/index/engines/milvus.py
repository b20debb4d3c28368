"""A Milvus collection of the index's documents (`ret2.milvus`): Milvus Lite (a file) or a server, searched by Milvus
itself, which also evaluates metadata filters and keyword search there."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class MilvusEngine:
    """The collection `target` ({"uri", "collection", "index_type"}) of the index's rows."""

    kind = "milvus"

    def __init__(self, target: dict, token: str = ""):
        self.target, self.token = target, token

    @classmethod
    def build(cls, target: dict, ids: Sequence[str], shards: Sequence[np.ndarray], token: str = "",
              overwrite: bool = False, texts: Sequence[str | None] | None = None,
              metadata: Sequence[dict] | None = None) -> MilvusEngine:  # fmt: skip
        from ret2.milvus import write_collection

        write_collection(target, ids, shards, token=token, overwrite=overwrite, texts=texts, metadata=metadata)
        return cls(target, token)

    def save(self, storage) -> dict:
        return self.target  # the collection lives in Milvus; the index keeps where (credentials are not stored)

    @classmethod
    def load(cls, storage, entry: dict, token: str = "") -> MilvusEngine:
        return cls(entry, token)

    def add(self, ids: Sequence[str], shards: Sequence[np.ndarray], first_row: int,
            texts: Sequence[str | None] | None = None, metadata: Sequence[dict] | None = None) -> None:  # fmt: skip
        """Insert the rows an index's `add` appended (their ids, texts and metadata go to Milvus with them)."""
        from ret2.milvus import insert_rows

        insert_rows(self.target, ids, shards, first_row, self.token, texts, metadata)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete the rows of these ids (an index's `delete`, or the old versions of an `upsert`)."""
        from ret2.milvus import delete_ids

        delete_ids(self.target, ids, self.token)

    def search(self, queries: np.ndarray | None, k: int, filter: dict | None = None, mode: str = "vector",
               texts: Sequence[str] | None = None, row_of: dict[str, int] | None = None,
               **fusion) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """`row_of`: each id's row in the index (`ret2.milvus.search_collection`)."""
        from ret2.milvus import search_collection

        return search_collection(self.target, queries, k, token=self.token, filter=filter, mode=mode, texts=texts,
                                 row_of=row_of, **fusion)  # fmt: skip
