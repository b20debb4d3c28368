"""ret2: ReT-2, a universal multimodal retriever native to the Hugging Face Hub.

    from ret2 import Ret2Model, Ret2Processor, Ret2Config, Ret2Index

The model, its config and its processor live in the remote-code modules `modeling_ret2` / `configuration_ret2`
(what a saved folder carries); this namespace re-exports them beside the library: `ret2.data` (benchmark formats,
images, the data generator), `ret2.records` (documents from files, folders and datasets), `ret2.encoding`,
`ret2.cache` and `ret2.search` (encoding, the embedding cache, exact search), `ret2.training`, `ret2.eval` (M-BEIR /
M2KR), `ret2.index` (your own collection: exact, HNSW or Milvus search), `ret2.rag`, `ret2.conversion` (ReT-1),
`ret2.publish` (the Hub).

The names are imported on first use, so `import ret2` (and every command's `--help`) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_EXPORTS = {
    "Ret2Config": "configuration_ret2",
    "Ret2Model": "modeling_ret2",
    "Ret2Processor": "modeling_ret2",
    "similarity": "modeling_ret2",
    "Hit": "ret2.index",
    "Ret2Index": "ret2.index",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ret2' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
