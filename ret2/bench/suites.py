"""The benchmark suites: which cases each section runs, at which sizes and batch sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

from .encode import EncodeCase
from .train import TrainCase


@dataclass
class Suite:
    """Phases run in order, each `(section, work)`: "encode" and "train" take a list of cases, "index" the kwargs of
    `ret2.bench.index.run`. A time budget drops the work left at the end, so what matters most comes first."""

    description: str
    phases: list[tuple[str, object]] = field(default_factory=list)
    warmup: int = 1
    repeats: int = 3
    train_repeats: int = 2
    # torch CPU threads (None: torch's default). The CPU suite uses 1: on a shared 2-core machine, two threads slow
    # down 2-4x whenever another process takes a core (each parallel region waits for the preempted thread), while
    # one thread stays within a few percent.
    threads: int | None = None


def _encode_matrix(size: str, batch: int, dtype: str = "fp32", modalities=("text", "image", "image+text")) -> list:
    """Every model on every kind of document, towers skipped where a modality is missing, plus the placeholder
    path (skipping off) for the documents that miss one, and the reference ReT-1 code."""
    cases = []
    for variant in ("backbone", "ret2", "ret1"):
        for modality in modalities:
            flops = modality == "image+text"
            cases.append(EncodeCase(size, variant, modality, batch, dtype=dtype, flops=flops))
            if variant != "backbone" and modality != "image+text":
                cases.append(EncodeCase(size, variant, modality, batch, skip=False, dtype=dtype))
    cases += [EncodeCase(size, "reference", modality, batch, skip=False, dtype=dtype) for modality in modalities]
    return cases


def _train_matrix(size: str, batch: int, autocast: str | None = None) -> list[TrainCase]:
    return [
        TrainCase(size, mode, batch, checkpointing=checkpointing, autocast=autocast)
        for mode in ("frozen", "lora", "full")
        for checkpointing in (False, True)
    ]


def cpu_suite() -> Suite:
    encode = _encode_matrix("b32", batch=8)
    encode += [EncodeCase("b32", v, "image+text", 8, attn="eager") for v in ("backbone", "ret2", "ret1")]
    encode += [EncodeCase("b32", v, "image+text", 8, dtype="bf16") for v in ("backbone", "ret2", "ret1")]
    encode += [EncodeCase("l14", v, m, 2, flops=m == "image+text") for v in ("backbone", "ret2") for m in
               ("text", "image", "image+text")]  # fmt: skip
    encode += [EncodeCase("l14", "ret1", "image+text", 2), EncodeCase("l14", "reference", "image+text", 2, skip=False)]
    return Suite(
        "CPU: ViT-B/32 and ViT-L/14 (224 px) encode, 100k-document index, ViT-B/32 training steps (batch 8)",
        phases=[
            ("encode", encode),
            # 32 queries: faiss switches from its per-query loop to BLAS from 20 queries on
            ("index", dict(num_docs=100_000, num_queries=32)),
            ("train", _train_matrix("b32", batch=8)),
        ],
        repeats=4,
        threads=1,
    )


def quick_suite() -> Suite:
    encode = _encode_matrix("tiny", batch=4)
    encode += [EncodeCase("tiny", v, "image+text", 4, attn="eager") for v in ("backbone", "ret2", "ret1")]
    encode += [EncodeCase("tiny", v, "image+text", 4, dtype="bf16") for v in ("backbone", "ret2")]
    return Suite(
        "quick: tiny random models, seconds (checks that everything runs, numbers mean nothing)",
        phases=[
            ("encode", encode),
            ("index", dict(num_docs=2_000, num_queries=4, multi_docs=1_000)),
            ("train", _train_matrix("tiny", batch=4) + [TrainCase("tiny", "full", 4, autocast="bf16")]),
        ],
        warmup=1,
        repeats=1,
        train_repeats=1,
        threads=1,
    )


def gpu_suite() -> Suite:
    # The two numbers asked for come first (the time guard drops cases from the end): ViT-L/14 at 336 px, bf16,
    # image+text documents against the backbone floor; then training at ViT-B/32, bf16 autocast, frozen vs full.
    encode = [EncodeCase("l14-336", v, "image+text", 256, dtype="bf16", flops=True) for v in ("backbone", "ret2")]
    train = [TrainCase("b32", mode, 128, autocast="bf16") for mode in ("frozen", "full")]
    extra_encode = [
        EncodeCase("l14-336", "ret1", "image+text", 256, dtype="bf16"),
        EncodeCase("l14-336", "reference", "image+text", 256, skip=False, dtype="bf16"),
        EncodeCase("b32", "backbone", "image+text", 256, dtype="bf16"),
        EncodeCase("b32", "ret2", "image+text", 256, dtype="bf16"),
        EncodeCase("b32", "ret2", "text", 256, dtype="bf16"),
        EncodeCase("b32", "ret2", "text", 256, skip=False, dtype="bf16"),
    ]
    extra_train = [
        TrainCase("b32", "lora", 128, autocast="bf16"),
        TrainCase("b32", "full", 128, checkpointing=True, autocast="bf16"),
    ]
    return Suite(
        "GPU: ViT-L/14@336 bf16 encode (batch 256) vs the backbone floor; ViT-B/32 bf16-autocast training (batch 128)",
        phases=[
            ("encode", encode),
            ("train", train),
            ("encode", extra_encode),
            ("train", extra_train),
            ("index", dict(num_docs=100_000, num_queries=256)),
        ],
        warmup=2,
        repeats=5,
        train_repeats=5,
    )


SUITES = {"cpu": cpu_suite, "quick": quick_suite, "gpu": gpu_suite}
