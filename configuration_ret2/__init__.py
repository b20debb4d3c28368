"""Configuration of ReT-2 (`model_type="ret2"`)."""

from transformers import AutoConfig

from .configuration_ret2 import LAYER_PRESETS, Ret2Config, default_layer_ids

Ret2Config.register_for_auto_class()
# Where this package is imported, AutoConfig knows `model_type="ret2"` without remote code: loading a ReT-2 folder's
# processor with the local classes (the tokenizer loader reads the folder's config.json) then reads a Ret2Config, not a
# bare PreTrainedConfig with a warning. `trust_remote_code=True` still loads a folder's own code.
AutoConfig.register(Ret2Config.model_type, Ret2Config, exist_ok=True)

__all__ = ["Ret2Config", "LAYER_PRESETS", "default_layer_ids"]
