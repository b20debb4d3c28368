"""Training-step speed and memory: frozen towers vs LoRA on the towers vs full fine-tuning, +- activation checkpointing.

One step = encode a batch of queries and their documents (image+text on both sides) in one `forward`,
`ret2.training.loss.ContrastiveLoss`, backward, AdamW step.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch

from ret2.training.loss import ContrastiveLoss

from .common import SIZES, BENCH_DTYPES, build_model, make_inputs, peak_memory_bytes, summarise, time_calls

logger = logging.getLogger("bench")

MODES = ("frozen", "lora", "full")
# LoRA on the towers' query and value projections only (the cell's attentions carry the same names and train fully).
LORA_TARGETS = r".*(text_model|vision_model)\..*\.(q_proj|v_proj)"


@dataclass(frozen=True)
class TrainCase:
    size: str
    mode: str  # "frozen" towers, "lora" on the towers (cell trained fully), "full" fine-tuning
    batch: int  # query-document pairs per step
    checkpointing: bool = False  # `model.activation_checkpointing_enable()`
    autocast: str | None = None  # "bf16": forward under torch.autocast in bfloat16 (weights and optimizer in fp32)
    modality: str = "image+text"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not valid; valid: {list(MODES)}.")


def build_trainable(case: TrainCase, device: torch.device):
    """The model in training mode with the case's trainable parameters, and those parameters."""
    frozen = case.mode != "full"
    model = build_model(case.size, "ret2", device, freeze_text_tower=frozen, freeze_vision_tower=frozen).train()
    if case.checkpointing:  # transformers < 5.2x names it gradient_checkpointing_enable
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    if case.mode == "lora":
        from ret2.training.lora import apply_lora  # imports peft, which only this mode needs

        model = apply_lora(model, r=16, alpha=32, target_modules=LORA_TARGETS)  # the cell stays fully trainable
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params


class TrainingStep:
    """One case ready to step: model, optimizer (its state allocated by a first step), batch and loss."""

    def __init__(self, case: TrainCase, device: torch.device):
        self.case, self.device = case, device
        self.model, self.params = build_trainable(case, device)
        config, lengths = self.model.config, SIZES[case.size].text_lengths
        queries = make_inputs(config, case.batch, case.modality, False, lengths, device, seed=0)
        docs = make_inputs(config, case.batch, case.modality, False, lengths, device, seed=1)
        self.batch = {**{f"query_{k}": v for k, v in queries.items()}, **{f"doc_{k}": v for k, v in docs.items()}}
        self.loss_fn = ContrastiveLoss()
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5)
        self()  # allocates AdamW's state

    def __call__(self) -> torch.Tensor:
        """One step. The gradients are freed at its end, so that between steps only weights and optimizer state are
        allocated: a step's peak memory above that is its activations, gradients and temporaries."""
        autocast = self.case.autocast
        with torch.autocast(self.device.type, dtype=BENCH_DTYPES[autocast]) if autocast else nullcontext():
            out = self.model(**self.batch)
            loss = self.loss_fn(out.query_embeds, out.doc_embeds, out.logit_scale)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def run(
    cases: list[TrainCase], device: torch.device, warmup: int, repeats: int, deadline: float | None = None
) -> list[dict]:
    """Times the cases round-robin (each round steps every case once, so a burst of load from other processes hits
    all of them). A case not started by `deadline` (a `time.monotonic()` value) is listed as skipped, and no round
    starts after it; a case that fails (peft missing, out of memory) is listed with its error."""
    rows, steps = {}, []  # rows by case, returned in the order of `cases`
    for case in cases:
        if deadline is not None and time.monotonic() > deadline:
            rows[case] = {"section": "train", **asdict(case), "skipped": "time budget"}
            continue
        try:
            step = TrainingStep(case, device)
            time_calls(step, device, warmup=max(warmup - 1, 0), repeats=0)
            steps.append(step)
        except Exception as error:
            logger.exception("train %s failed", case)
            rows[case] = {"section": "train", **asdict(case), "skipped": f"error: {error!r}"[:500]}
    seconds = [[] for _ in steps]
    for round_ in range(repeats):
        if round_ and deadline is not None and time.monotonic() > deadline:
            break
        for step, times in zip(steps, seconds):
            times += time_calls(step, device, warmup=0, repeats=1)
    for step, times in zip(steps, seconds):
        case = step.case
        row = {"section": "train", **asdict(case), "size_label": SIZES[case.size].label, **summarise(times)}
        row["samples_per_s"] = case.batch / row["best_s"]
        row["peak_mem_mb"] = peak_memory_bytes(step, device) / 2**20
        row["trainable_params_m"] = sum(p.numel() for p in step.params) / 1e6
        row["total_params_m"] = sum(p.numel() for p in step.model.parameters()) / 1e6
        rows[case] = row
        logger.info(
            "train %s %-6s ckpt=%-5s autocast=%s batch=%d: %.2f samples/s, peak %.0f MB, %.1fM trainable",
            case.size, case.mode, case.checkpointing, case.autocast, case.batch, row["samples_per_s"],
            row["peak_mem_mb"], row["trainable_params_m"],
        )  # fmt: skip
    del steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [rows[case] for case in cases]
