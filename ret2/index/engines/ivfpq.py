"""FAISS IVF-PQ: `nlist` k-means cells of product-quantized codes, `nprobe` cells visited per query, the best
`rescore_multiplier * k` candidates rescored from the fp16 vectors (`ret2.search.build_ivfpq` / `search_quantized`):
the engine that meets the approximate goal at 1M documents (docs/benchmarks.md), at a fraction of fp16's memory."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ret2.search import RESCORE_MULTIPLIER, build_ivfpq, search_quantized, unit_rows

from .hnsw import APPROXIMATE_FILE, APPROXIMATE_STEM

NPROBE = 8  # cells visited per query by default: recall@10 0.989 at 1M clustered documents (docs/benchmarks.md)


def default_nlist(rows: int) -> int:
    """Cells: the power of two nearest sqrt(rows) (1024 at 1M), at most rows / 39 (FAISS' k-means wants 39 points a
    cell), at least 1."""
    return max(1, min(2 ** round(math.log2(max(math.sqrt(rows), 1))), rows // 39))


def default_m(dim: int) -> int:
    """Codes a row: the largest divisor of D at most D / 4 (192 at D = 768: an eighth of the fp16 vector's bytes)."""
    return max(d for d in range(1, max(dim // 4, 1) + 1) if dim % d == 0)


def default_nbits(rows: int) -> int:
    """Bits a code: 8 (256-entry codebooks), fewer when there are fewer rows to train them on."""
    return max(1, min(8, int(math.log2(max(rows, 2)))))


class IvfPqEngine:
    """IVF-PQ with fp16 rescoring. `add` encodes new rows with the trained cells and codebooks (retrain by building
    again when the collection has changed much)."""

    kind = "ivfpq"

    def __init__(self, index, shards: Sequence[np.ndarray], device: torch.device, nlist: int, m: int, nbits: int,
                 nprobe: int, rescore_multiplier: int):  # fmt: skip
        self.index, self.shards, self.device = index, list(shards), device
        self.nlist, self.m, self.nbits, self.nprobe, self.rescore_multiplier = nlist, m, nbits, nprobe, rescore_multiplier

    @classmethod
    def build(cls, shards: Sequence[np.ndarray], device: torch.device, nlist: int | None = None, m: int | None = None,
              nbits: int | None = None, nprobe: int = NPROBE,
              rescore_multiplier: int = RESCORE_MULTIPLIER) -> IvfPqEngine:  # fmt: skip
        rows, dim = sum(len(s) for s in shards), shards[0].shape[-1]
        nlist = default_nlist(rows) if nlist is None else nlist
        m = default_m(dim) if m is None else m
        nbits = default_nbits(rows) if nbits is None else nbits
        _check_search_options(nprobe, rescore_multiplier)
        index = build_ivfpq(shards, nlist, m, nbits=nbits)
        return cls(index, shards, device, nlist, m, nbits, nprobe, rescore_multiplier)

    def save(self, storage) -> dict:
        import faiss

        data = faiss.serialize_index(self.index).tobytes()
        file = storage.versioned(APPROXIMATE_STEM, ".faiss")
        storage.write_file(file, data)
        return {"kind": self.kind, "file": file, "nlist": self.nlist, "m": self.m, "nbits": self.nbits, "nprobe": self.nprobe,
                "rescore_multiplier": self.rescore_multiplier,
                "bytes_per_document": round(len(data) / max(self.index.ntotal, 1), 1)}  # fmt: skip

    @classmethod
    def load(cls, storage, entry: dict, shards: Sequence[np.ndarray], device: torch.device) -> IvfPqEngine:
        import faiss

        index = faiss.read_index(str(storage.path(entry.get("file", APPROXIMATE_FILE))))
        return cls(index, shards, device, entry["nlist"], entry["m"], entry["nbits"], entry["nprobe"],
                   entry["rescore_multiplier"])  # fmt: skip

    def add(self, shards: Sequence[np.ndarray]) -> None:
        for shard in shards:
            self.index.add(unit_rows(np.asarray(shard)))
        self.shards += list(shards)

    def rebuilt(self, shards: Sequence[np.ndarray]) -> IvfPqEngine:
        """This engine over other rows (a compacted index's): emptied and filled again with the same trained cells
        and codebooks, no k-means run."""
        self.index.reset()
        self.shards = []
        self.add(shards)
        return self

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, nprobe: int | None = None,
               rescore_multiplier: int | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        nprobe = self.nprobe if nprobe is None else nprobe
        rescore_multiplier = self.rescore_multiplier if rescore_multiplier is None else rescore_multiplier
        _check_search_options(nprobe, rescore_multiplier)
        self.index.nprobe = nprobe
        return search_quantized(self.index, queries, self.shards, k, rescore_multiplier, self.device, allowed=allowed)


def _check_search_options(nprobe: int, rescore_multiplier: int) -> None:
    if isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1:
        raise ValueError(f"nprobe must be a positive integer, got {nprobe!r}")
    if isinstance(rescore_multiplier, bool) or not isinstance(rescore_multiplier, int) or rescore_multiplier < 0:
        raise ValueError(f"rescore_multiplier must be an integer >= 0, got {rescore_multiplier!r}")
