"""An index of your own documents: a folder on disk that a ReT-2 model encodes once and searches many times.

    from ret2.index import Ret2Index

    index = Ret2Index.build("my-index", "photos/", model="path/or/hub-id")   # a folder of images (+ name.txt captions)
    hits = index.search("a red dress with long sleeves", k=5)               # [Hit(id, score, text, image, metadata)]
    hits = index.search({"text": "same dress in blue", "image": "query.jpg"}, k=5)

Documents come from a jsonl or csv file of records (`id`, `text`, `image`: a path relative to the image root, every
other field kept as metadata), a `datasets.Dataset` with those columns, or a folder of images (the id is the path
relative to the folder; `name.txt` beside `name.jpg` is its text). Each `build` / `add` writes one *part*: its
records (`parts/part-00000.jsonl`) and their embeddings, encoded through the evaluation's shard cache
(`ret2.encoding.encode_pool`: fp16 shards written atomically under `cache/`), so a killed build resumes from the last
finished shard when the same command runs again. `index.json` holds the model (name or path and
`model_fingerprint`), the encoding settings and the parts; `model_config.json` is a copy of the model's config. An
index opened with a model whose files differ from the one that built it refuses to search.

Search is exact by default (`ret2.search.search`, the function `eval.mbeir` and `eval.m2kr` rank with), for single
vectors (ReT-2) and multi-vector late interaction (ReT-1 mode, `pooling="none"`). `build_approximate` adds a FAISS HNSW
index for collections in the millions and measures its recall@10 against the exact search; `to_milvus` copies the
embeddings into a Milvus collection (a Milvus Lite file or a server URI), searched with `engine="milvus"`.

The command line is `ret2-index` (`python -m ret2.index`): build, add, search, info, approximate, milvus, train.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import torch

from ret2.encoding import (
    DTYPES,
    SHARD_SIZE,
    Embeddings,
    IMAGE_ORIENTATIONS,
    Item,
    Pool,
    cache_folder,
    check_orientation,
    encode_pool,
    load_model_and_processor,
    load_pool,
    model_fingerprint,
    write_atomic,
)
from ret2.search import BACKENDS, build_hnsw, recall_at_k, search_hnsw, unit_rows
from ret2.search import search as exact_search

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
INDEX_FORMAT = "ret2-index"
INDEX_VERSION = 2  # 2: the image orientation rule is in index.json and keys the cache
APPROXIMATE_FILE = "approximate.faiss"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ENGINES = ("exact", "approximate", "milvus")
RESERVED_FIELDS = ("id", "text", "image")

# What `build` / `add` take (see `raw_records`): a file or folder path, or records (a list of dicts, a datasets.Dataset).
Records = Union[str, os.PathLike, Iterable[Mapping]]


@dataclass
class Hit:
    """One search result: the document's id, its score (cosine, or late-interaction sum), text, image path (relative
    to the index's image root) and the other fields of its record."""

    id: str
    score: float
    text: str | None
    image: str | None
    metadata: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading records


def _record(raw: Mapping, where: str, root: Path, id_field: str, text_field: str, image_field: str) -> dict:
    """One stored record {"id", "text", "image", "metadata"} from a raw record; the image path made relative to
    `root` (an absolute path must lie under it)."""
    if raw.get(id_field) in (None, ""):
        raise ValueError(f"{where}: record has no {id_field!r} field (fields: {sorted(raw)})")
    text, image = raw.get(text_field) or None, raw.get(image_field) or None
    if text is None and image is None:
        raise ValueError(f"{where}: record {raw[id_field]!r} has neither text ({text_field!r}) nor an image ({image_field!r})")
    if image is not None:
        image = relative_image(image, root, where)
    metadata = {k: v for k, v in raw.items() if k not in (id_field, text_field, image_field)}
    return {"id": str(raw[id_field]), "text": None if text is None else str(text), "image": image, "metadata": metadata}


def relative_image(image: str | os.PathLike, root: Path, where: str) -> str:
    """An image path as stored: relative to `root`; an absolute path must lie under it (`where` names the record)."""
    image = str(image)
    if os.path.isabs(image):
        relative = os.path.relpath(os.path.normpath(image), root)
        if relative.startswith(".."):
            raise ValueError(f"{where}: image {image!r} lies outside the image root {root}; pass image_root=")
        image = relative
    return image


