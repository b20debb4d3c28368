"""Shared pieces of the benchmarks: model sizes, synthetic inputs, timing, peak memory and FLOP counting."""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPVisionConfig

from configuration_ret2 import Ret2Config
from modeling_ret2 import Ret2Model

# What the CLIP image processor turns a black pixel into: (0 - mean) / std per channel. The reference ReT code feeds a
# black image where a document has none; the processor's `pad_missing_images=True` does the same.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BLACK_PIXEL = tuple(-m / s for m, s in zip(CLIP_MEAN, CLIP_STD))

BENCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODALITIES = ("text", "image", "image+text")


@dataclass(frozen=True)
class Size:
    """A backbone size: the CLIP tower configs, the ReT-1 tap preset for it, and the text lengths to feed."""

    label: str
    text: dict = field(default_factory=dict)  # CLIPTextConfig kwargs ({} = CLIP ViT-B/32's text tower)
    vision: dict = field(default_factory=dict)  # CLIPVisionConfig kwargs ({} = CLIP ViT-B/32's vision tower)
    ret1_layers: dict = field(default_factory=dict)  # Ret2Config kwargs choosing ReT-1's taps
    cell: dict = field(default_factory=dict)  # Ret2Config overrides of the cell's sizes (only the quick size has any)
    text_lengths: tuple[int, int] = (20, 30)  # tokens per caption, drawn uniformly, before <bos>/<eos>


_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768)
_L14_VISION = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
    projection_dim=768,
)  # fmt: skip
_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, projection_dim=32)

SIZES = {
    "b32": Size("ViT-B/32", ret1_layers=dict(layer_preset="ret1-clip-b")),
    "l14": Size(
        "ViT-L/14", text=_L14_TEXT, vision={**_L14_VISION, "image_size": 224}, ret1_layers=dict(layer_preset="ret1-clip-l")
    ),
    "l14-336": Size(
        "ViT-L/14@336", text=_L14_TEXT, vision={**_L14_VISION, "image_size": 336},
        ret1_layers=dict(layer_preset="ret1-clip-l"),
    ),  # fmt: skip
    "tiny": Size(
        "tiny", text=_TINY, vision={**_TINY, "image_size": 32, "patch_size": 8},
        ret1_layers=dict(text_layer_ids=[0, 1, 2, 3], vision_layer_ids=[0, 1, 2, 3]),
        cell=dict(hidden_size=64, num_latent_tokens=8, num_attention_heads=2, embedding_dim=32),
        text_lengths=(5, 10),
    ),  # fmt: skip
}


