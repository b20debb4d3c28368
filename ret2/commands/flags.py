"""The flag groups several commands share, each defined once: the same spelling, type, choices and help everywhere
(tests/ret2/commands/test_flags.py holds every command to them).

Where the commands' documented defaults differ by design, the group takes the default from its caller and allows only
the named ones: image orientation (`stored` for benchmark data, `upright` for your own collection, docs/images.md),
chunking (none for `ret2-index build`, `auto` for the RAG knowledge base), the precision searched and its rescoring
(`fp16` and 10, or the index's own when searching an index) and the model (none, or the demo's `tiny`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ret2.options import (
    BACKENDS, BATCH_SIZE, CHUNK_SIZES, DTYPE, DTYPE_NAMES, FUSIONS, IMAGE_ORIENTATIONS, PRECISIONS, RESCORE_MULTIPLIER,
    SEARCH_MODES, SHARD_SIZE, default_num_workers,
)  # fmt: skip

ORIENTATION_HELP = {
    "stored": "how image files are read: stored (EXIF orientation not applied, as the benchmarks read images) or "
              "upright (turned by EXIF orientation; docs/images.md)",
    "upright": "how image files are read: upright (turned by EXIF orientation) or stored (as the file stores them, as "
               "the benchmarks read images; docs/images.md)",
}  # fmt: skip
CHUNK_DEFAULTS = (None, "auto")
CHUNK_OVERLAPS = (0, 16)
PRECISION_DEFAULTS = ("fp16", None)
MODEL_DEFAULTS = (None, "tiny")  # no default, or the demo's tiny random model


def add_model(parser: argparse.ArgumentParser, help: str, required: bool = False, default: str | None = None) -> None:
    """`--model`: a ReT-2 folder or Hub id (what it means for the command is its `help`)."""
    if default not in MODEL_DEFAULTS:
        raise ValueError(f"--model default {default!r} is not one of {MODEL_DEFAULTS}")
    parser.add_argument("--model", required=required, default=default, help=help)


def add_device(parser: argparse.ArgumentParser) -> None:
    """`--device`: where the model runs."""
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available; one GPU per rank under torchrun)")


def add_encoding(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """`--batch-size` and `--dtype`: how a command encodes (`dtype=False`: the command encodes in float32 only)."""
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="items per model call")
    if dtype:
        parser.add_argument("--dtype", choices=list(DTYPE_NAMES), default=DTYPE, help="model dtype while encoding")


def add_image_orientation(parser: argparse.ArgumentParser, default: str, extra_help: str = "") -> None:
    """`--image-orientation`: stored or upright; `default` is the command's documented one."""
    if default not in ORIENTATION_HELP:
        raise ValueError(f"image orientation default {default!r} is not one of {list(ORIENTATION_HELP)}")
    parser.add_argument("--image-orientation", choices=list(IMAGE_ORIENTATIONS), default=default,
                        help=ORIENTATION_HELP[default] + extra_help)  # fmt: skip


def chunk_size(text: str) -> int | str | None:
    """The type of `--chunk-size`: a positive number of tokens, `auto` (the tokenizer's limit) or `none` (no chunks)."""
    if text.lower() in CHUNK_SIZES:
        return None if text.lower() == "none" else "auto"
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--chunk-size must be a positive integer, auto or none, got {text!r}")
    return int(text)


def add_chunking(parser: argparse.ArgumentParser, default: int | str | None, overlap: int, what: str = "texts") -> None:
    """`--chunk-size` (a number, auto or none) and `--chunk-overlap`; the defaults are the command's documented ones."""
    if default not in CHUNK_DEFAULTS or overlap not in CHUNK_OVERLAPS:
        raise ValueError(f"chunking defaults {default!r} / {overlap!r} are not among {CHUNK_DEFAULTS} / {CHUNK_OVERLAPS}")
    shown = "none" if default is None else default
    parser.add_argument("--chunk-size", type=chunk_size, default=default,
                        help=f"split {what} longer than this many tokens into chunks, each retrieved with its "
                             "document by the best chunk; auto: the tokenizer's limit; none: no chunks, longer texts "
                             f"are truncated (default: {shown})")  # fmt: skip
    parser.add_argument("--chunk-overlap", type=int, default=overlap, help="tokens shared by consecutive chunks")


RESCORE_HELP = "candidates rescored from the fp16 vectors per result, of int8 / binary codes and IVF-PQ (0: no rescoring)"


