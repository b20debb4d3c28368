"""Collator for contrastive training: examples of `ret2.training.dataset` -> the model's `query_*` / `doc_*` inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping, Sequence

import torch
from transformers import ProcessorMixin

from ret2.data.images import ImageLoader
from ret2.encoding import count_truncated


MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "text_mask", "vision_mask")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `query_*` / `doc_*` model inputs of a collated batch (what `Ret2Model.forward` takes), without the ids."""
    return {name: value for name, value in batch.items()
            if name.startswith(("query_", "doc_")) and name.partition("_")[2] in MODEL_INPUTS}  # fmt: skip


def stable_id(did: str) -> int:
    """A 64-bit integer id of a did string, the same in every process and run (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(did.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class ContrastiveCollator:
    """Turns training examples into one batch of model inputs.

    Each example is ``{"query": item, "doc": item, "negatives": [item, ...]}`` with items ``{"id", "text",
    "img_path"}`` (see `ret2.training.dataset`). Images are opened here, lazily, relative to `image_root`; a path that leaves
    the root is refused.

    The batch holds, for the prefixes ``query_`` and ``doc_``, the processor's ``input_ids, attention_mask,
    pixel_values`` (only when that side has an image), ``text_mask, vision_mask``, plus ``doc_ids`` (B,) and, with
    hard negatives, ``neg_doc_ids`` (B * num_hard_negatives,): int64 `stable_id`s of the dids, so that copies of a
    document are recognised across ranks. The ``doc_`` inputs hold the B positives followed by the hard negatives
    (one processor call, so one forward encodes them all), grouped by query: negative rows ``B + i * n ... B + i * n
    + n - 1`` belong to query i. With ``num_positives`` P > 1, the examples' ``P - 1`` extra positives follow the
    hard negatives (``B * (1 + n) + i * (P - 1)`` onwards for query i; their ids are in ``neg_doc_ids`` too) and
    ``positive_ids`` (B, M) holds the ids of every positive of each query, a row padded by repeating its first id.
    ``truncated_texts`` (a 0-d tensor) counts the batch's texts longer than the token limit (cut to fit; the
    Trainer logs the running total). There is no ``labels`` key (the Trainer treats one specially).

    Args:
        processor: a `Ret2Processor` (tokenizer and image processor).
        image_root: the directory image paths are relative to (the dataset root for M-BEIR).
        num_hard_negatives: negatives expected in every example (0: none, and no ``neg_doc_ids``).
        max_length: truncation length of the texts (default: the tokenizer's).
        image_orientation: how image files are read, one of `IMAGE_ORIENTATIONS` (docs/images.md); default "stored",
            as the M-BEIR / M2KR benchmarks read them.
        num_positives: positives expected in every example (1: only ``doc``; more: ``doc`` and ``positives``).
    """

    def __init__(
        self,
        processor: ProcessorMixin,
        image_root: str | Path,
        num_hard_negatives: int = 0,
        max_length: int | None = None,
        image_orientation: str = "stored",
        num_positives: int = 1,
    ):
        if not isinstance(num_hard_negatives, int) or num_hard_negatives < 0:
            raise ValueError(f"num_hard_negatives must be an integer >= 0, got {num_hard_negatives!r}")
        if isinstance(num_positives, bool) or not isinstance(num_positives, int) or num_positives < 1:
            raise ValueError(f"num_positives must be an integer >= 1, got {num_positives!r}")
        self.num_positives = num_positives
        self.processor = processor
        self.images = ImageLoader(image_root, image_orientation)
        self.num_hard_negatives = num_hard_negatives
        self.max_length = max_length

    def _encode(self, prefix: str, items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        texts = [item["text"] or None for item in items]
        images = [self.images(item["img_path"], item["id"]) if item["img_path"] else None for item in items]
        inputs = self.processor(text=texts, images=images, return_tensors="pt", max_length=self.max_length)
        return {f"{prefix}{key}": value for key, value in inputs.items()}

    def __call__(self, examples: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        docs = [example["doc"] for example in examples]
        negatives = []
        if self.num_hard_negatives:
            counts = [len(example.get("negatives", ())) for example in examples]
            if any(count != self.num_hard_negatives for count in counts):
                raise ValueError(
                    f"expected {self.num_hard_negatives} negatives per example (num_hard_negatives), got {counts}"
                )
            negatives = [negative for example in examples for negative in example["negatives"]]
        if self.num_positives > 1:
            counts = [len(example.get("positives", ())) for example in examples]
            if any(count != self.num_positives - 1 for count in counts):
                raise ValueError(f"expected {self.num_positives - 1} extra positives per example (num_positives), "
                                 f"got {counts}")  # fmt: skip
            negatives += [positive for example in examples for positive in example["positives"]]
        queries = [example["query"] for example in examples]
        batch = {**self._encode("query_", queries), **self._encode("doc_", docs + negatives)}
        batch["doc_ids"] = torch.tensor([stable_id(doc["id"]) for doc in docs], dtype=torch.int64)
        if negatives:
            batch["neg_doc_ids"] = torch.tensor([stable_id(n["id"]) for n in negatives], dtype=torch.int64)
        if self.num_positives > 1:
            ids = [[stable_id(did) for did in example["positive_ids"]] for example in examples]
            width = max(map(len, ids))
            batch["positive_ids"] = torch.tensor([row + row[:1] * (width - len(row)) for row in ids], dtype=torch.int64)
        texts = [item["text"] for item in (*queries, *docs, *negatives)]
        batch["truncated_texts"] = torch.tensor(count_truncated(self.processor, texts, self.max_length))
        return batch