def _image_folder(folder: Path) -> Iterable[tuple[str, dict]]:
    """Raw records of a folder of images: id = path relative to the folder, text = `name.txt` beside it if any."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(folder).as_posix()
        caption = path.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else None
        yield relative, {"id": relative, "text": text, "image": relative}


def raw_records(source: Records, image_root: str | Path | None = None) -> tuple[Iterable[tuple[str, dict]], Path]:
    """(where, record) pairs of a source as it is (`where` names the file and line for errors), and the image root:
    a `.jsonl` or `.csv` file (root default: its folder), a folder of images (`_image_folder`; root: the folder), a
    `datasets.Dataset` or a list of dicts (root default: the current directory)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            root = Path(image_root or path)
            raw = ((f"{path}/{name}", r) for name, r in _image_folder(path))
            if image_root is not None:  # ids stay relative to the folder, images relative to the given root
                raw = ((w, {**r, "image": str((path / r["image"]).absolute())}) for w, r in raw)
        elif path.suffix == ".jsonl":
            root = Path(image_root or path.parent)
            raw = ((f"{path}:{n}", json.loads(line)) for n, line in enumerate(path.open(encoding="utf-8"), 1)
                   if line.strip())  # fmt: skip
        elif path.suffix == ".csv":
            root = Path(image_root or path.parent)
            raw = ((f"{path}:{n}", r) for n, r in enumerate(csv.DictReader(path.open(encoding="utf-8", newline="")), 2))
        elif not path.exists():
            raise FileNotFoundError(f"document source {str(path)!r} does not exist")
        else:
            raise ValueError(f"document source {str(path)!r}: expected a .jsonl or .csv file or a folder of images")
    else:
        root = Path(image_root or ".")
        raw = ((f"record {i}", r) for i, r in enumerate(source))
    return raw, root.absolute()


def read_records(
    source: Records,
    image_root: str | Path | None = None,
    id_field: str = "id",
    text_field: str = "text",
    image_field: str = "image",
) -> tuple[list[dict], Path]:
    """Records {"id", "text", "image", "metadata"} and the image root of a source of documents (see `raw_records`).

    Args:
        source: a `.jsonl` or `.csv` file, a folder of images, a `datasets.Dataset` or a list of dicts.
        image_root: the folder image paths are relative to.
        id_field, text_field, image_field: the names of those fields in the source; every other field is metadata.
    """
    raw, root = raw_records(source, image_root)
    fields_ = dict(id_field=id_field, text_field=text_field, image_field=image_field)
    records = [_record(r, where, root, **fields_) for where, r in raw]
    if not records:
        raise ValueError(f"document source {source!r} has no records")
    return records, root


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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the index


def _read_meta(folder: Path) -> dict:
    meta_path = folder / INDEX_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not a ret2 index: no {INDEX_FILE}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
        raise ValueError(f"{meta_path}: not a version-{INDEX_VERSION} {INDEX_FORMAT} file")
    return meta


