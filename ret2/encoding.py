"""Encoding records: items read from benchmark files or an index's records (`encode_items`), encoded through the
model's one batching engine (loading a model, its fingerprint and its token limit are `ret2.model`). The on-disk
cache of pool embeddings is `ret2.cache`; the evaluation's job (options, ranks, pools and queries) is
`ret2.eval.encoder`.

Batching changes padding and matrix shapes, and with them the last bits of an embedding (about 1e-7 in fp32; after
rounding to fp16, a few components move by one fp16 step): only candidates scored within about 1e-5 of each other can
swap places with the batch size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from modeling_ret2 import encode_samples, truncate_embeddings

from .data.images import ImageLoader
from .jsonl import record_line
from .model import DTYPE_NAMES, text_limit

logger = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
SIDES = ("query", "document")


@dataclass(frozen=True)
class Item:
    """One query or candidate to encode.

    Attributes:
        id: qid / did / passage id.
        text: text to encode, or None.
        image: image path relative to the image root, or None.
        file: the file the record was read from (named in errors).
        index: 0-based position of the record in that file.
    """

    id: str
    text: str | None
    image: str | None
    file: str
    index: int

    def where(self) -> str:
        """`file:line` of a JSON-lines record, else `file (record i)`. Scans the file: call it on errors only."""
        if self.file.endswith(".jsonl"):
            return f"{self.file}:{record_line(self.file, self.index)}"
        return f"{self.file} (record {self.index})"


ItemLoader = Callable[[int, int], list[Item]]  # (start, stop) -> the items start .. stop - 1


class ItemList:
    """An `ItemLoader` over items held in memory."""

    def __init__(self, items: Sequence[Item]):
        self.items = items

    def __call__(self, start: int, stop: int) -> list[Item]:
        return list(self.items[start:stop])


# ----------------------------------------------------------------------------- batched encoding


class _ItemImages:
    """Opens the image of item `j` of a list of items, relative to the image root, with the orientation rule; errors
    name the record's file and line (`encode_samples`' `open_image`; picklable, for DataLoader workers)."""

    def __init__(self, items: Sequence[Item], image_root: str | Path, orientation: str):
        self.items, self.images = items, ImageLoader(image_root, orientation)

    def __call__(self, j: int, image: str):
        item = self.items[j]
        try:
            return self.images(image, item.id)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"{item.where()}: {err}") from err


def count_truncated(processor, texts: Sequence[str | None], max_length: int | None = None) -> int:
    """How many of `texts` are longer than the processor's token limit (`ret2.model.text_limit`, or `max_length`),
    i.e. lose their end when encoded. Tokenizes them once more, untruncated."""
    texts = [text for text in texts if text]
    if not texts:
        return 0
    limit = max_length or text_limit(processor)
    lengths = processor.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    return sum(len(ids) > limit for ids in lengths)


def encode_items(
    model: torch.nn.Module,
    processor,
    items: Sequence[Item],
    image_root: str | Path,
    side: str = "query",
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str = "encode",
    *,
    orientation: str,
    show_progress_bar: bool = True,
    truncate_dim: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """fp16 embeddings, (N, D) or (N, K, D), of items, in order, through the model's one batching engine
    (`modeling_ret2.encode_samples`: sorted by modality and length, order restored).

    `side` is "query" or "document"; `orientation` how image files are read (one of `IMAGE_ORIENTATIONS`). A record
    with neither text nor image, or a missing or unreadable image, raises an error naming the record's file and line,
    the image path and the record id. `truncate_dim`: keep that prefix of each embedding, re-normalised (checked by
    the model's config: `Ret2Config.check_truncate_dim`). `on_batch(n)`: called after each batch of n items (a
    progress bar over several calls, shown instead of this call's own when `show_progress_bar` is False).
    """
    if not items:
        raise ValueError(f"{desc}: nothing to encode")
    if side not in SIDES:
        raise ValueError(f"side {side!r} is not one of {list(SIDES)}")
    for item in items:
        if not item.text and not item.image:
            raise ValueError(f"{item.where()}: record {item.id!r} has neither text nor an image")
    if truncate_dim is not None:
        model.config.check_truncate_dim(truncate_dim)
    truncated = count_truncated(processor, [item.text for item in items])
    if truncated:
        logger.warning("%s: %d of %d texts are longer than the tokenizer's limit of %d tokens and were truncated",
                       desc, truncated, sum(bool(item.text) for item in items), text_limit(processor))  # fmt: skip
    embeddings = encode_samples(
        model.encode_queries if side == "query" else model.encode_documents, processor,
        [(item.text or None, item.image or None) for item in items], device=next(model.parameters()).device,
        batch_size=batch_size, num_workers=num_workers, open_image=_ItemImages(items, image_root, orientation),
        show_progress_bar=show_progress_bar, desc=desc, on_batch=on_batch,
    )  # fmt: skip
    return truncate_embeddings(embeddings.float(), truncate_dim).cpu().numpy().astype(np.float16)


def truncate_array(embeddings: np.ndarray, truncate_dim: int) -> np.ndarray:
    """fp16 (N, D) or (N, K, D) embeddings -> the fp16 prefixes of `truncate_dim` components, re-normalised in float32
    (`modeling_ret2.truncate_embeddings`): what `encode_items(..., truncate_dim=)` returns for the same items, from
    full embeddings already encoded (e.g. the cache's), up to the fp16 rounding of the full vectors."""
    prefix = torch.from_numpy(np.asarray(embeddings[..., :truncate_dim], dtype=np.float32))
    return truncate_embeddings(prefix, truncate_dim).numpy().astype(np.float16)
