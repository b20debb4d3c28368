"""LoRA on the towers of a ReT-2 model (peft), and the plain merged weights its checkpoints are saved with.

The LoRA adapters go on the towers' attention projections; everything ReT-2 adds on top of the towers (per-layer
adapters, recurrent cell, projection: the `*_encoder` modules) and `logit_scale` stay fully trainable. They are
marked trainable rather than listed in peft's `modules_to_save`: that would keep a frozen copy of each module and
still could not hold `logit_scale`, a bare parameter of the root model.

A LoRA run saves, in every checkpoint and in the final folder, the plain `Ret2Model` with the adapters merged into
the tower weights: it loads with `AutoModel.from_pretrained(..., trust_remote_code=True)` and needs no peft. Beside
it, `LORA_STATE_NAME` holds the unmerged trainable tensors (adapters, encoders, logit_scale) a resumed run restarts
from; `ret2-train --merge_lora` leaves it out of the final folder.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

# The towers' attention projections (CLIP and SigLIP name them alike); the cell's attentions, which carry the same
# names under `query_encoder` / `document_encoder`, are trained fully instead.
from .arguments import DEFAULT_LORA_TARGETS  # noqa: E402 - light, the command's --help shows it
LORA_STATE_NAME = "lora_state.safetensors"


def apply_lora(
    model: torch.nn.Module, r: int, alpha: float, dropout: float = 0.0, target_modules: str = DEFAULT_LORA_TARGETS
) -> PeftModel:
    """Wrap a `Ret2Model` with LoRA adapters of rank `r` on `target_modules` (a regex over module names, or a list
    of name suffixes); the tower weights freeze, the encoders and `logit_scale` stay trainable."""
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    peft_model = get_peft_model(model, config)
    base = peft_model.get_base_model()
    for encoder in (base.query_encoder, base.document_encoder):
        if encoder is not None:
            encoder.requires_grad_(True)
    base.logit_scale.requires_grad_(True)
    return peft_model


def merged_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The state dict of the plain base model with the active adapters merged (W + scale * B @ A), computed without
    touching `model` (merging in place and unmerging would not restore the weights bit for bit)."""
    base = model.get_base_model()
    state = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" not in key:
            state[key.replace(".base_layer.", ".")] = tensor
    for name, layer in base.named_modules():
        if isinstance(layer, LoraLayer):
            weight = state[f"{name}.weight"]
            delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
            state[f"{name}.weight"] = weight + delta.to(weight.dtype)
    return state


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (adapters, encoders, logit_scale), by their names in `model`."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `trainable_state_dict` output back; ValueError when it does not cover exactly the trainable parameters."""
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        raise ValueError(
            f"the LoRA state does not match the model's trainable parameters: missing {sorted(expected - set(state))}, "
            f"unexpected {sorted(set(state) - expected)}"
        )
    model.load_state_dict(state, strict=False)
