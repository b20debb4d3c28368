"""Encoding for evaluation and indexing: load a saved model, encode queries and candidate pools in batches, and keep
pool embeddings in an on-disk cache of resumable shards, filled in parallel under `torchrun`.

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

Batching changes padding and matrix shapes, and with them the last bits of an embedding (about 1e-7 in fp32; after
rounding to fp16, a few components move by one fp16 step): only candidates scored within about 1e-5 of each other can
swap places with the batch size. The search then ranks the cached embeddings exactly (`search.search`).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoProcessor
from transformers.utils import cached_file

from modeling_ret2 import encode_samples

from .data.images import IMAGE_ORIENTATIONS, ImageLoader, check_orientation
from .distributed import Dist, barrier, default_num_workers, init_distributed
from .search import BACKENDS
from .jsonl import record_line

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when what is encoded for a record changes (text formatting, image handling)
SHARD_SIZE = 10_000  # items per cache shard: the unit of resuming and of the split between ranks
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


# ----------------------------------------------------------------------------- model


def load_model_and_processor(
    name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, object]:
    """A saved ReT-2 model (hub id or folder, through `AutoModel` with `trust_remote_code=True`) on `device` in
    eval mode, and its processor."""
    check_model_source(name_or_path)
    model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype)
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
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


def _encode(
    model: torch.nn.Module,
    processor,
    items: Sequence[Item],
    image_root: str | Path,
    side: str,
    batch_size: int,
    num_workers: int,
    orientation: str,
    desc: str,
    show_progress_bar: bool = True,
) -> np.ndarray:
    """fp16 embeddings of items, in order, through the model's one batching engine (`encode_samples`: sorted by
    modality and length, order restored)."""
    if side not in SIDES:
        raise ValueError(f"side {side!r} is not one of {list(SIDES)}")
    for item in items:
        if not item.text and not item.image:
            raise ValueError(f"{item.where()}: record {item.id!r} has neither text nor an image")
    embeddings = encode_samples(
        model.encode_queries if side == "query" else model.encode_documents, processor,
        [(item.text or None, item.image or None) for item in items], device=next(model.parameters()).device,
        batch_size=batch_size, num_workers=num_workers, open_image=_ItemImages(items, image_root, orientation),
        show_progress_bar=show_progress_bar, desc=desc,
    )  # fmt: skip
    return embeddings.float().cpu().numpy().astype(np.float16)


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
) -> np.ndarray:
    """fp16 embeddings, (N, D) or (N, K, D), of items held in memory, without cache (queries).

    `side` is "query" or "document"; `orientation` how image files are read (one of `IMAGE_ORIENTATIONS`). A missing
    image raises FileNotFoundError naming the record's file and line, the image path and the record id.
    """
    if not items:
        raise ValueError(f"{desc}: nothing to encode")
    return _encode(model, processor, items, image_root, side, batch_size, num_workers, orientation, desc)


# ----------------------------------------------------------------------------- the shard cache


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
    for n, shard in enumerate(todo, 1):
        start, stop = bounds[shard]
        embeddings = _encode(model, processor, pool.load(start, stop), image_root, "document", batch_size, num_workers,
                             orientation, f"encode {name}, shard {n}/{len(todo)}", show_progress_bar=rank == 0)  # fmt: skip
        ids = "".join(f"{i}\n" for i in pool.ids[start:stop]).encode()
        write_atomic(_shard_path(folder, shard, ".ids"), lambda f: f.write(ids))
        npy = _shard_path(folder, shard, ".npy")
        write_atomic(npy, lambda f: np.save(f, embeddings))
        manifest = {"rows": len(embeddings), "shape": list(embeddings.shape), "bytes": npy.stat().st_size}
        write_atomic(_shard_path(folder, shard, ".json"), lambda f: f.write(json.dumps(manifest).encode()))  # last
        if on_shard is not None:
            on_shard(shard)


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
        search_backend: "auto" (torch on GPU, FAISS on CPU), "faiss" or "torch".
        image_orientation: how image files are read, one of `IMAGE_ORIENTATIONS` (docs/images.md): "stored" (EXIF
            orientation not applied), the M-BEIR / M2KR protocol, or "upright" (EXIF applied). Part of the cache key.
    """

    batch_size: int = 64
    num_workers: int = default_num_workers()
    device: str | None = None
    dtype: str = "float32"
    cache_dir: Path | None = None
    shard_size: int = SHARD_SIZE
    search_backend: str = "auto"
    image_orientation: str = "stored"

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

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The command-line flags of these options (`--batch-size`, ..., `--search-backend`)."""
        parser.add_argument("--cache-dir", type=Path, help="embedding cache (default: OUTPUT_DIR/cache)")
        parser.add_argument("--batch-size", type=int, default=cls.batch_size, help="items per model call")
        parser.add_argument("--shard-size", type=int, default=cls.shard_size, help="items per cache shard (the resume unit)")
        parser.add_argument("--num-workers", type=int, default=cls.num_workers, help="DataLoader workers loading images")
        parser.add_argument("--device", help="cuda or cpu (default: cuda if available); one GPU per rank under torchrun")
        parser.add_argument("--dtype", choices=list(DTYPES), default=cls.dtype, help="model dtype while encoding")
        parser.add_argument("--search-backend", choices=list(BACKENDS), default=cls.search_backend,
                            help="auto: torch on GPU, FAISS on CPU when installed")
        parser.add_argument("--image-orientation", choices=list(IMAGE_ORIENTATIONS), default=cls.image_orientation,
                            help="stored: EXIF orientation not applied, as the benchmarks read images (default); "
                                 "upright: turned by EXIF orientation (docs/images.md)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EncodeOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


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
        return {pool.name: load_pool(pool, folders[pool.name], options.shard_size) for pool in pools}

    def queries(self, items: Sequence[Item], image_root: str | Path, desc: str) -> np.ndarray:
        return encode_items(self.model, self.processor, items, image_root, "query", self.options.batch_size,
                            self.options.num_workers, desc, orientation=self.options.image_orientation)  # fmt: skip
