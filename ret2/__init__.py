"""ret2: ReT-2, a universal multimodal retriever native to the Hugging Face Hub.

    from ret2 import Ret2Model, Ret2Processor, Ret2Config, Ret2Index

The model, its config and its processor live in the remote-code modules `modeling_ret2` / `configuration_ret2`
(what a saved folder carries); this namespace re-exports them beside the library: `ret2.data` (benchmark formats,
images, the data generator), `ret2.encoding` / `ret2.search` (cached encoding, exact search), `ret2.training`,
`ret2.eval` (M-BEIR / M2KR), `ret2.index` (your own collection: exact, HNSW or Milvus search), `ret2.rag`,
`ret2.conversion` (ReT-1), `ret2.publish` (the Hub).
"""

from configuration_ret2 import Ret2Config
from modeling_ret2 import Ret2Model, Ret2Processor, similarity

from .index import Hit, Ret2Index

__all__ = ["Hit", "Ret2Config", "Ret2Index", "Ret2Model", "Ret2Processor", "similarity"]
