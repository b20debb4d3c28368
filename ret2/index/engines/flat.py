"""The flat scans: every allowed row scored, from the fp16 vectors (exact) or from int8 / binary codes whose best
candidates are rescored from the fp16 vectors."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ret2.search import RESCORE_MULTIPLIER, build_quantized, search, search_quantized

QUANTIZED_STEM = "quantized"  # quantized-<revision>.faiss: the int8 or binary codes of an index built with that precision
QUANTIZED_FILE = "quantized.faiss"  # the name before versioned files, still read


class ExactEngine:
    """The exact scan of the fp16 vectors (single vectors, or ReT-1's late interaction), nothing stored besides
    them."""

    kind = "exact"

    def __init__(self, shards: Sequence[np.ndarray], device: torch.device):
        self.shards, self.device = list(shards), device

    def add(self, shards: Sequence[np.ndarray]) -> None:
        self.shards += list(shards)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        return search(queries, self.shards, k, backend, self.device, allowed=allowed)


class QuantizedEngine:
    """int8 (D bytes a row) or binary (D / 8 bytes) codes of the vectors (`ret2.search.build_quantized`, calibrated
    on every row), rescored from the fp16 vectors. `add` recalibrates on every row, old and new."""

    kind = "quantized"

    def __init__(self, codes, precision: str, shards: Sequence[np.ndarray], device: torch.device):
        self.codes, self.precision, self.shards, self.device = codes, precision, list(shards), device

    @classmethod
    def build(cls, shards: Sequence[np.ndarray], precision: str, device: torch.device) -> QuantizedEngine:
        return cls(build_quantized(shards, precision), precision, shards, device)

    def save(self, storage) -> dict:
        import faiss

        serialize = faiss.serialize_index_binary if self.precision == "binary" else faiss.serialize_index
        file = storage.versioned(QUANTIZED_STEM, ".faiss")
        storage.write_file(file, serialize(self.codes).tobytes())
        return {"kind": self.kind, "precision": self.precision, "file": file}

    @classmethod
    def load(cls, storage, precision: str, shards: Sequence[np.ndarray], device: torch.device,
             file: str | None = None) -> QuantizedEngine:  # fmt: skip
        """The codes saved in `file` (the manifest's `quantized_file`)."""
        import faiss

        read = faiss.read_index_binary if precision == "binary" else faiss.read_index
        return cls(read(str(storage.path(file or QUANTIZED_FILE))), precision, shards, device)

    def add(self, shards: Sequence[np.ndarray]) -> None:
        self.shards += list(shards)
        self.codes = build_quantized(self.shards, self.precision)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               rescore_multiplier: int = RESCORE_MULTIPLIER) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        return search_quantized(self.codes, queries, self.shards, k, rescore_multiplier, self.device, allowed=allowed)
