"""ReT-2 model and processor.

`modeling_ret2/configuration_ret2.py` is a link to `configuration_ret2/configuration_ret2.py`: `save_pretrained` copies
a model's relatively imported files flat beside it, so the modeling file imports its config as a sibling. The alias
below makes that sibling the very module `configuration_ret2` defines, so there is one `Ret2Config` class.
"""

import sys

import configuration_ret2.configuration_ret2 as _configuration

sys.modules[f"{__name__}.configuration_ret2"] = _configuration

from .modeling_ret2 import (  # noqa: E402
    Ret2Encoder, Ret2Model, Ret2Output, Ret2PreTrainedModel, Ret2RecurrentCell, encode_samples, similarity,
    truncate_embeddings,
)  # fmt: skip
from .processing_ret2 import Ret2Processor, to_rgb  # noqa: E402
from .sentence_ret2 import Ret2SentenceTransformersModule  # noqa: E402

Ret2Model.register_for_auto_class("AutoModel")
Ret2Processor.register_for_auto_class("AutoProcessor")

__all__ = [
    "Ret2Encoder",
    "Ret2Model",
    "Ret2Output",
    "Ret2PreTrainedModel",
    "Ret2Processor",
    "Ret2RecurrentCell",
    "Ret2SentenceTransformersModule",
    "encode_samples",
    "similarity",
    "to_rgb",
    "truncate_embeddings",
]
