"""The named choices and defaults the library takes and every command offers, importable without torch: a command's
`--help` lists them without loading the model code (the modules that use them import them from here).

`IMAGE_ORIENTATIONS` is also spelled in the remote code (`modeling_ret2.processing_ret2`), which imports nothing of
`ret2`; tests/ret2/commands/test_flags.py keeps the two equal.
"""

from __future__ import annotations

import os

DTYPE_NAMES = ("float32", "bfloat16", "float16")  # the model dtypes every command takes (`--dtype`)
DTYPE = "float32"  # the default one
BATCH_SIZE = 64  # items per model call, for everything that encodes
# "stored": pixels as the file stores them (EXIF orientation not applied), as the benchmarks read images;
# "upright": turned by the file's EXIF orientation, as a photo viewer shows it (docs/images.md)
IMAGE_ORIENTATIONS = ("stored", "upright")
BACKENDS = ("auto", "faiss", "torch")  # exact search: auto is torch, the faster on every size measured
PRECISIONS = ("fp16", "int8", "binary")  # what the scan reads: the stored vectors, int8 codes or sign bits
RESCORE_MULTIPLIER = 10  # quantized search rescores the best rescore_multiplier * k candidates from the fp16 vectors:
# binary codes need 10 to keep 0.98 of fp16 quality (docs/benchmarks.md#quality-retained-trained-models-3-seeds)
SHARD_SIZE = 10_000  # items per cache shard: the unit of resuming and of the split between ranks
TRAINING_FORMATS = ("mbeir", "m2kr")  # the training data formats (`ret2-train --format`, `ret2-mine --format`)
CHUNK_SIZES = ("auto", "none")  # besides a number of tokens: the tokenizer's limit, or no chunks (truncate)
SEARCH_MODES = ("vector", "keyword", "hybrid")  # what an index search ranks by: embeddings, BM25 over texts, both fused
RECIPE_FILE = "recipe.json"  # in a training output folder: the `ret2-train --recipe` it ran and the values it used
FUSIONS = ("rrf", "weighted")  # how a hybrid search fuses its two rankings (ret2.index.hybrid)


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one (as PyTorch's DataLoader counts
    them), else every core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_num_workers() -> int:
    """DataLoader workers by default: 4, or one per available core on a smaller machine (more workers than cores
    only make PyTorch warn and the workers compete with the model for the cores)."""
    return min(4, available_cores())
