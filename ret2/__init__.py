"""ret2: ReT-2, a universal multimodal retriever native to the Hugging Face Hub.

    from ret2 import Ret2Model, Ret2Processor, Ret2Config

The model, its config and its processor live in the remote-code modules `modeling_ret2` / `configuration_ret2`
(what a saved folder carries); this namespace re-exports them beside the library: `ret2.data` (benchmark formats,
images, the data generator), `ret2.encoding` / `ret2.search` (cached encoding, exact search), `ret2.training`,
`ret2.eval` (M-BEIR / M2KR), `ret2.conversion` (ReT-1), `ret2.publish` (the Hub).
"""

from configuration_ret2 import Ret2Config
from modeling_ret2 import Ret2Model, Ret2Processor, similarity

__all__ = ["Ret2Config", "Ret2Model", "Ret2Processor", "similarity"]
