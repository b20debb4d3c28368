"""The evaluation's encoding job: how it encodes (`EncodeOptions`, the commands' flags) and `Encoder`, which joins the
distributed job, loads the model on this rank's device, fills the embedding cache with this rank's shards of every
pool (`ret2.cache`) and encodes queries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ret2.cache import SHARD_SIZE, Embeddings, Pool, cache_folder, encode_pool, load_pool
from ret2.data.images import check_orientation
from ret2.distributed import Dist, barrier, default_num_workers, init_distributed
from ret2.encoding import DTYPES, Item, encode_items, truncate_array
from ret2.model import load_model_and_processor, model_fingerprint
from ret2.options import BATCH_SIZE, DTYPE
from ret2.search import BACKENDS, RESCORE_MULTIPLIER, check_precision


@dataclass
class EncodeOptions:
    """How the evaluation (and indexing) commands encode: batching, device, dtype, the embedding cache and search.

    Attributes:
        batch_size: items per model call.
        num_workers: DataLoader workers opening images and running the processor.
        device: "cuda", "cpu", ... (None: CUDA when available); under torchrun each rank takes its own GPU.
        dtype: "float32", "bfloat16" or "float16".
        cache_dir: where pool embeddings are cached (None: `<output dir>/cache`).
        shard_size: items per cache shard, the unit of resuming and of the split between ranks.
        search_backend: "auto" (torch, the faster measured), "faiss" or "torch".
        precision: what the search scans, one of `ret2.search.PRECISIONS`: "fp16" (exact), "int8" or "binary" (codes
            calibrated on each searched pool, their best candidates rescored from the fp16 vectors).
        rescore_multiplier: int8 / binary: candidates rescored per result (0: the codes' own ranking).
        image_orientation: how image files are read, one of `IMAGE_ORIENTATIONS` (docs/images.md): "stored" (EXIF
            orientation not applied), the M-BEIR / M2KR protocol, or "upright" (EXIF applied). Part of the cache key.
        truncate_dim: search with the first `truncate_dim` components of every embedding, re-normalised (Matryoshka
            sizes); None: the full embedding. The cache holds full embeddings, truncated as they are loaded, so every
            size reuses one encoding of the pools.
    """

    batch_size: int = BATCH_SIZE
    num_workers: int = default_num_workers()
    device: str | None = None
    dtype: str = DTYPE
    cache_dir: Path | None = None
    shard_size: int = SHARD_SIZE
    search_backend: str = "auto"
    image_orientation: str = "stored"
    precision: str = "fp16"
    rescore_multiplier: int = RESCORE_MULTIPLIER
    truncate_dim: int | None = None

    def __post_init__(self):
        for name in ("batch_size", "shard_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {list(DTYPES)}")
        if self.search_backend not in BACKENDS:
            raise ValueError(f"search_backend {self.search_backend!r} is not one of {list(BACKENDS)}")
        check_orientation(self.image_orientation)
        check_precision(self.precision, self.rescore_multiplier)
        if self.truncate_dim is not None and (not isinstance(self.truncate_dim, int) or self.truncate_dim < 1):
            raise ValueError(f"truncate_dim must be a positive integer or None, got {self.truncate_dim!r}")


@dataclass
class Encoder:
    """What the evaluation commands encode with: the job layout, the model and processor, and the options."""

    job: Dist
    device: torch.device
    model: torch.nn.Module
    processor: object
    options: EncodeOptions
    fingerprint: str

    @classmethod
    def create(
        cls, model: str | Path, options: EncodeOptions, loaded: tuple[torch.nn.Module, object] | None = None
    ) -> Encoder:
        """Join the distributed job (if any) and load `model` (folder or hub id) on this rank's device.

        `loaded`: an in-memory (model, processor) pair to use instead of loading `model`, whose files still key the
        cache (e.g. a baseline that is not a ReT-2 model)."""
        if options.cache_dir is None:
            raise ValueError("EncodeOptions.cache_dir must be set")
        job, device = init_distributed(options.device)
        dtype = DTYPES[options.dtype]
        if loaded is None:
            net, processor = load_model_and_processor(str(model), device, dtype)
        else:
            net, processor = loaded[0].to(device=device, dtype=dtype).eval(), loaded[1]
        net.config.check_truncate_dim(options.truncate_dim)
        return cls(job, device, net, processor, options, model_fingerprint(str(model)))

    def pools(self, pools: Sequence[Pool], image_root: str | Path) -> dict[str, Embeddings] | None:
        """Encode every pool into the cache (each rank its shards), wait for all ranks, then on rank 0 return the
        embeddings by pool name; None on the other ranks, which have nothing left to do."""
        options = self.options
        folders = {}
        for pool in pools:
            folders[pool.name] = cache_folder(
                options.cache_dir, pool, self.fingerprint, DTYPES[options.dtype], options.shard_size,
                orientation=options.image_orientation,
            )  # fmt: skip
            encode_pool(self.model, self.processor, pool, folders[pool.name], image_root, options.batch_size,
                        options.shard_size, options.num_workers, self.job.rank, self.job.world_size,
                        orientation=options.image_orientation)  # fmt: skip
        barrier(self.job)
        if not self.job.is_main:
            return None
        loaded = {pool.name: load_pool(pool, folders[pool.name], options.shard_size) for pool in pools}
        if options.truncate_dim is None:
            return loaded
        return {name: Embeddings(pool.ids, [truncate_array(shard, options.truncate_dim) for shard in pool.shards])
                for name, pool in loaded.items()}  # fmt: skip

    def queries(self, items: Sequence[Item], image_root: str | Path, desc: str) -> np.ndarray:
        return encode_items(self.model, self.processor, items, image_root, "query", self.options.batch_size,
                            self.options.num_workers, desc, orientation=self.options.image_orientation,
                            truncate_dim=self.options.truncate_dim)  # fmt: skip