def model_config(size: str, kind: str, **overrides) -> Ret2Config:
    """`kind="ret2"`: the default ReT-2 config on this backbone. `kind="ret1"`: ReT-1 mode (separate query and
    document cells, 12 taps, 32 x 128 late-interaction output), as in the ReT-1 checkpoints."""
    spec = SIZES[size]
    towers = dict(text_config=CLIPTextConfig(**spec.text), vision_config=CLIPVisionConfig(**spec.vision))
    if kind == "ret2":
        return Ret2Config(**towers, **{**spec.cell, **overrides})
    if kind == "ret1":
        ret1 = dict(share_encoder=False, pooling="none", embedding_dim=128, num_latent_tokens=32, hidden_size=1024)
        ret1.update(spec.ret1_layers)
        if spec.cell:  # the quick size: a small cell, and half its embedding width per token
            ret1.update(spec.cell, embedding_dim=spec.cell["embedding_dim"] // 2)
        return Ret2Config(**towers, **{**ret1, **overrides})
    raise ValueError(f"kind={kind!r} is not a model kind; valid: ['ret1', 'ret2'].")


def build_model(size: str, kind: str, device: torch.device, seed: int = 0, **overrides) -> Ret2Model:
    """A randomly initialised model, built directly on `device` (initialising ViT-L on the CPU takes a while)."""
    torch.manual_seed(seed)
    with torch.device(device):
        return Ret2Model(model_config(size, kind, **overrides)).eval()


class ModelCache:
    """Builds each (size, kind) model once; other dtypes are converted copies of the float32 one."""

    def __init__(self, device: torch.device):
        self.device = device
        self.models: dict[tuple[str, str, str], Ret2Model] = {}

    def get(self, size: str, kind: str, dtype: str = "fp32") -> Ret2Model:
        key = (size, kind, dtype)
        if key not in self.models:
            if dtype == "fp32":
                self.models[key] = build_model(size, kind, self.device)
            else:
                base = self.models.get((size, kind, "fp32"))
                model = copy.deepcopy(base) if base is not None else build_model(size, kind, self.device)
                self.models[key] = model.to(BENCH_DTYPES[dtype])
        return self.models[key]

    def drop(self, size: str) -> None:
        """Free every model of one size (the ViT-L models take GBs)."""
        for key in [k for k in self.models if k[0] == size]:
            del self.models[key]


def make_inputs(
    config: Ret2Config, batch_size: int, modality: str, placeholders: bool, text_lengths: tuple[int, int],
    device: torch.device, seed: int = 0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Documents as `Ret2Processor` emits them: `modality` is "text", "image" or "image+text".

    Missing text is an empty string (<bos><eos>) with `text_mask` 0, as the processor tokenises it. A missing image is
    absent (`pixel_values` omitted), or with `placeholders=True` a preprocessed black image with `vision_mask` 0 (the
    processor's `pad_missing_images=True`, the reference ReT code's input). The same seed gives the same texts and
    images whatever the placeholders, so outputs can be compared.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality={modality!r} is not supported; valid: {list(MODALITIES)}.")
    text_config, vision_config = config.text_config, config.vision_config
    generator = torch.Generator().manual_seed(seed)
    bos, eos, pad = text_config.bos_token_id, text_config.eos_token_id, text_config.pad_token_id
    low, high = text_lengths
    high = min(high, text_config.max_position_embeddings - 2)  # CLIP caps text at 77 tokens with <bos>/<eos>
    lengths = torch.randint(min(low, high), high + 1, (batch_size,), generator=generator)
    words = torch.randint(1000, min(text_config.vocab_size, 49000), (batch_size, int(lengths.max())), generator=generator)
    size = vision_config.image_size
    images = torch.randn(batch_size, 3, size, size, generator=generator)

    has_text, has_image = "text" in modality, "image" in modality
    if has_text:
        input_ids = torch.full((batch_size, int(lengths.max()) + 2), pad)  # (B, Nt)
        attention_mask = torch.zeros_like(input_ids)
        for i, n in enumerate(lengths.tolist()):
            input_ids[i, : n + 2] = torch.cat([torch.tensor([bos]), words[i, :n], torch.tensor([eos])])
            attention_mask[i, : n + 2] = 1
    else:
        input_ids = torch.tensor([[bos, eos]]).expand(batch_size, -1).clone()  # the tokenised empty string
        attention_mask = torch.ones_like(input_ids)
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        text_mask=torch.full((batch_size,), int(has_text)),
        vision_mask=torch.full((batch_size,), int(has_image)),
    )
    if has_image:
        inputs["pixel_values"] = images  # (B, 3, S, S)
    elif placeholders:
        inputs["pixel_values"] = torch.tensor(BLACK_PIXEL)[None, :, None, None].expand(batch_size, 3, size, size).clone()
    return {name: value.to(device) for name, value in inputs.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def summarise(seconds: list[float]) -> dict[str, float]:
    """Best and median time. Ratios use the best: other processes on the machine only ever add time, so the
    minimum is the least noisy estimate of what the code costs (the advice of Python's `timeit`)."""
    return {"best_s": min(seconds), "median_s": statistics.median(seconds), "seconds": seconds}


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of tensors allocated during one call of `fn`, above what was allocated before it.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: the peak of the running sum of the allocation events that
    `torch.profiler` records (every tensor allocation and free); process RSS would mix in the allocator's caching.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events() if event.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def count_flops(fn: Callable[[], object], model: torch.nn.Module) -> int:
    """FLOPs of one call (matrix products and convolutions: `FlopCounterMode` counts those). Run it with eager
    attention: the counter does not see the CPU kernels of `scaled_dot_product_attention`.

    The counter's module hooks need every tensor that requires grad to have a graph, which views of parameters made
    under `no_grad` lack: the model's parameters are frozen for the count instead."""
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad[name])
    return counter.get_total_flops()


def machine_info(device: torch.device) -> dict[str, object]:
    info = {
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
