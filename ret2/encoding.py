"""Encoding records: load a saved model (`load_model_and_processor`, refusing a mistyped folder at once), fingerprint
its files (`model_fingerprint`), and encode items read from benchmark files or an index's records (`encode_items`)
through the model's one batching engine. The on-disk cache of pool embeddings is `ret2.cache`; the evaluation's job
(options, ranks, pools and queries) is `ret2.eval.encoder`.

Batching changes padding and matrix shapes, and with them the last bits of an embedding (about 1e-7 in fp32; after
rounding to fp16, a few components move by one fp16 step): only candidates scored within about 1e-5 of each other can
swap places with the batch size.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoProcessor
from transformers.utils import cached_file

from modeling_ret2 import encode_samples, truncate_embeddings

from .data.images import ImageLoader
from .jsonl import record_line

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIDES = ("query", "document")
# Files of a model folder that can change its embeddings: config, weights, tokenizer / processor files, remote code.
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".py")


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


# ----------------------------------------------------------------------------- model


def load_model_and_processor(
    name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> tuple[torch.nn.Module, object]:  # fmt: skip
    """A saved ReT-2 model (hub id or folder, through `AutoModel` with `trust_remote_code=True`) on `device` in
    eval mode, and its processor; `revision`: the Hub revision (None: the default branch)."""
    check_model_source(name_or_path)
    model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype, revision=revision)
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True, revision=revision)
    return model.to(device).eval(), processor


def check_model_source(name_or_path: str | os.PathLike) -> None:
    """Fail at once, naming the path, when `name_or_path` is no existing folder yet cannot be a Hub id either: an
    absolute path, one starting with `.` or `~`, one with more than one `/`, or one whose first folder exists here
    (`runs/tinyy` beside `runs/`). Without this a mistyped folder is tried on the Hub, which takes its time to fail
    and then blames the network."""
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return
    parts = name.replace("\\", "/").split("/")
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or len(parts) > 2 or os.path.isdir(parts[0])
    if len(parts) == 1 or not looks_local:
        return  # `name` or `org/name`: a Hub id
    if os.path.exists(name):
        raise NotADirectoryError(f"model {name!r} is a file; give the folder that holds config.json")
    parent = os.path.dirname(os.path.abspath(os.path.expanduser(name)))
    siblings = [e.name for e in os.scandir(parent) if e.is_dir()] if os.path.isdir(parent) else []
    close = difflib.get_close_matches(os.path.basename(name.rstrip("/")), siblings, n=1)
    hint = f"; did you mean {os.path.join(os.path.dirname(name), close[0])!r}?" if close else ""
    raise FileNotFoundError(f"model folder {name!r} does not exist ({os.path.abspath(os.path.expanduser(name))}){hint}")


def model_fingerprint(name_or_path: str) -> str:
    """sha256 of the files of a model folder that can change its embeddings (config, weights, tokenizer and
    processor files, remote code), by name and content. A hub id is resolved to its downloaded snapshot. Content,
    not mtimes: a folder retrained in place gets a new fingerprint, a copied one keeps it (about 1 s per GB)."""
    check_model_source(name_or_path)
    folder = Path(name_or_path) if os.path.isdir(name_or_path) else Path(cached_file(name_or_path, "config.json")).parent
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _MODEL_FILE_SUFFIXES:
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as f:
                while block := f.read(1 << 23):
                    digest.update(block)
    return digest.hexdigest()


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


def text_limit(processor, max_length: int | None = None) -> int:
    """The token limit the processor truncates texts to (`Ret2Processor`: `max_length`, else the tokenizer's
    `model_max_length`, at most 4096)."""
    return max_length or min(processor.tokenizer.model_max_length, 4096)


def count_truncated(processor, texts: Sequence[str | None], max_length: int | None = None) -> int:
    """How many of `texts` are longer than the processor's token limit (`text_limit`), i.e. lose their end when
    encoded. Tokenizes them once more, untruncated."""
    texts = [text for text in texts if text]
    if not texts:
        return 0
    limit = text_limit(processor, max_length)
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
) -> np.ndarray:
    """fp16 embeddings, (N, D) or (N, K, D), of items, in order, through the model's one batching engine
    (`modeling_ret2.encode_samples`: sorted by modality and length, order restored).

    `side` is "query" or "document"; `orientation` how image files are read (one of `IMAGE_ORIENTATIONS`). A record
    with neither text nor image, or a missing or unreadable image, raises an error naming the record's file and line,
    the image path and the record id. `truncate_dim`: keep that prefix of each embedding, re-normalised (checked by
    the model's config: `Ret2Config.check_truncate_dim`).
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
        show_progress_bar=show_progress_bar, desc=desc,
    )  # fmt: skip
    return truncate_embeddings(embeddings.float(), truncate_dim).cpu().numpy().astype(np.float16)


def truncate_array(embeddings: np.ndarray, truncate_dim: int) -> np.ndarray:
    """fp16 (N, D) or (N, K, D) embeddings -> the fp16 prefixes of `truncate_dim` components, re-normalised in float32
    (`modeling_ret2.truncate_embeddings`): what `encode_items(..., truncate_dim=)` returns for the same items, from
    full embeddings already encoded (e.g. the cache's), up to the fp16 rounding of the full vectors."""
    prefix = torch.from_numpy(np.asarray(embeddings[..., :truncate_dim], dtype=np.float32))
    return truncate_embeddings(prefix, truncate_dim).numpy().astype(np.float16)
