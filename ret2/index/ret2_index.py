"""`Ret2Index` and `Hit`: see the package docstring (`ret2.index`). The index composes its folder
(`ret2.index.storage`), its chunking (`ret2.index.chunking`) and its search engines (`ret2.index.engines`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from configuration_ret2 import Ret2Config
from ret2.cache import SHARD_SIZE, Embeddings
from ret2.data.images import check_orientation, find_unreadable
from ret2.encoding import DTYPES, truncate_array
from ret2.index import ENGINES
from ret2.index.chunking import check_chunk_arguments, chunk_records, chunking_settings
from ret2.index.engines import APPROXIMATE, ExactEngine, MilvusEngine, QuantizedEngine
from ret2.index.filters import check_filter
from ret2.index.hybrid import rrf, weighted
from ret2.index.metadata import select
from ret2.index.storage import INDEX_FILE, INDEX_FORMAT, INDEX_VERSION, Storage, index_info, read_meta
from ret2.model import default_device, load_model_and_processor, model_config, model_fingerprint
from ret2.options import FUSIONS, SEARCH_MODES
from ret2.records import Records, read_records
from ret2.search import BACKENDS, RESCORE_MULTIPLIER, check_precision, recall_at_k

logger = logging.getLogger(__name__)

ON_BAD_IMAGE = ("skip", "stop")  # what an unreadable image file does to `build` / `add`
SKIPPED_FILE = "skipped.jsonl"  # the documents left out for an unreadable image: id, image path, why, part
KEYWORD_FOLDER = "keyword"  # the BM25 index of the rows' texts (bm25s): keyword-<revision>/, named in the manifest
COMPACT_FRACTION = 0.25  # delete / upsert compact the index by themselves once this fraction of its rows is deleted

__all__ = ["Hit", "Ret2Index", "index_info"]


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


class Ret2Index:
    """A searchable folder of documents encoded by one ReT-2 model (see the module docstring).

    Create one with `Ret2Index.build(folder, source, model)`, open an existing one with `Ret2Index.open(folder)`.
    """

    def __init__(self, folder: Path, meta: dict, model: torch.nn.Module, processor, device: torch.device):
        self.folder, self.model, self.processor, self.device = folder, model, processor, device
        self.storage = Storage(folder, meta)
        self._embeddings = None  # the searched embeddings (`embeddings()`), loaded on first use
        self._engines: dict = {}  # "exact", "approximate", "milvus", or a precision -> its engine, loaded on first use
        self._row_of: dict[str, int] | None = None  # `_rows_by_id`

    @property
    def meta(self) -> dict:
        """The index's manifest (`index.json`)."""
        return self.storage.meta

    def _forget(self) -> None:
        self._embeddings, self._engines, self._row_of = None, {}, None

    def _rows_by_id(self) -> dict[str, int]:
        """Each stored row's id (a chunk's for chunked documents) -> its row: how Milvus hits map back."""
        if self._row_of is None:
            self._row_of = {i: row for row, i in enumerate(self.embeddings().ids)}
        return self._row_of

    @contextlib.contextmanager
    def _writing(self):
        """Hold the index's write lock (`Storage.writer`); what was read from an older manifest is dropped."""
        before = self.storage.revision
        with self.storage.writer():
            if self.storage.revision != before:
                self._forget()
            yield

    def refresh(self) -> bool:
        """Follow writes made by other processes: if the manifest has a newer revision, read it (new documents, a new
        approximate index, ...) and return True. `search` calls it first (one `stat` when nothing changed)."""
        if not self.storage.changed():
            return False
        self.storage.reload()
        self._forget()
        return True

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
        embeddings: np.ndarray | None = None,
        on_bad_image: str = "skip",
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
                (`quantized-<revision>.faiss`) beside the fp16 vectors that rescore their best candidates. Single vectors only.
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
            embeddings: the documents' embeddings, (N, D) or (N, K, D) in source order, computed elsewhere by this
                same model (e.g. by many machines, or kept from an earlier run): stored as given instead of encoded.
                Not with chunk_size.
            on_bad_image: what an image file that cannot be read (empty, truncated or corrupt, not an image) does:
                "skip" (its document is left out; every such file is found in one pass before encoding, logged, and
                listed in the index folder's `skipped.jsonl`, the count in the part's `skipped`) or "stop" (nothing is
                added; the error lists them all). A missing image file is always an error, named by its record.
        """
        folder = Path(folder)
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
        check_orientation(image_orientation)
        check_precision(precision)
        check_chunk_arguments(chunk_size, chunk_overlap)
        _check_on_bad_image(on_bad_image)
        records, root = read_records(source, image_root, id_field, text_field, image_field)
        if (folder / INDEX_FILE).exists():
            meta = read_meta(folder)
            if meta["parts"] and (meta["parts"][1:] or meta["parts"][0]["complete"]):
                raise FileExistsError(f"{folder} already holds an index; open it and call add(), or pick a new folder")
        else:
            if folder.exists() and any(not _written_before_manifest(p) for p in folder.iterdir()):
                raise FileExistsError(f"{folder} exists and is not an index folder; pick an empty or new folder")
            fingerprint = model_fingerprint(str(model))  # a bad model fails here, before the folder is made
            config = model_config(str(model))
            if precision != "fp16" and config.get("pooling") == "none":
                raise ValueError(f"precision {precision!r} needs single-vector embeddings; this model is multi-vector "
                                 "(pooling='none', ReT-1 mode), searched exactly: use precision='fp16'")
            Ret2Config.from_dict(config).check_truncate_dim(truncate_dim)  # so does a bad truncate_dim
            if embeddings is not None:  # and embeddings that do not fit
                _check_embeddings(embeddings, len(records), Ret2Config.from_dict(config).embedding_dim, chunk_size)
            chunking = None if chunk_size is None else chunking_settings(str(model), chunk_size, chunk_overlap)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "model_config.json").write_text(json.dumps(config, indent=1))
            meta = {
                "format": INDEX_FORMAT, "version": INDEX_VERSION,
                # a local model by its absolute path: the index opens from any directory, and after a copy
                "model": {"name_or_path": _model_name(model), "fingerprint": fingerprint},
                "config": {"dtype": dtype, "shard_size": shard_size, "batch_size": batch_size,
                           "image_root": str(root), "multi_vector": config.get("pooling") == "none",
                           "image_orientation": image_orientation, "precision": precision,
                           "truncate_dim": truncate_dim, "chunking": chunking},
                "parts": [], "approximate": None, "milvus": None,
            }  # fmt: skip
        index = cls._load(folder, meta, model, device)
        with index._writing():
            if not (folder / INDEX_FILE).exists():
                index.storage.save()  # an empty index first: a build killed from here on is resumed by the next one
            index._add_records(records, root, num_workers, embeddings, on_bad_image)
        return index

    @classmethod
    def open(cls, folder: str | Path, model: str | Path | None = None, device: str | None = None) -> Ret2Index:
        """The index at `folder`, with its model loaded (`model`: the same model at another path or Hub id; default:
        the name or path stored at build). Refuses a model whose files differ from the one that built the index."""
        meta = read_meta(Path(folder))
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

    @property
    def chunking(self) -> dict | None:
        """{"size", "overlap"} in tokens when documents are split into chunks (`build`'s chunk_size), else None."""
        return self.meta["config"].get("chunking")

    def _truncated(self, shards: list[np.ndarray]) -> list[np.ndarray]:
        """Cached (full) embeddings as searched: their `truncate_dim` prefixes, re-normalised (in memory)."""
        return shards if self.truncate_dim is None else [truncate_array(s, self.truncate_dim) for s in shards]

    def __len__(self) -> int:
        """The rows searched: documents, or their chunks in an index built with `chunk_size` (see `documents`)."""
        return len(self.storage)

    @property
    def documents(self) -> int:
        """The documents added (each counted once, however many chunks it has)."""
        return self.storage.documents

    def info(self) -> dict:
        """What the index holds: documents, parts, model, settings, approximate index and Milvus collection."""
        return index_info(self.folder)

    # ------------------------------------------------------------------ adding documents

    def add(
        self,
        source: Records,
        num_workers: int = 0,
        id_field: str = "id",
        text_field: str = "text",
        image_field: str = "image",
        image_root: str | Path | None = None,
        on_bad_image: str = "skip",
    ) -> int:
        """Encode more documents (see `read_records`) into the index as a new part; returns how many were added
        (unreadable images: `on_bad_image`, as for `build`).
        Image paths are relative to `image_root`, by default as for `build`: a `.jsonl` / `.csv` file's folder, the
        folder of a folder of images, and for in-memory records the index's image root. Ids already in the index are
        refused. An interrupted `add` of the same documents resumes; one of other documents is discarded. The
        approximate index, the int8 / binary codes and the Milvus collection follow."""
        _check_on_bad_image(on_bad_image)
        records, root = self._read(source, image_root, id_field, text_field, image_field)
        with self._writing():  # one writer at a time; on the newest manifest
            return self._add_records(records, root, num_workers, on_bad_image=on_bad_image)

    def _read(self, source: Records, image_root: str | Path | None, *fields: str) -> tuple[list[dict], Path]:
        """The records of a source for `add` / `upsert` / `sync`: in-memory records' images relative to the index's
        image root by default; a folder of images inside that root gets ids relative to it (`photos/2025-trip` adds
        `2025-trip/img.jpg`, so two camera folders with the same file names do not collide)."""
        if image_root is None and isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            folder = Path(source).absolute()
            if folder.is_relative_to(self.image_root):
                records, root = read_records(folder, self.image_root, *fields)
                for r in records:
                    r["id"] = r["image"]
                return records, root
        if image_root is None and not isinstance(source, (str, os.PathLike)):
            image_root = self.image_root
        return read_records(source, image_root, *fields)

    def _add_records(self, records: list[dict], root: Path, num_workers: int, embeddings: np.ndarray | None = None,
                     on_bad_image: str = "skip", replacing: dict[str, list[int]] | None = None) -> int:  # fmt: skip
        """Encode `records` as a new part and keep every engine in step; `replacing`: {id: rows} of stored documents
        the new ones replace, deleted in the same manifest save that adds the part."""
        replacing = replacing or {}
        skipped = self._skip_unreadable(records, root, on_bad_image) if embeddings is None else []
        if skipped:
            bad = {s["id"] for s in skipped}
            records = [r for r in records if r["id"] not in bad]
            if not records:
                raise ValueError(f"every image of the {len(skipped)} new documents is unreadable (see the log); nothing "
                                 "was added")  # fmt: skip
        documents, ids = len(records), [r["id"] for r in records]
        if embeddings is not None:
            _check_embeddings(embeddings, len(records), self.model.config.embedding_dim, self.chunking)
        rows = chunk_records(records, self.processor.tokenizer, self.chunking) if self.chunking else records
        first_row = len(self)
        approximate = self._approximate() if self.meta["approximate"] is not None else None  # on the old rows
        part = self.storage.add_part(rows, documents, root, ids, self.model, self.processor, num_workers, embeddings,
                                     set(replacing))  # fmt: skip
        if skipped:
            part["skipped"] = len(skipped)
            with open(self.folder / SKIPPED_FILE, "a", encoding="utf-8") as f:
                f.writelines(json.dumps({**s, "part": part["name"]}, ensure_ascii=False) + "\n" for s in skipped)
        new = self._truncated(self.storage.part_embeddings(part))
        self._embeddings = None
        self._engines = {name: e for name, e in self._engines.items() if name in ("approximate", "milvus")}
        if approximate is not None:  # kept in step
            approximate.add(new)
            self.meta["approximate"].update(approximate.save(self.storage))
        if self.precision != "fp16":  # recalibrated on every document, old and new
            self._engines[self.precision] = QuantizedEngine.build(self.embeddings().shards, self.precision, self.device)
            self.meta["quantized_file"] = self._engines[self.precision].save(self.storage)["file"]
        old_rows = [r for rows_ in replacing.values() for r in rows_]
        if old_rows:
            self.storage.delete_rows(old_rows, len(replacing))
        if self.meta["milvus"] is not None:
            if old_rows:
                self._milvus().delete([self.storage.embeddings().ids[r] for r in old_rows])
            self._milvus().add([r["id"] for r in rows], new, first_row, [r["text"] for r in rows],
                               [r["metadata"] for r in rows])  # fmt: skip
        self._row_of = None
        self.storage.save()
        if self.meta.get("keyword") is not None:  # the keyword index follows (bm25s rebuilds it over every text)
            self._build_keyword()
        if replacing:
            self._compact_if_due()
        return documents

    def delete(self, ids: Sequence[str], missing_ok: bool = False) -> int:
        """Delete documents by id (a chunked document with all its chunks); returns how many were deleted. No search
        returns them from then on, in any engine (the approximate index, the codes and the keyword index skip their
        rows; the Milvus collection deletes them), and their ids may be added again. An id not in the index is an
        error naming it, or, with `missing_ok`, left out of the count. The rows stay in their parts, marked deleted,
        until `compact` (which runs by itself past `COMPACT_FRACTION`)."""
        with self._writing():
            return self._delete(ids, missing_ok)

    def delete_where(self, filter: dict) -> int:
        """Delete every document whose metadata matches `filter` (the syntax of `search`'s); returns how many."""
        check_filter(filter)
        with self._writing():
            rows = select(self.storage.metadata(), filter)
            live = self.storage.live_rows()
            rows = rows if live is None else np.intersect1d(rows, live)
            ids = self.embeddings().ids
            chunked = self.chunking is not None
            doomed = list(dict.fromkeys(ids[r].rpartition("#")[0] if chunked else ids[r] for r in rows.tolist()))
            return self._delete(doomed, missing_ok=False) if doomed else 0

    def _delete(self, ids: Sequence[str], missing_ok: bool) -> int:
        rows_of = self.storage.rows_of()
        missing = [i for i in dict.fromkeys(ids) if i not in rows_of]
        if missing and not missing_ok:
            raise ValueError(f"{len(missing)} id(s) not in index {self.folder}: {missing[:10]}; nothing was deleted "
                           "(missing_ok=True, --missing-ok, deletes the others)")  # fmt: skip
        found = [i for i in dict.fromkeys(ids) if i in rows_of]
        if not found:
            return 0
        rows = [r for i in found for r in rows_of[i]]
        self.storage.delete_rows(rows, len(found))
        if self.meta["milvus"] is not None:
            self._milvus().delete([self.storage.embeddings().ids[r] for r in rows])
        self.storage.save()
        self._compact_if_due()
        return len(found)

    def compact(self) -> int:
        """Reclaim the space of deleted documents: the parts holding them are rewritten with their live rows (nothing
        is encoded), the int8 / binary codes and the keyword index rebuilt, IVF-PQ refilled with its trained cells and
        codebooks, HNSW rebuilt with its settings and its recall measured again; the Milvus collection is left as it
        is (it holds no deleted document, and its hits map back by id). Search results are the same before and after.
        `delete` and `upsert` call it once `COMPACT_FRACTION` of the rows are deleted. Returns the rows removed."""
        with self._writing():
            return self._compact()

    def _compact_if_due(self) -> None:
        if len(self) and len(self.storage.deleted()) >= COMPACT_FRACTION * len(self):
            removed = self._compact()
            logger.info("compacted %s: %d deleted rows removed (past %.0f%% deleted)", self.folder, removed,
                        100 * COMPACT_FRACTION)  # fmt: skip

    def _compact(self) -> int:
        deleted = len(self.storage.deleted())
        if not deleted or deleted == len(self):  # nothing deleted, or nothing to keep: left as it is
            return 0
        approximate = self._approximate() if self.meta["approximate"] is not None else None  # loaded on the old rows
        removed = self.storage.compact_parts()
        self._forget()
        shards = self.embeddings().shards
        if self.precision != "fp16":
            self._engines[self.precision] = QuantizedEngine.build(shards, self.precision, self.device)
            self.meta["quantized_file"] = self._engines[self.precision].save(self.storage)["file"]
        if approximate is not None:
            self._engines["approximate"] = approximate.rebuilt(shards)
            entry = self.meta["approximate"]
            entry.update(self._engines["approximate"].save(self.storage))
            entry.update(recall_at_10=self.approximate_recall(entry.get("recall_queries", 1000)),
                         recall_documents=len(self))  # fmt: skip
        keyword = self.meta.get("keyword") is not None
        if keyword:
            self.meta["keyword"] = None  # rebuilt below, on the new rows
        self.storage.save()
        if keyword:
            self._build_keyword()
        return removed

    def upsert(self, source: Records, num_workers: int = 0, id_field: str = "id", text_field: str = "text",
               image_field: str = "image", image_root: str | Path | None = None,
               on_bad_image: str = "skip") -> dict:  # fmt: skip
        """Add documents, replacing those of the same ids: a record equal to the stored one (text, image path and
        metadata) is left as it is, the others are encoded as a new part and their old versions deleted. Returns
        {"added", "replaced", "unchanged"} counts. Sources as for `add`."""
        _check_on_bad_image(on_bad_image)
        records, root = self._read(source, image_root, id_field, text_field, image_field)
        with self._writing():
            return self._upsert(records, root, num_workers, on_bad_image)

    def _upsert(self, records: list[dict], root: Path, num_workers: int, on_bad_image: str) -> dict:
        rows_of = self.storage.rows_of()
        changed, unchanged, replacing = [], 0, {}
        for r in records:
            rows = rows_of.get(r["id"])
            if rows is not None:
                old, old_root = self.storage.locate(rows[0])
                same_image = (old["image"] and str(old_root / old["image"])) == (r["image"] and str(root / r["image"]))
                # a chunked document is compared by its first chunk's text only when it has one chunk
                same_text = old["text"] == r["text"] and len(rows) == 1
                # the image file itself, by size and mtime, where both records carry them
                same_file = old.get("stamp") is None or r.get("stamp") is None or old["stamp"] == r["stamp"]
                if same_image and same_file and same_text and old["metadata"] == r["metadata"]:
                    unchanged += 1
                    continue
                replacing[r["id"]] = rows
            changed.append(r)
        added = self._add_records(changed, root, num_workers, on_bad_image=on_bad_image,
                                  replacing=replacing) if changed else 0  # fmt: skip
        return {"added": added - len(replacing), "replaced": len(replacing), "unchanged": unchanged}

    def sync(self, folder: str | Path | None = None, num_workers: int = 0, on_bad_image: str = "skip") -> dict:
        """Make the index match a folder of images again (default: the folder it was built from): files that are new
        are added, files changed (size or mtime, as rsync compares them, or their `name.txt` caption) are encoded
        again, and documents whose image lay in the folder and is gone are deleted; documents from elsewhere are left
        alone. Returns {"added", "replaced", "unchanged", "deleted"}. A sync that was interrupted is completed by
        running it again."""
        folder = Path(folder or self.image_root).absolute()
        if not folder.is_dir():
            raise NotADirectoryError(f"sync needs a folder of images; {folder} is not one")
        _check_on_bad_image(on_bad_image)
        records, root = self._read(folder, None, "id", "text", "image")
        with self._writing():
            present = {r["id"] for r in records}
            gone = []
            for doc_id, rows in self.storage.rows_of().items():
                record, record_root = self.storage.locate(rows[0])
                if doc_id not in present and record["image"] and (record_root / record["image"]).is_relative_to(folder):
                    gone.append(doc_id)
            counts = self._upsert(records, root, num_workers, on_bad_image)
            return {**counts, "deleted": self._delete(gone, missing_ok=False) if gone else 0}

    def _skip_unreadable(self, records: list[dict], root: Path, on_bad_image: str) -> list[dict]:
        """[{"id", "image", "why"}] of the records whose image file cannot be read, found in one pass; with "stop", an
        error naming them all."""
        paths = {r["id"]: str(root / r["image"]) for r in records if r["image"]}
        bad = find_unreadable(list(paths.values()))
        if not bad:
            return []
        listed = "\n".join(f"  {path}: {why}" for path, why in bad.items())
        if on_bad_image == "stop":
            raise ValueError(f"{len(bad)} image file(s) cannot be read; nothing was added (on_bad_image='skip', "
                             f"--on-bad-image skip, leaves their documents out instead):\n{listed}")  # fmt: skip
        logger.warning("%d image file(s) cannot be read; their documents are left out (listed in %s):\n%s", len(bad),
                       self.folder / SKIPPED_FILE, listed)  # fmt: skip
        return [{"id": i, "image": path, "why": bad[path]} for i, path in paths.items() if path in bad]

    # ------------------------------------------------------------------ embeddings and records

    def embeddings(self):
        """The fp16 embeddings of every document (memory-mapped cache shards; with `truncate_dim`, their truncated
        copies in memory) and their ids, in index order."""
        if self._embeddings is None:
            full = self.storage.embeddings()
            self._embeddings = Embeddings(full.ids, self._truncated(full.shards))
        return self._embeddings

    def record(self, row: int) -> dict:
        """The stored record {"id", "text", "image", "metadata"} of document number `row`."""
        return {k: v for k, v in self.storage.locate(row)[0].items() if k != "stamp"}

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
        rescore_multiplier: int | None = None,
        nprobe: int | None = None,
        filter: dict | None = None,
        mode: str = "vector",
        fusion: str = "rrf",
        weights: Sequence[float] = (0.5, 0.5),
    ) -> list[Hit] | list[list[Hit]]:
        """The top-k documents of one query (a list of `Hit`, best first) or of a batch (a list of queries: a list of
        such lists).

        Args:
            queries: a query (text, image, or both, as `Ret2Model.encode` takes it) or a list of queries.
            k: results per query.
            engine: "exact" (`ret2.search.search`), "approximate" (the HNSW or IVF-PQ index of `build_approximate`)
                or "milvus" (the collection of `to_milvus`).
            backend: the exact search's backend, one of `ret2.search.BACKENDS`.
            ef_search: HNSW search depth for engine="approximate" (default: the one chosen at build).
            precision: what engine="exact" scans, one of `ret2.search.PRECISIONS` (default: the build's): "fp16"
                (exact), "int8" or "binary" (the saved codes; another one than the build's is made in memory).
            rescore_multiplier: int8 / binary and IVF-PQ: candidates rescored from the fp16 vectors per result (0:
                none; default: `RESCORE_MULTIPLIER`, for IVF-PQ the one chosen at build).
            nprobe: IVF-PQ cells visited per query for engine="approximate" (default: the one chosen at build).
            filter: a metadata filter (`ret2.index.filters`: `{"album": "trip", "year": {"$gte": 2020}}`), applied
                before the top k (k results whenever k documents match) in every mode and engine. A field no
                document has matches nothing.
            mode: "vector" (the embeddings), "keyword" (BM25 over the documents' texts, `ret2.index.keyword`; each
                query needs a text) or "hybrid" (both rankings' top k, fused).
            fusion, weights: hybrid only: "rrf" (reciprocal-rank fusion, `ret2.index.hybrid.RRF_K`) or "weighted"
                (weights of the vector and the keyword ranking, their scores normalised as Milvus does).
        """
        _check_search(mode, fusion, filter)  # before the queries are encoded
        batch = isinstance(queries, list)
        queries = queries if batch else [queries]
        texts = None
        if mode != "vector":
            texts = [_query_text(q) for q in queries]
            missing = next((i for i, t in enumerate(texts) if not t), None)
            if missing is not None:
                raise ValueError(f"mode {mode!r} needs a text in every query; query {missing} ({queries[missing]!r}) "
                                 "has none")  # fmt: skip
        vectors = self.encode_queries(queries) if mode != "keyword" else None
        hits = self.search_encoded(vectors, k, texts, engine=engine, backend=backend, ef_search=ef_search,
                                   precision=precision, rescore_multiplier=rescore_multiplier, nprobe=nprobe,
                                   filter=filter, mode=mode, fusion=fusion, weights=weights)  # fmt: skip
        return hits if batch else hits[0]

    def search_encoded(self, vectors: np.ndarray | None, k: int, texts: Sequence[str] | None = None,
                       engine: str = "exact", filter: dict | None = None, mode: str = "vector", fusion: str = "rrf",
                       weights: Sequence[float] = (0.5, 0.5), **options) -> list[list[Hit]]:  # fmt: skip
        """`search` of queries already encoded (`encode_queries`' fp16-rounded float32 (Nq, D), None in keyword mode)
        with their `texts` (keyword and hybrid modes): a list of `Hit` lists. What a server that batches the
        encoding itself calls; `options` are `search`'s engine options (backend, ef_search, precision, ...)."""
        self.refresh()
        _check_search(mode, fusion, filter)
        if mode != "keyword" and vectors is None:
            raise ValueError(f"mode {mode!r} ranks by the embeddings: give the query vectors")
        if mode != "vector" and (texts is None or not all(texts)):
            raise ValueError(f"mode {mode!r} needs a text in every query")
        options = {"backend": "auto", "ef_search": None, "precision": None, "rescore_multiplier": None, "nprobe": None,
                   **options, "engine": engine}  # fmt: skip

        def rank(depth: int) -> tuple[np.ndarray, np.ndarray]:
            return self._rank(vectors, list(texts) if texts is not None else None, depth, mode, filter, fusion,
                              weights, options)  # fmt: skip

        return self._search_documents(rank, k) if self.chunking is not None else self.hits(*rank(k))

    def _rank(self, vectors: np.ndarray | None, texts: list[str] | None, depth: int, mode: str, filter: dict | None,
              fusion: str, weights: Sequence[float], options: dict) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(scores, rows) of the top `depth` rows of `mode` (filtered), by the chosen engine."""
        if len(self) == 0:
            raise ValueError(f"index {self.folder} holds no documents")
        if options["engine"] == "milvus":  # Milvus filters, keyword-searches and fuses itself
            return self._milvus().search(vectors, min(depth, len(self)), filter=filter, mode=mode, texts=texts,
                                         row_of=self._rows_by_id(), fusion=fusion, weights=weights)  # fmt: skip
        allowed = self._allowed(filter)
        vector = self.search_embeddings(vectors, depth, allowed=allowed, **options) if mode != "keyword" else None
        keyword = (self._keyword().search(texts, depth, allowed=self.storage.live_rows() if allowed is None else allowed)
                   if mode != "vector" else None)  # fmt: skip
        if mode == "vector":
            return vector
        if mode == "keyword":
            return keyword
        return rrf([vector, keyword], depth) if fusion == "rrf" else weighted([vector, keyword], depth, weights)

    def _allowed(self, filter: dict | None) -> np.ndarray | None:
        """The rows a filtered search may return: those `filter` keeps, less the deleted ones. None without a filter:
        every row but the deleted ones, which `search_embeddings` skips by itself."""
        if filter is None:
            return None
        live = self.storage.live_rows()
        kept = select(self.storage.metadata(), filter)
        return kept if live is None else np.intersect1d(kept, live)

    def _search_documents(self, rank, k: int) -> list[list[Hit]]:
        """Chunked documents: each query's top-k documents, each once, scored and shown by its best chunk. Ranks
        4k chunks (`rank(depth)`), then deeper (x4 each time) while a query has fewer than k documents and chunks
        remain."""
        depth = 4 * k
        while True:
            scores, rows = rank(min(depth, len(self)))
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
        rescore_multiplier: int | None = None,
        nprobe: int | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, document rows), each (Nq, k), of query embeddings; the engines and precisions of `search`.
        `allowed`: the only rows ranked (sorted; those a metadata filter keeps), None: all."""
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not one of {list(ENGINES)}")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {list(BACKENDS)}")
        precision = precision or (self.precision if engine == "exact" else "fp16")  # the build's is the flat scan's
        check_precision(precision, RESCORE_MULTIPLIER if rescore_multiplier is None else rescore_multiplier)
        if len(self) == 0:
            raise ValueError(f"index {self.folder} holds no documents")
        if precision != "fp16" and engine != "exact":
            raise ValueError(f"precision {precision!r} applies to engine 'exact' (the flat scan); engine "
                             f"{engine!r} searches its own vectors: pass precision='fp16'")  # fmt: skip

        def ranked(depth: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            return self._engine_search(queries, depth, engine, backend, ef_search, precision, rescore_multiplier,
                                       nprobe, allowed)  # fmt: skip

        if allowed is None and len(self.storage.deleted()) and engine != "milvus":
            # deleted rows are never returned: the engine ranks every row, deeper than k, and the deleted ones are
            # dropped (a mask of nearly every row, 990,000 of 1M, costs each engine far more than a few extra ranks)
            return self._skipping_deleted(lambda depth: ranked(depth, None), k)
        return ranked(k, allowed)

    def _engine_search(self, queries: np.ndarray, k: int, engine: str, backend: str, ef_search: int | None,
                       precision: str, rescore_multiplier: int | None, nprobe: int | None,
                       allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """The chosen engine's (scores, rows) over `allowed` (None: every stored row, deleted ones included)."""
        if precision != "fp16":
            multiplier = RESCORE_MULTIPLIER if rescore_multiplier is None else rescore_multiplier
            return self._quantized(precision).search(queries, k, allowed, rescore_multiplier=multiplier)
        if engine == "exact":
            return self._exact().search(queries, k, allowed, backend=backend)
        if engine == "approximate":
            approximate = self._approximate()
            if approximate.kind == "hnsw":
                return approximate.search(queries, k, allowed, ef_search=ef_search)
            return approximate.search(queries, k, allowed, nprobe=nprobe, rescore_multiplier=rescore_multiplier)
        # Milvus holds no deleted row (`delete` removed it); hits map back to rows by their ids
        return self._milvus().search(queries, min(k, len(self)), row_of=self._rows_by_id())

    def _skipping_deleted(self, rank, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top k live rows of `rank(depth)` (scores, rows over every row): ranked `depth` deep, about twice the
        share of deleted rows beyond k, deleted rows dropped, and ranked 4x deeper while a query has fewer than k
        live ones and rows remain. For the exact scan this is the masked scan's result."""
        deleted, rows_ = self.storage.deleted(), len(self)
        k = min(k, rows_ - len(deleted))
        depth = min(rows_, k + max(16, int(2 * k * len(deleted) / max(rows_ - len(deleted), 1))))
        while True:
            scores, rows = rank(depth)
            keep = (rows >= 0) & ~np.isin(rows, deleted)
            if depth >= rows_ or (keep.sum(axis=1) >= k).all():
                break
            depth = min(rows_, 4 * depth)
        out_scores, out_rows = np.full((len(rows), k), -np.inf, np.float32), np.full((len(rows), k), -1, np.int64)
        for q in range(len(rows)):
            found = np.flatnonzero(keep[q])[:k]
            out_scores[q, : len(found)], out_rows[q, : len(found)] = scores[q, found], rows[q, found]
        return out_scores, out_rows

    def hits(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
        """The `Hit`s of `search_embeddings`' (scores, rows), one list per query, best first (rows of -1 dropped)."""
        return [[self._hit(int(r), float(s)) for s, r in zip(srow, rrow) if r >= 0] for srow, rrow in zip(scores, rows)]

    def _hit(self, row: int, score: float) -> Hit:
        r, root = self.storage.locate(row)
        return Hit(r.get("doc_id", r["id"]), score, r["text"], r["image"], r["metadata"],
                   r["image"] and str(root / r["image"]), r.get("chunk"))  # fmt: skip

    # ------------------------------------------------------------------ engines

    def _exact(self) -> ExactEngine:
        if "exact" not in self._engines:
            self._engines["exact"] = ExactEngine(self.embeddings().shards, self.device)
        return self._engines["exact"]

    def _quantized(self, precision: str) -> QuantizedEngine:
        """The codes of `precision`: the build's from its file, another one made from the fp16 vectors."""
        self._refuse_multi_vector(f"precision {precision!r}")
        if precision not in self._engines:
            shards = self.embeddings().shards
            self._engines[precision] = (QuantizedEngine.load(self.storage, precision, shards, self.device,
                                                             self.meta.get("quantized_file"))
                                        if precision == self.precision
                                        else QuantizedEngine.build(shards, precision, self.device))  # fmt: skip
        return self._engines[precision]

    def _approximate(self):
        entry = self.meta["approximate"]
        if entry is None:
            raise ValueError(f"index {self.folder} has no approximate index; call build_approximate() first")
        if "approximate" not in self._engines:
            kind = APPROXIMATE[entry.get("kind", "hnsw")]
            self._engines["approximate"] = kind.load(self.storage, entry, self.embeddings().shards, self.device)
        return self._engines["approximate"]

    def _milvus(self) -> MilvusEngine:
        if self.meta["milvus"] is None:
            raise ValueError(f"index {self.folder} has no Milvus collection; call to_milvus() first")
        if "milvus" not in self._engines:
            self._engines["milvus"] = MilvusEngine.load(self.storage, self.meta["milvus"])
        return self._engines["milvus"]

    def _keyword(self):
        """The BM25 index of the rows' texts (`keyword/`), built on first use and rebuilt after an `add`."""
        from ret2.index.keyword import KeywordIndex

        if "keyword" not in self._engines:
            entry = self.meta.get("keyword")
            folder = self.folder / (entry or {}).get("folder", KEYWORD_FOLDER)
            if entry is not None and entry["rows"] == len(self) and folder.is_dir():
                self._engines["keyword"] = KeywordIndex.load(folder)
            else:
                with self._writing():
                    return self._build_keyword()
        return self._engines["keyword"]

    def _build_keyword(self):
        """Build and save the BM25 index of every row's text (holding the write lock)."""
        from ret2.index.keyword import KeywordIndex

        name = self.storage.versioned(KEYWORD_FOLDER)
        folder, tmp = self.folder / name, self.folder / f".{name}.new"
        keyword = KeywordIndex.build(self.storage.texts())
        shutil.rmtree(tmp, ignore_errors=True)
        keyword.save(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        self.meta["keyword"] = {"rows": len(self), "folder": name}
        self.storage.save()
        self._engines["keyword"] = keyword
        return keyword

    def _refuse_multi_vector(self, what: str) -> None:
        if self.multi_vector:
            raise ValueError(
                f"{what} needs single-vector embeddings; this index's model is multi-vector (pooling='none', ReT-1 "
                "mode), whose late-interaction scores only the exact search computes: use engine='exact'"
            )

    # ------------------------------------------------------------------ approximate search (FAISS HNSW or IVF-PQ)

    def build_approximate(self, kind: str = "hnsw", recall_sample: int = 1000, seed: int = 0, **params) -> dict:
        """Build an approximate index over every document, save it in the folder (replacing one built before), and
        return (and store in `index.json`) its settings, its bytes per document and its recall@10 against the exact
        search, measured with `recall_sample` stored documents as queries. Single-vector indexes only.

        Args:
            kind: "hnsw" (FAISS HNSW over fp32 vectors: params m=32 neighbours per node, ef_construction=80,
                ef_search=128, the default search depth; 4 * D + about 8 * m bytes per document) or "ivfpq" (FAISS
                IVF-PQ, rescored from the fp16 vectors: params nlist cells (default about sqrt(N)), m codes a
                document (default the largest divisor of D at most D / 4), nbits bits a code (default 8),
                nprobe=8 cells searched and rescore_multiplier=10, the search defaults; about m + 8 bytes per
                document).
            recall_sample: documents used as queries to measure recall@10. seed: which documents.
        """
        if kind not in APPROXIMATE:
            raise ValueError(f"kind {kind!r} is not one of {list(APPROXIMATE)}")
        self._refuse_multi_vector("approximate search")
        with self._writing():
            return self._build_approximate(kind, recall_sample, seed, params)

    def _build_approximate(self, kind: str, recall_sample: int, seed: int, params: dict) -> dict:
        shards = self.embeddings().shards
        engine = APPROXIMATE[kind].build(shards, self.device, **params)
        self._engines["approximate"] = engine
        self.meta["approximate"] = engine.save(self.storage)
        recall = self.approximate_recall(recall_sample, seed=seed)
        self.meta["approximate"].update(recall_at_10=recall, recall_documents=len(self),
                                        recall_queries=min(recall_sample, len(self)))  # fmt: skip
        self.storage.save()
        logger.info("approximate index (%s): recall@10 %.4f against exact (%d stored documents as queries), %.0f bytes "
                    "per document", kind, recall, min(recall_sample, len(self)),
                    self.meta["approximate"]["bytes_per_document"])  # fmt: skip
        return self.meta["approximate"]

    def approximate_recall(self, sample: int = 1000, k: int = 10, seed: int = 0, ef_search: int | None = None,
                           nprobe: int | None = None) -> float:  # fmt: skip
        """Mean fraction of the exact top-k that the approximate index finds, over `sample` stored documents used as
        queries."""
        rows = np.sort(np.random.default_rng(seed).choice(len(self), min(sample, len(self)), replace=False))
        queries = np.stack([self._row_vector(int(r)) for r in rows]).astype(np.float32)
        _, exact = self.search_embeddings(queries, k, "exact", precision="fp16")
        _, approx = self.search_embeddings(queries, k, "approximate", ef_search=ef_search, nprobe=nprobe)
        return recall_at_k(exact, approx)

    def _row_vector(self, row: int) -> np.ndarray:
        for shard in self.embeddings().shards:
            if row < len(shard):
                return np.asarray(shard[row])
            row -= len(shard)
        raise IndexError(row)

    # ------------------------------------------------------------------ Milvus

    def to_milvus(
        self, uri: str, collection: str = "ret2", index_type: str = "FLAT", token: str = "", overwrite: bool = False
    ) -> dict:
        """Copy every document's embedding (fp32), id, text and metadata into a Milvus collection and remember it for
        `search(..., engine="milvus")`; later `add`s go to it too. Single-vector indexes only.

        Args:
            uri: a Milvus Lite file (`./docs.db`, embedded, no server) or a server URI (`http://host:19530`).
            collection: the collection name. index_type: Milvus index ("FLAT" exact, "HNSW", "IVF_FLAT", "AUTOINDEX").
            token: credentials of a server ("user:password" or an API key); not stored in the index folder.
            overwrite: replace an existing collection of that name.
        """
        self._refuse_multi_vector("Milvus search")
        with self._writing():
            return self._to_milvus(uri, collection, index_type, token, overwrite)

    def _to_milvus(self, uri: str, collection: str, index_type: str, token: str, overwrite: bool) -> dict:
        embeddings = self.embeddings()
        records = [self.record(row) for row in range(len(self))]
        target = {"uri": uri if "://" in uri else str(Path(uri).absolute()), "collection": collection,
                  "index_type": index_type}  # fmt: skip
        engine = MilvusEngine.build(target, embeddings.ids, embeddings.shards, token=token, overwrite=overwrite,
                                    texts=[r["text"] for r in records], metadata=[r["metadata"] for r in records])  # fmt: skip
        self._engines["milvus"] = engine
        self.meta["milvus"] = engine.save(self.storage)
        self.storage.save()
        return target


def _check_search(mode: str, fusion: str, filter: dict | None) -> None:
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode {mode!r} is not one of {list(SEARCH_MODES)}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion {fusion!r} is not one of {list(FUSIONS)}")
    if filter is not None:
        check_filter(filter)


def _written_before_manifest(path: Path) -> bool:
    """Whether `path` is a file a build writes before its first manifest (a build killed then may start again)."""
    return path.name in ("model_config.json", ".lock", ".lock.holder") or path.name.startswith(".")


def _model_name(model: str | Path) -> str:
    """How the manifest names the model: a local folder's absolute path, a Hub id as given."""
    local = Path(model).expanduser()
    return str(local.resolve()) if local.exists() else str(model)


def _check_embeddings(embeddings: np.ndarray, documents: int, width: int, chunking) -> None:
    if chunking:
        raise ValueError("embeddings= cannot be given for an index of chunked documents (chunk_size)")
    if len(embeddings) != documents or embeddings.shape[-1] != width:
        raise ValueError(f"embeddings of shape {tuple(embeddings.shape)} do not match {documents} documents of the "
                         f"model's {width}-d embeddings")  # fmt: skip


def _query_text(query: Any) -> str | None:
    """The text of a query in any form `search` takes (a str; the "text" of a dict; the first of a tuple)."""
    if isinstance(query, str):
        return query
    if isinstance(query, dict):
        return query.get("text")
    if isinstance(query, tuple):
        return query[0]
    return None


def _check_on_bad_image(on_bad_image: str) -> None:
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image {on_bad_image!r} is not one of {list(ON_BAD_IMAGE)}")