def index_info(folder: str | Path) -> dict:
    """What the index at `folder` holds (documents, parts, model, settings, approximate index, Milvus collection),
    read from its `index.json` without loading the model."""
    meta = _read_meta(Path(folder))
    documents = sum(p["count"] for p in meta["parts"] if p["complete"])
    return {"folder": str(folder), "documents": documents, **{k: meta[k] for k in ("model", "config", "parts",
            "approximate", "milvus")}}  # fmt: skip


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Ret2Index:
    """A searchable folder of documents encoded by one ReT-2 model (see the module docstring).

    Create one with `Ret2Index.build(folder, source, model)`, open an existing one with `Ret2Index.open(folder)`.
    """

    def __init__(self, folder: Path, meta: dict, model: torch.nn.Module, processor, device: torch.device):
        self.folder, self.meta, self.model, self.processor, self.device = folder, meta, model, processor, device
        self._embeddings: Embeddings | None = None
        self._parts: list[_Part] | None = None
        self._approximate = None

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
        """
        folder = Path(folder)
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
        check_orientation(image_orientation)
        records, root = read_records(source, image_root, id_field, text_field, image_field)
        meta_path = folder / INDEX_FILE
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta["parts"][1:] or meta["parts"][0]["complete"]:
                raise FileExistsError(f"{folder} already holds an index; open it and call add(), or pick a new folder")
        else:
            if folder.exists() and any(folder.iterdir()):
                raise FileExistsError(f"{folder} exists and is not an index folder; pick an empty or new folder")
            folder.mkdir(parents=True, exist_ok=True)
            fingerprint = model_fingerprint(str(model))
            config = _model_config(str(model))
            (folder / "model_config.json").write_text(json.dumps(config, indent=1))
            meta = {
                "format": INDEX_FORMAT, "version": INDEX_VERSION,
                "model": {"name_or_path": str(model), "fingerprint": fingerprint},
                "config": {"dtype": dtype, "shard_size": shard_size, "batch_size": batch_size,
                           "image_root": str(root), "multi_vector": config.get("pooling") == "none",
                           "image_orientation": image_orientation},
                "parts": [], "approximate": None, "milvus": None,
            }  # fmt: skip
        index = cls._load(folder, meta, model, device)
        index._add_records(records, num_workers)
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
        device = torch.device(device or _default_device())
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
        return Path(self.meta["config"]["image_root"])

    @property
    def image_orientation(self) -> str:
        """How image files are read (documents and image queries alike), chosen at build: "upright" or "stored"."""
        return self.meta["config"]["image_orientation"]

    def __len__(self) -> int:
        return sum(p["count"] for p in self.meta["parts"] if p["complete"])

    def info(self) -> dict:
        """What the index holds: documents, parts, model, settings, approximate index and Milvus collection."""
        return index_info(self.folder)

    # ------------------------------------------------------------------ adding documents

    def _pool(self, part: dict) -> Pool:
        path = self.folder / "parts" / f"{part['name']}.jsonl"
        loader = _Part(path)
        return Pool(part["name"], loader.ids(), loader, (path,))

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
    ) -> int:
        """Encode more documents (see `read_records`) into the index as a new part; returns how many were added.
        Image paths are relative to the index's image root (absolute paths under it are accepted). Ids already in
        the index are refused. An interrupted `add` of the same documents resumes; one of other documents is
        discarded."""
        records, _ = read_records(source, self.image_root, id_field, text_field, image_field)
        return self._add_records(records, num_workers)

    def _add_records(self, records: list[dict], num_workers: int) -> int:
        parts_dir = self.folder / "parts"
        parts_dir.mkdir(exist_ok=True)
        pending = self.meta["parts"][-1] if self.meta["parts"] and not self.meta["parts"][-1]["complete"] else None
        name = pending["name"] if pending else f"part-{len(self.meta['parts']):05d}"
        path = parts_dir / f"{name}.jsonl"
        tmp = parts_dir / f".{name}.new"
        write_atomic(tmp, lambda f: f.writelines((json.dumps(r, ensure_ascii=False) + "\n").encode() for r in records))
        if pending is not None and pending["sha256"] == _sha256(tmp):
            tmp.unlink()  # the same documents: keep the file (its mtime keys the cache) and resume
            logger.info("resuming the interrupted encoding of %s", name)
        else:
            if pending is not None:
                logger.warning("discarding the interrupted encoding of %s (other documents)", name)
                shutil.rmtree(self.folder / "cache" / name, ignore_errors=True)
                self.meta["parts"].pop()
            self._check_new_ids([r["id"] for r in records])
            os.replace(tmp, path)
            pending = {"name": name, "count": len(records), "sha256": _sha256(path), "complete": False}
            self.meta["parts"].append(pending)
            self._save()
        pool = self._pool(pending)
        config = self.meta["config"]
        encode_pool(self.model, self.processor, pool, self._cache(pool), self.image_root, config["batch_size"],
                    config["shard_size"], num_workers, orientation=self.image_orientation)  # fmt: skip
        pending["complete"] = True
        self._embeddings = self._parts = None
        if self._load_approximate() is not None:  # keep the approximate index in step
            self._approximate.add(unit_rows(np.concatenate(load_pool(pool, self._cache(pool), config["shard_size"]).shards)))
            self._write_approximate()
        self._save()
        return len(records)

    def _check_new_ids(self, ids: list[str]) -> None:
        seen = set(self.embeddings().ids) if self.meta["parts"] and len(self) else set()
        for i in ids:
            if i in seen:
                raise ValueError(f"document id {i!r} is already in the index (or twice in the new documents)")
            seen.add(i)

    # ------------------------------------------------------------------ embeddings and records

    def embeddings(self) -> Embeddings:
        """The fp16 embeddings of every document (memory-mapped cache shards) and their ids, in index order."""
        if self._embeddings is None:
            parts = [self._pool(p) for p in self.meta["parts"] if p["complete"]]
            shard_size = self.meta["config"]["shard_size"]
            self._embeddings = Embeddings.concat([load_pool(p, self._cache(p), shard_size) for p in parts])
            self._parts = [p.load for p in parts]
        return self._embeddings

    def record(self, row: int) -> dict:
        """The stored record {"id", "text", "image", "metadata"} of document number `row`."""
        self.embeddings()
        for part in self._parts:
            if row < len(part):
                return part.records(row, row + 1)[0]
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
                                       image_orientation=self.image_orientation)  # fmt: skip
        return embeddings.astype(np.float16)

    def search(
        self,
        queries: Any,
        k: int = 10,
        engine: str = "exact",
        backend: str = "auto",
        ef_search: int | None = None,
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
        """
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not one of {list(ENGINES)}")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {list(BACKENDS)}")
        batch = isinstance(queries, list)
        vectors = self.encode_queries(queries if batch else [queries])
        scores, rows = self.search_embeddings(vectors, k, engine, backend, ef_search)
        hits = [[self._hit(int(r), float(s)) for s, r in zip(srow, rrow) if r >= 0] for srow, rrow in zip(scores, rows)]
        return hits if batch else hits[0]

    def search_embeddings(
        self, queries: np.ndarray, k: int, engine: str = "exact", backend: str = "auto", ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, document rows), each (Nq, k), of query embeddings; the engines of `search`."""
        if len(self) == 0:
            raise ValueError(f"index {self.folder} holds no documents")
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

    def _hit(self, row: int, score: float) -> Hit:
        r = self.record(row)
        return Hit(r["id"], score, r["text"], r["image"], r["metadata"])

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
        import faiss

        write_atomic(self.folder / APPROXIMATE_FILE, lambda f: f.write(faiss.serialize_index(self._approximate).tobytes()))

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


def _model_config(name_or_path: str) -> dict:
    """The model's config.json (a folder, or a Hub id's downloaded snapshot)."""
    from transformers.utils import cached_file

    path = Path(name_or_path) / "config.json" if os.path.isdir(name_or_path) else cached_file(name_or_path, "config.json")
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------- command line


def _parser():
    from ret2.cli import ArgumentParser
    from ret2.encoding import DTYPES as dtypes

    parser = ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\nSubcommands: build, add, search, info, "
                            "approximate, milvus, train (each has --help).")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def fields(p):
        p.add_argument("--id-field", default="id", help="the id field of the records")
        p.add_argument("--text-field", default="text", help="the text field of the records")
        p.add_argument("--image-field", default="image", help="the image path field of the records")

    def model_flags(p, required=False):
        p.add_argument("--model", required=required, help="ReT-2 model folder or Hub id" + (
            "" if required else " (default: the one that built the index; its files must be identical)"))
        p.add_argument("--device", help="cuda or cpu (default: cuda if available)")

    p = commands.add_parser("build", help="encode documents into a new index folder (resumes if interrupted)")
    p.add_argument("folder", help="the index folder to create")
    p.add_argument("source", help="documents: a .jsonl or .csv of records (id, text, image, metadata) or a folder of "
                   "images (name.txt beside name.jpg is its text)")  # fmt: skip
    model_flags(p, required=True)
    p.add_argument("--image-root", help="folder image paths are relative to (default: the source's folder)")
    p.add_argument("--batch-size", type=int, default=64, help="documents per model call")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="documents per cache shard (the resume unit)")
    p.add_argument("--dtype", choices=list(dtypes), default="float32", help="model dtype while encoding")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers opening images")
    p.add_argument("--image-orientation", choices=list(IMAGE_ORIENTATIONS), default="upright",
                   help="upright: turned by EXIF orientation (default); stored: as the file stores them, as the "
                        "benchmarks read images (docs/images.md). Kept in the index for add and search")  # fmt: skip
    fields(p)

    p = commands.add_parser("add", help="encode more documents into an existing index")
    p.add_argument("folder", help="the index folder")
    p.add_argument("source", help="documents, as for build; image paths relative to the index's image root")
    model_flags(p)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers opening images")
    fields(p)

    p = commands.add_parser("search", help="search the index with text, an image, or both")
    p.add_argument("folder", help="the index folder")
    p.add_argument("--text", help="query text")
    p.add_argument("--image", help="query image path (anywhere on disk)")
    p.add_argument("--queries", help="a .jsonl of queries, each {\"text\": ..., \"image\": ...} (instead of --text/--image)")
    p.add_argument("-k", "--k", type=int, default=10, help="results per query")
    p.add_argument("--engine", choices=list(ENGINES), default="exact", help="exact, approximate (HNSW) or milvus")
    p.add_argument("--json", action="store_true", help="print the hits as JSON lines (one list per query)")
    model_flags(p)

    p = commands.add_parser("info", help="print what the index holds (no model needed)")
    p.add_argument("folder", help="the index folder")

    p = commands.add_parser("approximate", help="build a FAISS HNSW index and report its recall@10 against exact")
    p.add_argument("folder", help="the index folder")
    p.add_argument("--m", type=int, default=32, help="HNSW neighbours per node")
    p.add_argument("--ef-construction", type=int, default=80, help="HNSW build depth")
    p.add_argument("--ef-search", type=int, default=128, help="HNSW search depth used by default")
    p.add_argument("--recall-sample", type=int, default=1000, help="stored documents used as queries to measure recall")
    model_flags(p)

    p = commands.add_parser("milvus", help="copy the embeddings into a Milvus collection (Lite file or server URI)")
    p.add_argument("folder", help="the index folder")
    p.add_argument("uri", help="a Milvus Lite file (./docs.db) or a server URI (http://host:19530)")
    p.add_argument("--collection", default="ret2", help="collection name")
    p.add_argument("--index-type", default="FLAT", help="Milvus index type: FLAT (exact), HNSW, IVF_FLAT, AUTOINDEX")
    p.add_argument("--overwrite", action="store_true", help="replace an existing collection of that name")
    model_flags(p)

    p = commands.add_parser("train", help="fine-tune a model on (query, document) pairs (see ret2.training.pairs)")
    p.add_argument("pairs", help="a .jsonl or .csv of pairs: query_text / query_image, doc_text / doc_image, doc_id")
    p.add_argument("--model", required=True, help="start model: ReT-2 folder or Hub id, CLIP / SigLIP checkpoint, or tiny")
    p.add_argument("--output-dir", required=True, help="where the fine-tuned model is saved")
    p.add_argument("--image-root", help="folder image paths are relative to (default: the pairs file's folder)")
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step (in-batch negatives)")
    p.add_argument("--learning-rate", type=float, default=1e-5, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def _print_hits(queries: list, hits: list[list[Hit]], as_json: bool) -> None:
    for query, found in zip(queries, hits):
        if as_json:
            print(json.dumps([vars(h) for h in found], ensure_ascii=False))
            continue
        print(f"query: {query}")
        for rank, h in enumerate(found, 1):
            print(f"{rank:4d}  {h.score:8.4f}  {h.id}  {h.text or ''}  {h.image or ''}")


def main(argv: list[str] | None = None) -> None:
    """`ret2-index`: build, add to, search, describe an index; approximate and Milvus search; train on pairs."""
    from ret2.cli import configure_logging

    args = _parser().parse_args(argv)
    configure_logging()
    fields_ = {k: getattr(args, k, None) for k in ("id_field", "text_field", "image_field")}
    if args.command == "build":
        index = Ret2Index.build(args.folder, args.source, args.model, args.image_root, args.batch_size, args.shard_size,
                                args.dtype, args.device, args.num_workers, **fields_,
                                image_orientation=args.image_orientation)  # fmt: skip
        print(f"{args.folder}: {len(index)} documents")
    elif args.command == "add":
        added = Ret2Index.open(args.folder, args.model, args.device).add(args.source, args.num_workers, **fields_)
        print(f"{args.folder}: added {added} documents")
    elif args.command == "search":
        if args.queries:
            queries = [{k: v for k, v in json.loads(line).items() if k in ("text", "image")}
                       for line in Path(args.queries).read_text(encoding="utf-8").splitlines() if line.strip()]  # fmt: skip
        elif args.text or args.image:
            queries = [{"text": args.text, "image": args.image}]
        else:
            raise ValueError("give --text, --image (or both), or --queries FILE.jsonl")
        hits = Ret2Index.open(args.folder, args.model, args.device).search(queries, args.k, args.engine)
        _print_hits(queries, hits, args.json)
    elif args.command == "info":
        print(json.dumps(index_info(args.folder), indent=1))
    elif args.command == "approximate":
        index = Ret2Index.open(args.folder, args.model, args.device)
        report = index.build_approximate(args.m, args.ef_construction, args.ef_search, args.recall_sample)
        print(f"{args.folder}: HNSW over {len(index)} documents, recall@10 {report['recall_at_10']:.4f} against exact "
              f"({report['recall_queries']} stored documents as queries)")  # fmt: skip
    elif args.command == "milvus":
        target = Ret2Index.open(args.folder, args.model, args.device).to_milvus(
            args.uri, args.collection, args.index_type, overwrite=args.overwrite)
        print(f"{args.folder}: written to Milvus collection {target['collection']!r} at {target['uri']}")
    else:
        from ret2.training.pairs import train_pairs

        train_pairs(args.pairs, args.model, args.output_dir, args.image_root, num_train_epochs=args.epochs,
                    per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed)  # fmt: skip
        print(f"fine-tuned model saved to {args.output_dir}; rebuild your index with --model {args.output_dir}")


if __name__ == "__main__":
    from ret2.cli import run_cli

    run_cli(main)
