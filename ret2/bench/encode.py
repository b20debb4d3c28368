"""Encoding speed and memory: backbone towers alone (the floor), ReT-2, ReT-1 mode, and the reference ReT-1 code."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch

from .common import (
    SIZES,
    ModelCache,
    count_flops,
    make_inputs,
    peak_memory_bytes,
    summarise,
    time_calls,
)
from .reference_ret1 import ReferenceRet1

logger = logging.getLogger("bench")

VARIANTS = ("backbone", "ret2", "ret1", "reference")


@dataclass(frozen=True)
class EncodeCase:
    """One row of the encode table.

    variant: "backbone" (the towers alone with `output_hidden_states=True`: the floor), "ret2" (default config),
    "ret1" (ReT-1 mode), "reference" (`ret2.bench.reference_ret1`, weights of the ReT-1-mode model).
    skip: `config.skip_missing_modalities`; False feeds placeholders (black image / empty text) for what is missing,
    as the reference code always does.
    """

    size: str
    variant: str
    modality: str  # "text", "image" or "image+text" documents
    batch: int
    skip: bool = True
    attn: str = "sdpa"
    dtype: str = "fp32"
    flops: bool = False  # also count the FLOPs of one batch (one extra call, eager attention)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not valid; valid: {list(VARIANTS)}.")
        if self.variant == "reference" and (self.skip or self.flops):
            raise ValueError("The reference code never skips a tower (give it skip=False); its FLOPs are not counted.")

    @property
    def placeholders(self) -> bool:
        return not self.skip


class PreparedCase:
    """A case ready to time: its model (shared with other cases of the same size), its inputs, and the call."""

    def __init__(self, case: EncodeCase, cache: ModelCache, device: torch.device):
        self.case = case
        kind = "ret1" if case.variant in ("ret1", "reference") else "ret2"
        self.model = model = cache.get(case.size, kind, case.dtype)
        inputs = make_inputs(
            model.config, case.batch, case.modality, case.placeholders, SIZES[case.size].text_lengths, device
        )
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        if case.variant == "backbone":
            towers = []
            if "text" in case.modality:
                towers.append((model.text_model, {k: inputs[k] for k in ("input_ids", "attention_mask")}))
            if "image" in case.modality:
                towers.append((model.vision_model, {"pixel_values": inputs["pixel_values"]}))
            self.fn = lambda: [tower(**kw, output_hidden_states=True).hidden_states for tower, kw in towers]
        elif case.variant == "reference":
            reference = ReferenceRet1.from_ret2(model, side="documents")
            self.fn = lambda: reference(**inputs)
        else:
            self.fn = lambda: model.encode_documents(**inputs)

    def activate(self) -> None:
        """Put the shared model in this case's settings (outside the timed calls)."""
        self.model.set_attn_implementation(self.case.attn)
        self.model.config.skip_missing_modalities = self.case.skip

    def __call__(self):
        return self.fn()


def run(
    cases: list[EncodeCase], device: torch.device, warmup: int, repeats: int, deadline: float | None = None
) -> tuple[list[dict], list[dict]]:
    """Times the cases size by size, round-robin: each round calls every case of the size once, so a burst of load
    from other processes hits all the cases compared rather than one. A size's models are freed before the next.

    Returns the rows and the equality checks (skipping vs placeholders, ReT-1 mode vs the reference, on the same
    documents). A size not started by `deadline` (a `time.monotonic()` value) is listed as skipped; a size under way
    stops adding rounds after the first."""
    cache = ModelCache(device)
    rows, outputs = [], {}
    for size in dict.fromkeys(case.size for case in cases):
        size_cases = [c for c in cases if c.size == size]
        if deadline is not None and time.monotonic() > deadline:
            rows += [{"section": "encode", **asdict(c), "skipped": "time budget"} for c in size_cases]
            continue
        try:
            rows += _run_size(size_cases, cache, device, warmup, repeats, deadline, outputs)
        except Exception as error:  # e.g. out of memory: keep the other sizes' numbers
            logger.exception("encode %s failed", size)
            rows += [{"section": "encode", **asdict(c), "skipped": f"error: {error!r}"[:500]} for c in size_cases]
        cache.drop(size)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, equality_checks(outputs)


def _run_size(cases, cache, device, warmup, repeats, deadline, outputs) -> list[dict]:
    """Rows of the cases of one size; stores each case's first output in `outputs`."""
    prepared = [PreparedCase(case, cache, device) for case in cases]
    seconds = [[] for _ in prepared]
    with torch.inference_mode():
        for p in prepared:  # warm-up; the first output feeds the equality checks
            p.activate()
            output = p()
            time_calls(p, device, warmup=max(warmup - 1, 0), repeats=0)
            if p.case.variant != "backbone":
                c = p.case
                outputs[(c.size, c.variant, c.modality, c.skip, c.attn, c.dtype)] = output.float()
        for round_ in range(repeats):
            if round_ and deadline is not None and time.monotonic() > deadline:
                break
            for p, times in zip(prepared, seconds):
                p.activate()
                times += time_calls(p, device, warmup=0, repeats=1)
        memory = []
        for p in prepared:
            p.activate()
            memory.append(peak_memory_bytes(p, device))
    rows = []
    for p, times, peak in zip(prepared, seconds, memory):
        case = p.case
        row = {"section": "encode", **asdict(case), "size_label": SIZES[case.size].label, **summarise(times)}
        row["items_per_s"] = case.batch / row["best_s"]
        row["peak_mem_mb"] = peak / 2**20
        if case.flops:
            p.model.set_attn_implementation("eager")
            row["gflop_per_item"] = count_flops(p, p.model) / case.batch / 1e9
        rows.append(row)
        logger.info(
            "encode %-8s %-9s %-10s skip=%-5s %-5s %s batch=%d: %.2f items/s, peak %.1f MB",
            case.size, case.variant, case.modality, case.skip, case.attn, case.dtype, case.batch, row["items_per_s"],
            row["peak_mem_mb"],
        )  # fmt: skip
    return rows


def equality_checks(outputs: dict[tuple, torch.Tensor]) -> list[dict]:
    """Max |difference| of the embeddings of the same documents: towers skipped vs placeholders (same model), and
    ReT-1 mode vs the reference code; each pair at the same attention and dtype."""
    checks = []
    for (size, variant, modality, skip, attn, dtype), output in outputs.items():
        pairs = []
        if variant in ("ret2", "ret1") and skip:
            pairs.append(("skip_vs_placeholder", (size, variant, modality, False, attn, dtype)))
        if variant == "ret1" and skip:
            pairs.append(("ret1_vs_reference", (size, "reference", modality, False, attn, dtype)))
        for check, other in pairs:
            if other in outputs:
                diff = (output - outputs[other]).abs().max().item()
                checks.append({"check": check, "size": size, "variant": variant, "modality": modality, "attn": attn,
                               "dtype": dtype, "max_abs_diff": diff})  # fmt: skip
    return checks