def add_precision(
    parser: argparse.ArgumentParser, default: str | None = "fp16", what: str = "", rescore: bool = True
) -> None:
    """`--precision` and `--rescore-multiplier`: what a search scans (`default=None`: the index's own; `rescore=False`:
    the command adds `--rescore-multiplier` itself with `add_rescore`, or takes none, as `ret2-index build`)."""
    if default not in PRECISION_DEFAULTS:
        raise ValueError(f"precision default {default!r} is not one of {PRECISION_DEFAULTS}")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=default,
                        help="what search scans: fp16 (exact), int8 (1 byte a dimension) or binary (1 bit), whose best "
                             "candidates are rescored from the fp16 vectors" + what)  # fmt: skip
    if rescore:
        add_rescore(parser)


def add_rescore(parser: argparse.ArgumentParser, default: int | None = RESCORE_MULTIPLIER, what: str = "") -> None:
    """`--rescore-multiplier` (`default=None`: the engine's own, `what` says which)."""
    if default not in (RESCORE_MULTIPLIER, None):
        raise ValueError(f"rescore multiplier default {default!r} is not {RESCORE_MULTIPLIER} or None")
    parser.add_argument("--rescore-multiplier", type=int, default=default, help=RESCORE_HELP + what)


def json_filter(text: str) -> dict:
    """The type of `--filter`: JSON text (the filter itself is checked by the index, which names a bad part)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--filter is not JSON ({err.msg} at character {err.pos}): {text!r}") from err


def add_search_modes(parser: argparse.ArgumentParser) -> None:
    """`--filter`, `--mode`, `--fusion` and `--weights`: which documents an index search may return and what ranks
    them (the `filter`, `mode`, `fusion` and `weights` of `Ret2Index.search`)."""
    parser.add_argument("--filter", type=json_filter,
                        help='a metadata filter, JSON: \'{"album": "trip", "year": {"$gte": 2020}}\' (operators: $eq $ne '
                             "$gt $gte $lt $lte $in $nin $exists $and $or $not; docs/your-collection.md)")  # fmt: skip
    parser.add_argument("--mode", choices=list(SEARCH_MODES), default="vector",
                        help="vector (the embeddings), keyword (BM25 over the texts) or hybrid (both, fused)")
    parser.add_argument("--fusion", choices=list(FUSIONS), default="rrf",
                        help="hybrid: reciprocal-rank fusion or weighted scores (--weights)")
    parser.add_argument("--weights", type=float, nargs=2, default=(0.5, 0.5), metavar=("VECTOR", "KEYWORD"),
                        help="hybrid with --fusion weighted: the weights of the vector and the keyword ranking")


def add_evaluation(parser: argparse.ArgumentParser, data_root_help: str) -> None:
    """The flags every evaluation command starts with: `--model`, `--data-root`, `--output-dir`."""
    add_model(parser, help="saved ReT-2 folder or hub id (loaded with trust_remote_code)", required=True)
    parser.add_argument("--data-root", required=True, type=Path, help=data_root_help)
    parser.add_argument("--output-dir", required=True, type=Path, help="where TREC runs, results.json and .md go")


def add_encode_options(parser: argparse.ArgumentParser) -> None:
    """The flags of `ret2.eval.encoder.EncodeOptions` (`--batch-size`, ..., `--truncate-dim`); `encode_options` reads
    them back."""
    parser.add_argument("--cache-dir", type=Path, help="embedding cache (default: OUTPUT_DIR/cache)")
    add_encoding(parser)
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="items per cache shard (the resume unit)")
    parser.add_argument("--num-workers", type=int, default=default_num_workers(), help="DataLoader workers loading images")
    add_device(parser)
    parser.add_argument("--search-backend", choices=list(BACKENDS), default="auto",
                        help="auto: torch (the faster on every size measured, docs/benchmarks.md)")
    add_precision(parser)
    add_image_orientation(parser, default="stored")
    parser.add_argument("--truncate-dim", type=int,
                        help="search with this prefix of every embedding, re-normalised (Matryoshka sizes; default: the "
                             "full embedding)")  # fmt: skip


def encode_options(args: argparse.Namespace):
    """The `ret2.eval.encoder.EncodeOptions` of the flags `add_encode_options` added."""
    from dataclasses import fields

    from ret2.eval.encoder import EncodeOptions

    return EncodeOptions(**{f.name: getattr(args, f.name) for f in fields(EncodeOptions)})
