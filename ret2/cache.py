"""The on-disk cache of pool embeddings: resumable fp16 shards, filled in parallel under `torchrun`, shared by the
evaluation and `Ret2Index`.

Cache layout (one folder per pool and key)::

    <cache_dir>/<pool name>/<key>/meta.json               what the key was made of (model, dtype, pool files, shards)
    <cache_dir>/<pool name>/<key>/shard-00000.ids          the ids of the shard's items, one per line
    <cache_dir>/<pool name>/<key>/shard-00000.npy          their fp16 embeddings, (n, D) or (n, K, D)
    <cache_dir>/<pool name>/<key>/shard-00000.json         the shard's manifest: row count, shape, bytes of the .npy

The key hashes the model's files (`model_fingerprint`), the dtype, the pool's content (a digest where the caller
has one, else its files' sizes and mtimes), the shard size and the image orientation rule (`IMAGE_ORIENTATIONS`:
embeddings of one rule are never reused for the other). A shard holds a fixed number of items (`shard_size`, not a
number of batches), so the cache does not depend on the batch size. Each file is written to a temporary file and
renamed, the manifest last; a shard is reused only if its
manifest exists and its files match it (row count, shape, byte size), else it is re-encoded with a warning (a disk
that filled up, a machine that died mid-write). So an interrupted run resumes from the last completed shard. Under
`torchrun` every rank encodes a contiguous range of each pool's shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.images import check_orientation
from .encoding import ItemLoader, encode_items
from .options import SHARD_SIZE  # items per cache shard: the unit of resuming and of the split between ranks

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when what is encoded for a record changes (text formatting, image handling)


@dataclass
class Pool:
    """A candidate pool to encode: its cache name, ids in order, a loader of its items, and its source files.

    What keys the cache: `digest`, a hash of the pool's content, when the caller has one (an index's parts: a copied
    index folder keeps its cache, whatever the copy did to modification times); else the files' sizes and mtimes
    (benchmark pools of millions of records, which are not hashed at every run)."""

    name: str
    ids: list[str]
    load: ItemLoader
    files: tuple[Path, ...]
    digest: str | None = None


@dataclass
class Embeddings:
    """fp16 embeddings of a pool in shards (memory-mapped from the cache), and the ids of their rows in order."""

    ids: list[str]
    shards: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(shard.nbytes for shard in self.shards)

    @classmethod
    def concat(cls, parts: Sequence[Embeddings]) -> Embeddings:
        """The pools one after the other (no copy: the shards are shared)."""
        return cls([i for p in parts for i in p.ids], [s for p in parts for s in p.shards])


def cache_folder(
    cache_dir: str | Path, pool: Pool, fingerprint: str, dtype: torch.dtype, shard_size: int, *, orientation: str
) -> Path:
    """`<cache_dir>/<pool name>/<key>`, created, where the key hashes everything the cached embeddings depend on:
    the model's fingerprint, the dtype, the pool's content (`Pool.digest`, else its files' sizes and mtimes), the
    shard size, the image orientation rule and `CACHE_VERSION`. Its `meta.json` spells the key out (every rank
    writes the same file)."""
    content = (
        {"digest": pool.digest} if pool.digest is not None
        else {"files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in pool.files]}
    )  # fmt: skip
    key = {
        "version": CACHE_VERSION, "model_fingerprint": fingerprint, "dtype": str(dtype), "shard_size": shard_size,
        "count": len(pool.ids), "image_orientation": check_orientation(orientation), **content,
    }  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / pool.name / digest
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "meta.json", lambda f: f.write(json.dumps(key, indent=1).encode()))
    return folder


def _shard_path(folder: Path, shard: int, suffix: str) -> Path:
    return folder / f"shard-{shard:05d}{suffix}"


def write_atomic(path: Path, write: Callable) -> None:
    """`write(file)` into a temporary file beside `path`, then rename: a reader never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _shard_problem(folder: Path, shard: int, count: int) -> str | None:
    """Why shard `shard` (of `count` rows) in `folder` cannot be reused, or None when its manifest, written last,
    exists and its .npy and .ids match it. Reads the .npy's header only."""
    manifest, npy, ids = (_shard_path(folder, shard, suffix) for suffix in (".json", ".npy", ".ids"))
    if not manifest.exists():
        return "has no manifest (its writing never finished)"
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8"))
        if npy.stat().st_size != expected["bytes"]:
            return f"{npy.name} holds {npy.stat().st_size} bytes, its manifest says {expected['bytes']} (truncated?)"
        array = np.load(npy, mmap_mode="r")
        shape_ok = list(array.shape) == expected["shape"] and count == expected["rows"] == len(array)
        if array.dtype != np.float16 or not shape_ok:
            return f"{npy.name} holds {array.dtype} {array.shape}, expected float16 with {count} rows ({expected})"
        if len(ids.read_text(encoding="utf-8").splitlines()) != count:
            return f"{ids.name} does not hold {count} ids"
    except (OSError, ValueError, KeyError, TypeError) as err:  # a missing / unparsable file: re-encode, say why
        return f"cannot be read ({type(err).__name__}: {err})"
    return None


def _num_shards(pool: Pool, shard_size: int) -> int:
    return -(-len(pool.ids) // shard_size)


def encode_pool(
    model: torch.nn.Module,
    processor,
    pool: Pool,
    folder: str | Path,
    image_root: str | Path,
    batch_size: int = 64,
    shard_size: int = SHARD_SIZE,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    on_shard: Callable[[int], None] | None = None,
    *,
    orientation: str,
) -> None:
    """Encode this rank's shards of `pool` (documents side) into `folder` (from `cache_folder` with the same
    `orientation`), skipping shards already there. Rank r of `world_size` takes the contiguous shards
    [r * S / W, (r + 1) * S / W) of the S shards.
    `on_shard(i)` is called after shard i is written (progress hooks, tests)."""
    folder = Path(folder)
    num_shards = _num_shards(pool, shard_size)
    mine = range(rank * num_shards // world_size, (rank + 1) * num_shards // world_size)
    bounds = {s: (s * shard_size, min((s + 1) * shard_size, len(pool.ids))) for s in mine}
    todo = []
    for shard in mine:
        problem = _shard_problem(folder, shard, bounds[shard][1] - bounds[shard][0])
        if problem is not None:
            todo.append(shard)
            if any(_shard_path(folder, shard, suffix).exists() for suffix in (".npy", ".ids", ".json")):
                logger.warning("%s: re-encoding shard %d: %s", folder, shard, problem)
    if len(todo) < len(mine):
        logger.info("%s: %d of this rank's %d shards are cached", pool.name, len(mine) - len(todo), len(mine))
    if not todo:
        return
    name = pool.name + (f" (rank {rank})" if world_size > 1 else "")
    # one bar for this rank's part of the pool: documents done of all its shards (the cached ones count as done)
    total = sum(stop - start for start, stop in bounds.values())
    done = total - sum(bounds[shard][1] - bounds[shard][0] for shard in todo)
    with tqdm(total=total, initial=done, unit="doc", desc=f"encode {name}", disable=rank != 0) as progress:
        for shard in todo:
            start, stop = bounds[shard]
            embeddings = encode_items(model, processor, pool.load(start, stop), image_root, "document", batch_size,
                                      num_workers, f"encode {name}", orientation=orientation, show_progress_bar=False,
                                      on_batch=progress.update)  # fmt: skip
            write_shard(folder, shard, pool.ids[start:stop], embeddings)
            if on_shard is not None:
                on_shard(shard)


def write_shard(folder: str | Path, shard: int, ids: Sequence[str], embeddings: np.ndarray) -> None:
    """Write shard number `shard` of a pool's cache folder: its items' ids and fp16 embeddings, then its manifest (last:
    a shard without one is encoded again)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = "".join(f"{i}\n" for i in ids).encode()
    write_atomic(_shard_path(folder, shard, ".ids"), lambda f: f.write(data))
    npy = _shard_path(folder, shard, ".npy")
    write_atomic(npy, lambda f: np.save(f, np.asarray(embeddings, np.float16)))
    manifest = {"rows": len(embeddings), "shape": list(embeddings.shape), "bytes": npy.stat().st_size}
    write_atomic(_shard_path(folder, shard, ".json"), lambda f: f.write(json.dumps(manifest).encode()))


def load_pool(pool: Pool, folder: str | Path, shard_size: int = SHARD_SIZE) -> Embeddings:
    """The cached embeddings of `pool`, memory-mapped; errors if a shard is missing or does not match its manifest,
    or if the ids differ from the pool's."""
    folder = Path(folder)
    shards, ids = [], []
    for shard in range(_num_shards(pool, shard_size)):
        path = _shard_path(folder, shard, ".npy")
        problem = _shard_problem(folder, shard, min(shard_size, len(pool.ids) - shard * shard_size))
        if problem is not None:
            raise ValueError(f"{path}: shard {shard} of pool {pool.name!r} {problem}; encode the pool (rerun) to redo it")
        shards.append(np.load(path, mmap_mode="r"))
        ids += _shard_path(folder, shard, ".ids").read_text(encoding="utf-8").splitlines()
    if ids != pool.ids:
        raise ValueError(f"{folder}: cached ids differ from the ids of pool {pool.name!r}; delete this folder")
    return Embeddings(ids, shards)
