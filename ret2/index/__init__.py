"""An index of your own documents: a folder on disk that a ReT-2 model encodes once and searches many times.

    from ret2.index import Ret2Index

    index = Ret2Index.build("my-index", "photos/", model="path/or/hub-id")   # a folder of images (+ name.txt captions)
    hits = index.search("a red dress with long sleeves", k=5)               # [Hit(id, score, text, image, metadata)]
    hits = index.search({"text": "same dress in blue", "image": "query.jpg"}, k=5)

Documents come from a jsonl or csv file of records (`id`, `text`, `image`: a path relative to the image root, every
other field kept as metadata), a `datasets.Dataset` with those columns, or a folder of images (the id is the path
relative to the folder; `name.txt` beside `name.jpg` is its text). Each `build` / `add` writes one *part*: its
records (`parts/part-00000.jsonl`, image paths relative to the part's own image root, so documents added later may
live anywhere) and their embeddings, encoded through the evaluation's shard cache (`ret2.cache.encode_pool`: fp16
shards written atomically under `cache/`, keyed by the part's content, so a copied index folder keeps them), so a
killed build resumes from the last finished shard when the same command runs again. `index.json` holds the model
(name or path and `model_fingerprint`), the encoding settings and the parts; `model_config.json` is a copy of the
model's config. An index opened with a model whose files differ from the one that built it refuses to search.

Search is exact by default (`ret2.search.search`, the function `eval.mbeir` and `eval.m2kr` rank with), for single
vectors (ReT-2) and multi-vector late interaction (ReT-1 mode, `pooling="none"`). `build_approximate` adds a FAISS
index for collections in the millions, IVF-PQ (`kind="ivfpq"`: codes of a fraction of the fp16 vectors' bytes, the
best candidates rescored from them) or HNSW, and measures its recall@10 against the exact search; `to_milvus` copies
the documents into a Milvus collection (a Milvus Lite file or a server URI), searched with `engine="milvus"`.

The code: the folder (manifest, parts, records, ids, atomic writes) is `ret2.index.storage`, chunking
`ret2.index.chunking`, each search engine a class of `ret2.index.engines` (exact, int8 / binary codes, HNSW, IVF-PQ,
Milvus) with one interface; `Ret2Index` (`ret2.index.ret2_index`) composes them.

The command line is `ret2-index` (`python -m ret2.index`, in `ret2/commands/index.py`): build, add, search, info,
approximate, milvus, train.
"""

from __future__ import annotations

import importlib
from typing import Any

ENGINES = ("exact", "approximate", "milvus")  # what `Ret2Index.search` searches with

# name -> the module that defines it, imported on first use: the command line's --help stays light
_EXPORTS = {"Hit": "ret2.index.ret2_index", "Ret2Index": "ret2.index.ret2_index", "index_info": "ret2.index.storage"}

__all__ = ["ENGINES", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ret2.index' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
