"""`Ret2Index` and `Hit`: see the package docstring (`ret2.index`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ret2.cache import SHARD_SIZE, Embeddings, Pool, cache_folder, encode_pool, load_pool, write_atomic
from ret2.data.images import check_orientation
from configuration_ret2 import Ret2Config
from ret2.encoding import DTYPES, Item, truncate_array
from ret2.model import default_device, load_model_and_processor, model_config, model_fingerprint, text_limit
from ret2.index import ENGINES
from ret2.records import Records, read_records
from ret2.search import (BACKENDS, RESCORE_MULTIPLIER, build_hnsw, build_quantized, check_precision, recall_at_k,
                         search_hnsw, search_quantized, unit_rows)
from ret2.search import search as exact_search

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
INDEX_FORMAT = "ret2-index"
INDEX_VERSION = 2  # 2: each part has its own image root, the image orientation rule is kept; the cache is keyed by
# the parts' content (not mtimes) and that rule
APPROXIMATE_FILE = "approximate.faiss"
QUANTIZED_FILE = "quantized.faiss"  # the int8 or binary codes of an index built with that precision


@dataclass
class Hit:
    """One search result: the document's id, its score (cosine, or late-interaction sum), text, image (the path as
    stored, relative to the image root of the documents it was added with), the other fields of its record, and
    `image_path`, where the image is on disk. In an index built with `chunk_size`, `id` is the document's and `text`
    its best-scoring chunk, number `chunk` (0-based)."""

    id: str
    score: float
    text: str | None
    image: str | None
    metadata: dict = field(default_factory=dict)
    image_path: str | None = None
    chunk: int | None = None  # in an index of chunked documents: the number of the best chunk, whose text `text` is


# ----------------------------------------------------------------------------- parts: records + cached embeddings


class _Part:
    """The records of one `build` / `add`, in a jsonl file read by byte offset (no copy of them in memory).

    Also the pool's `ItemLoader` (picklable: DataLoader workers call it)."""

    def __init__(self, path: Path):
        self.path = path
        data = path.read_bytes()
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n")) + 1
        self.offsets = np.concatenate([[0], ends]).astype(np.int64)  # line i is data[offsets[i]:offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def records(self, start: int, stop: int) -> list[dict]:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[start])
            block = f.read(self.offsets[stop] - self.offsets[start])
        return [json.loads(line) for line in block.splitlines()]

    def __call__(self, start: int, stop: int) -> list[Item]:
        return [Item(r["id"], r["text"], r["image"], str(self.path), start + i)
                for i, r in enumerate(self.records(start, stop))]  # fmt: skip

    def ids(self) -> list[str]:
        return [r["id"] for r in self.records(0, len(self))]


