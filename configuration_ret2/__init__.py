"""Configuration of ReT-2 (`model_type="ret2"`)."""

from .configuration_ret2 import LAYER_PRESETS, Ret2Config, default_layer_ids

Ret2Config.register_for_auto_class()

__all__ = ["Ret2Config", "LAYER_PRESETS", "default_layer_ids"]