def split_text(tokenizer, text: str, size: int, overlap: int) -> list[str]:
    """`text` cut on token boundaries into windows of `size` tokens, each starting `size - overlap` tokens after the
    previous one (the last may be shorter); a text of at most `size` tokens is one chunk. Each chunk is the exact
    span of the original text its tokens cover (whitespace and case kept)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    if len(offsets) <= size:
        return [text]
    chunks = []
    for start in range(0, len(offsets), size - overlap):
        window = offsets[start : start + size]
        chunks.append(text[window[0][0] : window[-1][1]])
        if start + size >= len(offsets):
            break
    return chunks


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the index


def _read_meta(folder: Path) -> dict:
    meta_path = folder / INDEX_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not a ret2 index: no {INDEX_FILE}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != INDEX_FORMAT:
        raise ValueError(f"{meta_path}: not a {INDEX_FORMAT} file")
    if meta.get("version") != INDEX_VERSION:
        raise ValueError(f"{meta_path}: an index of format version {meta.get('version')}, this ret2 reads version "
                         f"{INDEX_VERSION}; build it again (ret2-index build) from its documents")  # fmt: skip
    return meta


def index_info(folder: str | Path) -> dict:
    """What the index at `folder` holds (documents, parts, model, settings, approximate index, Milvus collection),
    read from its `index.json` without loading the model."""
    meta = _read_meta(Path(folder))
    documents = sum(p.get("documents", p["count"]) for p in meta["parts"] if p["complete"])
    rows = sum(p["count"] for p in meta["parts"] if p["complete"])  # chunks, in an index of chunked documents
    return {"folder": str(folder), "documents": documents, "rows": rows, **{k: meta[k] for k in ("model", "config",
            "parts", "approximate", "milvus")}}  # fmt: skip


class Ret2Index:
    """A searchable folder of documents encoded by one ReT-2 model (see the module docstring).

    Create one with `Ret2Index.build(folder, source, model)`, open an existing one with `Ret2Index.open(folder)`.
    """

    def __init__(self, folder: Path, meta: dict, model: torch.nn.Module, processor, device: torch.device):
        self.folder, self.meta, self.model, self.processor, self.device = folder, meta, model, processor, device
        self._embeddings: Embeddings | None = None
        self._parts: list[tuple[_Part, Path]] | None = None  # each complete part's records and image root
        self._approximate = None
        self._quantized: dict = {}  # precision -> FAISS index of the codes (the built one is read from QUANTIZED_FILE)

    # ------------------------------------------------------------------ creating and opening

    @classmethod
    def build(
        cls,
        folder: str | Path,
        source: Records,
        model: str | Path,
        image_root: str | Path | None = None,
        batch_size: int = 64,
        shard_size: int = SHARD_SIZE,
        dtype: str = "float32",
        device: str | None = None,
        num_workers: int = 0,
        id_field: str = "id",
        text_field: str = "text",
        image_field: str = "image",
        image_orientation: str = "upright",
        precision: str = "fp16",
        truncate_dim: int | None = None,
        chunk_size: int | str | None = None,
        chunk_overlap: int = 0,
    ) -> Ret2Index:
        """Encode the documents of `source` (see `read_records`) with `model` (a ReT-2 folder or Hub id) into a new
        index at `folder`. Run again after an interruption, it resumes from the last finished shard.

        Args:
            folder: the index folder to create (it must be empty, or hold an interrupted build of this source).
            source: documents: .jsonl / .csv file, folder of images, `datasets.Dataset` or list of dicts.
            model: the ReT-2 model (folder or Hub id); searching the index later needs the same model files.
            image_root: the folder image paths are relative to (default: see `read_records`).
            batch_size: documents per model call. shard_size: documents per cache shard (the resume unit).
            dtype: model dtype while encoding ("float32", "bfloat16", "float16"). device: default CUDA if available.
            num_workers: DataLoader workers opening images.
            id_field, text_field, image_field: the field names of the source.
            image_orientation: how image files are read, one of `IMAGE_ORIENTATIONS` (docs/images.md): "upright"
                (turned by their EXIF orientation, as `Ret2Model.encode` reads them) or "stored" (EXIF ignored, as
                the benchmarks read them). Stored in `index.json`: `add` and image queries of `search` use it.
            precision: what `search` scans by default, one of `ret2.search.PRECISIONS`: "fp16" (the stored vectors,
                exact), "int8" (D bytes a document) or "binary" (D / 8 bytes), whose codes are saved in the folder
                (`quantized.faiss`) beside the fp16 vectors that rescore their best candidates. Single vectors only.
            truncate_dim: search with the first `truncate_dim` components of every embedding, re-normalised
                (Matryoshka sizes); in [1, the model's embedding_dim], with a warning when the model was not trained
                for that size. Stored in `index.json`; documents and queries alike are truncated (the cache keeps the
                full embeddings, truncated as they are loaded). None: the full embedding.
            chunk_size: split texts longer than this many tokens into chunks on token boundaries (`split_text`),
                each encoded with the document's image; `search` scores chunks and returns each document once, with
                its best chunk (`Hit.chunk`). At most the tokenizer's limit less its special tokens; "auto" is that
                limit. Default: no chunks (texts beyond the tokenizer's limit are truncated, with a count in the
                log).
            chunk_overlap: tokens shared by consecutive chunks (< chunk_size).
        """
        folder = Path(folder)
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
        check_orientation(image_orientation)
        check_precision(precision)
        if chunk_size not in (None, "auto") and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive integer, 'auto' or None, got {chunk_size!r}")
        if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) or chunk_overlap < 0:
            raise ValueError(f"chunk_overlap must be an integer >= 0, got {chunk_overlap!r}")
        records, root = read_records(source, image_root, id_field, text_field, image_field)
        meta_path = folder / INDEX_FILE
        if meta_path.exists():
            meta = _read_meta(folder)
            if meta["parts"][1:] or meta["parts"][0]["complete"]:
                raise FileExistsError(f"{folder} already holds an index; open it and call add(), or pick a new folder")
        else:
            if folder.exists() and any(folder.iterdir()):
                raise FileExistsError(f"{folder} exists and is not an index folder; pick an empty or new folder")
            fingerprint = model_fingerprint(str(model))  # a bad model fails here, before the folder is made
            config = model_config(str(model))
            if precision != "fp16" and config.get("pooling") == "none":
                raise ValueError(f"precision {precision!r} needs single-vector embeddings; this model is multi-vector "
                                 "(pooling='none', ReT-1 mode), searched exactly: use precision='fp16'")
            Ret2Config.from_dict(config).check_truncate_dim(truncate_dim)  # so does a bad truncate_dim
            chunking = None if chunk_size is None else _chunking(str(model), chunk_size, chunk_overlap)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "model_config.json").write_text(json.dumps(config, indent=1))
            meta = {
                "format": INDEX_FORMAT, "version": INDEX_VERSION,
                "model": {"name_or_path": str(model), "fingerprint": fingerprint},
                "config": {"dtype": dtype, "shard_size": shard_size, "batch_size": batch_size,
                           "image_root": str(root), "multi_vector": config.get("pooling") == "none",
                           "image_orientation": image_orientation, "precision": precision,
                           "truncate_dim": truncate_dim, "chunking": chunking},
                "parts": [], "approximate": None, "milvus": None,
            }  # fmt: skip
        index = cls._load(folder, meta, model, device)
        index._add_records(records, root, num_workers)
        return index

    @classmethod
    def open(cls, folder: str | Path, model: str | Path | None = None, device: str | None = None) -> Ret2Index:
        """The index at `folder`, with its model loaded (`model`: the same model at another path or Hub id; default:
        the name or path stored at build). Refuses a model whose files differ from the one that built the index."""
        meta = _read_meta(Path(folder))
        return cls._load(Path(folder), meta, model or meta["model"]["name_or_path"], device)

    @classmethod
    def _load(cls, folder: Path, meta: dict, model: str | Path, device: str | None) -> Ret2Index:
        fingerprint = model_fingerprint(str(model))
        built = meta["model"]
        if fingerprint != built["fingerprint"]:
            raise ValueError(
                f"index {folder} was built with model {built['name_or_path']!r} (fingerprint "
                f"{built['fingerprint'][:12]}); model {str(model)!r} has different files (fingerprint {fingerprint[:12]}). "
                "Search it with the model that built it, or build a new index with this model"
            )
        device = torch.device(device or default_device())
        net, processor = load_model_and_processor(str(model), device, DTYPES[meta["config"]["dtype"]])
        return cls(folder, meta, net, processor, device)

    def _save(self) -> None:
        write_atomic(self.folder / INDEX_FILE, lambda f: f.write(json.dumps(self.meta, indent=1).encode()))

    @property
    def multi_vector(self) -> bool:
        """True for a ReT-1-mode model (pooling="none"): documents are (K, D) token vectors, searched exactly."""
        return bool(self.meta["config"]["multi_vector"])

    @property
    def image_root(self) -> Path:
        """The image root of the build: `add` resolves the image paths of in-memory records against it by default."""
        return Path(self.meta["config"]["image_root"])

    @property
    def image_orientation(self) -> str:
        """How image files are read (documents and image queries alike), chosen at build: "upright" or "stored"."""
        return self.meta["config"]["image_orientation"]

    @property
    def precision(self) -> str:
        """What `search` scans by default, chosen at build: "fp16" (exact), "int8" or "binary" (+ rescoring)."""
        return self.meta["config"].get("precision", "fp16")

    @property
    def truncate_dim(self) -> int | None:
        """The embedding size searched (documents and queries truncated, re-normalised), chosen at build; None: full."""
        return self.meta["config"].get("truncate_dim")  # indexes built before the option hold full embeddings

    def _truncated(self, shards: list[np.ndarray]) -> list[np.ndarray]:
        """Cached (full) embeddings as searched: their `truncate_dim` prefixes, re-normalised (in memory)."""
        return shards if self.truncate_dim is None else [truncate_array(s, self.truncate_dim) for s in shards]

    def __len__(self) -> int:
        """The rows searched: documents, or their chunks in an index built with `chunk_size` (see `documents`)."""
        return sum(p["count"] for p in self.meta["parts"] if p["complete"])

    @property
    def documents(self) -> int:
        """The documents added (each counted once, however many chunks it has)."""
        return sum(p.get("documents", p["count"]) for p in self.meta["parts"] if p["complete"])

    def info(self) -> dict:
        """What the index holds: documents, parts, model, settings, approximate index and Milvus collection."""
        return index_info(self.folder)

    # ------------------------------------------------------------------ adding documents

    def _pool(self, part: dict) -> Pool:
        path = self.folder / "parts" / f"{part['name']}.jsonl"
        loader = _Part(path)
        return Pool(part["name"], loader.ids(), loader, (path,), digest=part["sha256"])

    def _cache(self, pool: Pool) -> Path:
        config = self.meta["config"]
        return cache_folder(self.folder / "cache", pool, self.meta["model"]["fingerprint"], DTYPES[config["dtype"]],
                            config["shard_size"], orientation=self.image_orientation)  # fmt: skip

    def add(
        self,
        source: Records,
        num_workers: int = 0,
        id_field: str = "id",
        text_field: str = "text",
        image_field: str = "image",
        image_root: str | Path | None = None,
    ) -> int:
        """Encode more documents (see `read_records`) into the index as a new part; returns how many were added.
        Image paths are relative to `image_root`, by default as for `build`: a `.jsonl` / `.csv` file's folder, the
        folder of a folder of images, and for in-memory records the index's image root. Ids already in the index are
        refused. An interrupted `add` of the same documents resumes; one of other documents is discarded."""
        if image_root is None and not isinstance(source, (str, os.PathLike)):
            image_root = self.image_root
        records, root = read_records(source, image_root, id_field, text_field, image_field)
        return self._add_records(records, root, num_workers)

    @property
    def chunking(self) -> dict | None:
        """{"size", "overlap"} in tokens when documents are split into chunks (`build`'s chunk_size), else None."""
        return self.meta["config"].get("chunking")

    def _chunk(self, records: list[dict]) -> list[dict]:
        """Each record as its chunks: records `{id: "<doc id>#<n>", "doc_id", "chunk": n, text, image, metadata}`."""
        seen = {i.rpartition("#")[0] for i in self.embeddings().ids} if self.meta["parts"] and len(self) else set()
        for r in records:  # document ids: the chunks' ids derive from them
            if r["id"] in seen:
                raise ValueError(f"document id {r['id']!r} is already in the index (or twice in the new documents)")
            seen.add(r["id"])
        out = []
        for r in records:
            texts = split_text(self.processor.tokenizer, r["text"], **self.chunking) if r["text"] else [None]
            out += [{**r, "id": f"{r['id']}#{n}", "doc_id": r["id"], "chunk": n, "text": text}
                    for n, text in enumerate(texts)]  # fmt: skip
        return out

    def _add_records(self, records: list[dict], root: Path, num_workers: int) -> int:
        documents = len(records)
        if self.chunking is not None:
            records = self._chunk(records)
        parts_dir = self.folder / "parts"
        parts_dir.mkdir(exist_ok=True)
        pending = self.meta["parts"][-1] if self.meta["parts"] and not self.meta["parts"][-1]["complete"] else None
        name = pending["name"] if pending else f"part-{len(self.meta['parts']):05d}"
        path = parts_dir / f"{name}.jsonl"
        tmp = parts_dir / f".{name}.new"
        write_atomic(tmp, lambda f: f.writelines((json.dumps(r, ensure_ascii=False) + "\n").encode() for r in records))
        if pending is not None and pending["sha256"] == _sha256(tmp) and pending["image_root"] == str(root):
            tmp.unlink()  # the same documents: resume from their cached shards
            logger.info("resuming the interrupted encoding of %s", name)
        else:
            if pending is not None:
                logger.warning("discarding the interrupted encoding of %s (other documents)", name)
                shutil.rmtree(self.folder / "cache" / name, ignore_errors=True)
                self.meta["parts"].pop()
            self._check_new_ids([r["id"] for r in records])
            os.replace(tmp, path)
            pending = {"name": name, "count": len(records), "documents": documents, "sha256": _sha256(path),
                       "image_root": str(root), "complete": False}  # fmt: skip
            self.meta["parts"].append(pending)
            self._save()
        pool = self._pool(pending)
        config = self.meta["config"]
        encode_pool(self.model, self.processor, pool, self._cache(pool), root, config["batch_size"],
                    config["shard_size"], num_workers, orientation=self.image_orientation)  # fmt: skip
        pending["complete"] = True
        self._embeddings = self._parts = None
        if self._load_approximate() is not None:  # keep the approximate index in step
            shards = load_pool(pool, self._cache(pool), config["shard_size"]).shards
            self._approximate.add(unit_rows(np.concatenate(self._truncated(shards))))
            self._write_approximate()
        if self.precision != "fp16":  # recalibrated on every document, old and new
            self._quantized = {self.precision: build_quantized(self.embeddings().shards, self.precision)}
            self._write_faiss(QUANTIZED_FILE, self._quantized[self.precision])
        self._save()
        return documents

    def _check_new_ids(self, ids: list[str]) -> None:
        seen = set(self.embeddings().ids) if self.meta["parts"] and len(self) else set()
        for i in ids:
            if i in seen:
                raise ValueError(f"document id {i!r} is already in the index (or twice in the new documents)")
            seen.add(i)

    # ------------------------------------------------------------------ embeddings and records

    def embeddings(self) -> Embeddings:
        """The fp16 embeddings of every document (memory-mapped cache shards; with `truncate_dim`, their truncated
        copies in memory) and their ids, in index order."""
        if self._embeddings is None:
            complete = [p for p in self.meta["parts"] if p["complete"]]
            pools = [self._pool(p) for p in complete]
            shard_size = self.meta["config"]["shard_size"]
            full = Embeddings.concat([load_pool(p, self._cache(p), shard_size) for p in pools])
            self._embeddings = Embeddings(full.ids, self._truncated(full.shards))
            self._parts = [(pool.load, Path(part["image_root"])) for pool, part in zip(pools, complete)]
        return self._embeddings

    def record(self, row: int) -> dict:
        """The stored record {"id", "text", "image", "metadata"} of document number `row`."""
        return self._locate(row)[0]

    def _locate(self, row: int) -> tuple[dict, Path]:
        """The stored record of document number `row` and the image root of its part."""
        self.embeddings()
        for part, root in self._parts:
            if row < len(part):
                return part.records(row, row + 1)[0], root
            row -= len(part)
        raise IndexError(f"document {row} is out of range (the index holds {len(self)})")

    # ------------------------------------------------------------------ search

    def encode_queries(self, queries: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
        """fp16 query embeddings (N, D) or (N, K, D), rounded to fp16 like the documents, of raw queries in any form
        the model's one-call `encode` takes (a str is text; a PIL image or `pathlib.Path` an image, anywhere on
        disk; a `(text, image)` tuple or `{"text", "image"}` dict both)."""
        if not queries:
            raise ValueError("no queries to encode")
        batch_size = batch_size or self.meta["config"]["batch_size"]
        embeddings = self.model.encode(list(queries), kind="query", processor=self.processor, batch_size=batch_size,
                                       image_orientation=self.image_orientation, truncate_dim=self.truncate_dim)  # fmt: skip
        return embeddings.astype(np.float16)

    def search(
        self,
        queries: Any,
        k: int = 10,
        engine: str = "exact",
        backend: str = "auto",
        ef_search: int | None = None,
        precision: str | None = None,
        rescore_multiplier: int = RESCORE_MULTIPLIER,
    ) -> list[Hit] | list[list[Hit]]:
        """The top-k documents of one query (a list of `Hit`, best first) or of a batch (a list of queries: a list of
        such lists).

        Args:
            queries: a query (text, image, or both, as `Ret2Model.encode` takes it) or a list of queries.
            k: results per query.
            engine: "exact" (`ret2.search.search`), "approximate" (the HNSW index of `build_approximate`) or
                "milvus" (the collection of `to_milvus`).
            backend: the exact search's backend, one of `ret2.search.BACKENDS`.
            ef_search: HNSW search depth for engine="approximate" (default: the one chosen at build).
            precision: what engine="exact" scans, one of `ret2.search.PRECISIONS` (default: the build's): "fp16"
                (exact), "int8" or "binary" (the saved codes; another one than the build's is made in memory).
            rescore_multiplier: int8 / binary: candidates rescored from the fp16 vectors per result (0: none).
        """
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not one of {list(ENGINES)}")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {list(BACKENDS)}")
        batch = isinstance(queries, list)
        vectors = self.encode_queries(queries if batch else [queries])
        if self.chunking is not None:
            hits = self._search_documents(vectors, k, engine, backend, ef_search, precision, rescore_multiplier)
            return hits if batch else hits[0]
        scores, rows = self.search_embeddings(vectors, k, engine, backend, ef_search, precision, rescore_multiplier)
        hits = self.hits(scores, rows)
        return hits if batch else hits[0]

    def _search_documents(self, vectors: np.ndarray, k: int, engine: str, backend: str, ef_search: int | None,
                          precision: str | None, rescore_multiplier: int) -> list[list[Hit]]:  # fmt: skip
        """Chunked documents: each query's top-k documents, each once, scored and shown by its best chunk. Searches
        4k chunks, then deeper (x4 each time) while a query has fewer than k documents and chunks remain."""
        depth = 4 * k
        while True:
            scores, rows = self.search_embeddings(vectors, min(depth, len(self)), engine, backend, ef_search, precision,
                                                  rescore_multiplier)  # fmt: skip
            hits = []
            for srow, rrow in zip(scores, rows):
                best: dict[str, Hit] = {}
                for s, r in zip(srow, rrow):
                    if r >= 0 and len(best) < k:
                        hit = self._hit(int(r), float(s))
                        best.setdefault(hit.id, hit)  # rows come best first: the first chunk of a document wins
                hits.append(list(best.values()))
            if depth >= len(self) or all(len(h) == k for h in hits):
                return hits
            depth *= 4

    def search_embeddings(
        self,
        queries: np.ndarray,
        k: int,
        engine: str = "exact",
        backend: str = "auto",
        ef_search: int | None = None,
        precision: str | None = None,
        rescore_multiplier: int = RESCORE_MULTIPLIER,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, document rows), each (Nq, k), of query embeddings; the engines and precisions of `search`."""
        precision = precision or self.precision
        check_precision(precision, rescore_multiplier)
        if len(self) == 0:
            raise ValueError(f"index {self.folder} holds no documents")
        if precision != "fp16":
            if engine != "exact":
                raise ValueError(f"precision {precision!r} applies to engine 'exact' (the flat scan); engine "
                                 f"{engine!r} searches its own vectors: pass precision='fp16'")  # fmt: skip
            return search_quantized(self._load_quantized(precision), queries, self.embeddings().shards, k,
                                    rescore_multiplier, self.device)  # fmt: skip
        if engine == "exact":
            return exact_search(queries, self.embeddings().shards, k, backend, self.device)
        if engine == "approximate":
            index = self._load_approximate()
            if index is None:
                raise ValueError(f"index {self.folder} has no approximate index; call build_approximate() first")
            return search_hnsw(index, queries, k, ef_search or self.meta["approximate"]["ef_search"])
        from ret2.milvus import search_collection

        if self.meta["milvus"] is None:
            raise ValueError(f"index {self.folder} has no Milvus collection; call to_milvus() first")
        return search_collection(self.meta["milvus"], queries, min(k, len(self)))

    def hits(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
        """The `Hit`s of `search_embeddings`' (scores, rows), one list per query, best first (rows of -1 dropped)."""
        return [[self._hit(int(r), float(s)) for s, r in zip(srow, rrow) if r >= 0] for srow, rrow in zip(scores, rows)]

    def _hit(self, row: int, score: float) -> Hit:
        r, root = self._locate(row)
        return Hit(r.get("doc_id", r["id"]), score, r["text"], r["image"], r["metadata"],
                   r["image"] and str(root / r["image"]), r.get("chunk"))  # fmt: skip

    # ------------------------------------------------------------------ approximate search (FAISS HNSW)

    def _refuse_multi_vector(self, what: str) -> None:
        if self.multi_vector:
            raise ValueError(
                f"{what} needs single-vector embeddings; this index's model is multi-vector (pooling='none', ReT-1 "
                "mode), whose late-interaction scores only the exact search computes: use engine='exact'"
            )

    def build_approximate(
        self, m: int = 32, ef_construction: int = 80, ef_search: int = 128, recall_sample: int = 1000, seed: int = 0
    ) -> dict:
        """Build a FAISS HNSW index (inner product, fp32 vectors) over every document, save it in the folder, and
        return (and store) its recall@10 against the exact search, measured with `recall_sample` stored documents
        as queries. Single-vector indexes only.

        Args:
            m: HNSW neighbours per node (memory: about 8 * m bytes per document on top of 4 * D).
            ef_construction: HNSW build depth. ef_search: default HNSW search depth.
            recall_sample: documents used as queries to measure recall@10. seed: which documents.
        """
        self._refuse_multi_vector("approximate search")
        index = build_hnsw(self.embeddings().shards, m, ef_construction)
        self._approximate = index
        self.meta["approximate"] = {"kind": "hnsw", "m": m, "ef_construction": ef_construction, "ef_search": ef_search}
        self._write_approximate()
        recall = self.approximate_recall(recall_sample, seed=seed)
        self.meta["approximate"].update(recall_at_10=recall, recall_documents=len(self),
                                        recall_queries=min(recall_sample, len(self)))  # fmt: skip
        self._save()
        logger.info("approximate index: recall@10 %.4f against exact (%d stored documents as queries)", recall,
                    min(recall_sample, len(self)))  # fmt: skip
        return self.meta["approximate"]

    def approximate_recall(self, sample: int = 1000, k: int = 10, seed: int = 0, ef_search: int | None = None) -> float:
        """Mean fraction of the exact top-k that the approximate index finds, over `sample` stored documents used as
        queries."""
        rows = np.sort(np.random.default_rng(seed).choice(len(self), min(sample, len(self)), replace=False))
        queries = np.stack([self._row_vector(int(r)) for r in rows]).astype(np.float32)
        _, exact = self.search_embeddings(queries, k, "exact")
        _, approx = self.search_embeddings(queries, k, "approximate", ef_search=ef_search)
        return recall_at_k(exact, approx)

    def _row_vector(self, row: int) -> np.ndarray:
        for shard in self.embeddings().shards:
            if row < len(shard):
                return np.asarray(shard[row])
            row -= len(shard)
        raise IndexError(row)

    def _load_approximate(self):
        if self._approximate is None and self.meta["approximate"] is not None:
            import faiss

            self._approximate = faiss.read_index(str(self.folder / APPROXIMATE_FILE))
        return self._approximate

    def _write_approximate(self) -> None:
        self._write_faiss(APPROXIMATE_FILE, self._approximate)

    def _write_faiss(self, name: str, index) -> None:
        import faiss

        serialize = faiss.serialize_index_binary if isinstance(index, faiss.IndexBinary) else faiss.serialize_index
        write_atomic(self.folder / name, lambda f: f.write(serialize(index).tobytes()))

    def _load_quantized(self, precision: str):
        """The codes of `precision`: the build's from QUANTIZED_FILE, another one made from the fp16 vectors."""
        self._refuse_multi_vector(f"precision {precision!r}")
        if precision not in self._quantized:
            if precision == self.precision:
                import faiss

                read = faiss.read_index_binary if precision == "binary" else faiss.read_index
                self._quantized[precision] = read(str(self.folder / QUANTIZED_FILE))
            else:
                self._quantized[precision] = build_quantized(self.embeddings().shards, precision)
        return self._quantized[precision]

    # ------------------------------------------------------------------ Milvus

    def to_milvus(
        self, uri: str, collection: str = "ret2", index_type: str = "FLAT", token: str = "", overwrite: bool = False
    ) -> dict:
        """Copy every document's embedding (fp32) and id into a Milvus collection and remember it for
        `search(..., engine="milvus")`. Single-vector indexes only.

        Args:
            uri: a Milvus Lite file (`./docs.db`, embedded, no server) or a server URI (`http://host:19530`).
            collection: the collection name. index_type: Milvus index ("FLAT" exact, "HNSW", "IVF_FLAT", "AUTOINDEX").
            token: credentials of a server ("user:password" or an API key); not stored in the index folder.
            overwrite: replace an existing collection of that name.
        """
        self._refuse_multi_vector("Milvus search")
        from ret2.milvus import write_collection

        embeddings = self.embeddings()
        target = {"uri": uri if "://" in uri else str(Path(uri).absolute()), "collection": collection,
                  "index_type": index_type}  # fmt: skip
        write_collection(target, embeddings.ids, embeddings.shards, token=token, overwrite=overwrite)
        self.meta["milvus"] = target
        self._save()
        return target


def _chunking(name_or_path: str, size: int | str, overlap: int) -> dict:
    """{"size", "overlap"} of `build`'s chunks, checked against the model's tokenizer: a chunk and the special tokens
    its text gets fit the tokenizer's limit ("auto": the largest that fits)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    special = len(processor.tokenizer("", verbose=False)["input_ids"])  # the BOS / EOS every text gets
    limit = text_limit(processor) - special
    size = limit if size == "auto" else size
    if size > limit:
        raise ValueError(f"chunk_size {size} is above the tokenizer's limit of {limit} tokens per text (plus "
                         f"{special} special tokens); give at most {limit}")  # fmt: skip
    if overlap >= size:
        raise ValueError(f"chunk_overlap {overlap} must be below the chunk size {size}")
    return {"size": size, "overlap": overlap}

