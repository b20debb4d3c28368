"""The index folder: its manifest (`index.json`), its parts (the records of each `build` / `add`) and their cached
embeddings, written so that an interrupted write leaves the folder readable.

    index.json              the manifest: format version, model, settings, the parts, the engines built
    model_config.json       a copy of the model's config (read without loading the model)
    parts/part-00000.jsonl  the records of one build / add, one JSON object a line, read by byte offset
    parts/part-00000.metadata.parquet   their metadata, columnar (`ret2.index.metadata`), what filters read
    cache/part-00000/...    their fp16 embeddings (`ret2.cache` shards, keyed by the part's content)
    approximate-7.faiss, quantized-3.faiss, deleted-9.npy, keyword-8/   the engines' files, one name per save

Every file is written under a temporary name and renamed (`write_atomic`); the manifest is written last, so a part
counts once the manifest says it is complete. A file an engine rewrites (the approximate index, the codes, the deleted
rows, the keyword index) gets a new name for each save (`versioned`), which the manifest names: a writer killed before
its manifest save leaves the files the old manifest names untouched. Files that neither the manifest nor the one before
it names are removed after each save (`save`), so a reader holding the previous manifest can still open its files.
The document ids of the index are unique: `check_new_ids` is the one place that checks it.

One writer at a time: every write holds the folder's lock (`writer()`, a `filelock.FileLock` on `.lock`, whose holder
is described in `.lock.holder`), re-reads the manifest first (so it builds on what another process wrote) and counts
its save in the manifest's `revision`; a second writer waits up to `LOCK_TIMEOUT` seconds, then fails naming the
holder. Readers never lock: the manifest they read names complete parts only, and `changed()` tells them a newer
revision has been saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ret2.cache import Embeddings, Pool, cache_folder, encode_pool, load_pool, write_atomic, write_shard
from ret2.encoding import DTYPES, Item

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
INDEX_FORMAT = "ret2-index"
INDEX_VERSION = 2  # 2: each part has its own image root, the image orientation rule is kept; the cache is keyed by
# the parts' content (not mtimes) and that rule
DELETED_STEM = "deleted"  # deleted-<revision>.npy: the rows deleted (sorted int64), which no search returns; a new file
# per change, named in the manifest ("deleted_file"), so a deletion appears with the manifest that counts it
VERSIONED = ("approximate-*.faiss", "quantized-*.faiss", "deleted-*.npy", "keyword-*")  # the engines' files (`save`)
LOCK_FILE = ".lock"
LOCK_TIMEOUT = 600.0  # seconds a writer waits for another one to finish
STAMP_DOUBT = 2.0  # seconds after a manifest save in which `changed` reads the revision instead of trusting the stat


def _referenced(meta: dict) -> set[str]:
    """The files of the folder a manifest names: its engines' versioned files and its parts (`parts/<name>`)."""
    names = {meta.get("deleted_file"), meta.get("quantized_file"), (meta.get("approximate") or {}).get("file"),
             (meta.get("keyword") or {}).get("folder")}  # fmt: skip
    return {n for n in names if n} | {f"parts/{p['name']}" for p in meta.get("parts", [])}


class Part:
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


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_meta(folder: Path) -> dict:
    """The manifest of the index at `folder`, checked to be one this version reads."""
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
    meta = read_meta(Path(folder))
    documents = sum(p.get("documents", p["count"]) for p in meta["parts"] if p["complete"])
    rows = sum(p["count"] for p in meta["parts"] if p["complete"])  # chunks, in an index of chunked documents
    return {"folder": str(folder), "documents": documents, "rows": rows, **{k: meta[k] for k in ("model", "config",
            "parts", "approximate", "milvus")}}  # fmt: skip


class Storage:
    """The folder of one index: its manifest `meta` (a dict, saved by `save`), parts and cached embeddings.

    Rows are numbered across the complete parts in order; in an index of chunked documents a row is a chunk."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta
        self._stamp = self._manifest_stamp()
        self._named = _referenced(meta)  # what the manifest on disk names (as read or last saved): kept by `save`
        self._writing = False  # this object holds the write lock (nested writes take it once)
        self._embeddings: Embeddings | None = None
        self._parts: list[tuple[Part, Path]] | None = None  # each complete part's records and image root
        self._metadata = None  # the Arrow table of every row's metadata, read on first use
        self._deleted: np.ndarray | None = None

    def save(self) -> None:
        """Write the manifest (one more revision), then remove the files it and the previous one no longer name."""
        previous = self._named
        self.meta["revision"] = self.meta.get("revision", 0) + 1
        write_atomic(self.folder / INDEX_FILE, lambda f: f.write(json.dumps(self.meta, indent=1).encode()))
        self._stamp, self._named = self._manifest_stamp(), _referenced(self.meta)
        self._remove_unnamed(previous | self._named)

    def versioned(self, stem: str, suffix: str = "") -> str:
        """The file name `stem-<revision>suffix` for what the next manifest save will name (never one a saved manifest
        names already)."""
        return f"{stem}-{self.revision + 1}{suffix}"

    def _remove_unnamed(self, keep: set[str]) -> None:
        """Remove the versioned engine files, parts and part caches that no manifest in `keep` names."""
        for pattern in VERSIONED:
            for path in self.folder.glob(pattern):
                if path.name not in keep:
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        parts = {name.split("/", 1)[1] for name in keep if name.startswith("parts/")}
        for path in (self.folder / "parts").glob("part-*"):
            if path.name.split(".", 1)[0] not in parts:
                path.unlink(missing_ok=True)
        for path in (self.folder / "cache").glob("part-*"):
            if path.name not in parts:
                shutil.rmtree(path, ignore_errors=True)

    @property
    def revision(self) -> int:
        """How many times the manifest has been saved: a reader compares it to know the index has changed."""
        return self.meta.get("revision", 0)

    def _manifest_stamp(self) -> tuple | None:
        try:
            stat = (self.folder / INDEX_FILE).stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def changed(self) -> bool:
        """Whether another process has saved the manifest since this one read or saved it: one `stat`, and a read of
        its revision while the file is younger than `STAMP_DOUBT` seconds (two saves within a clock tick can leave
        the same size, mtime and even inode, the old one's freed and reused)."""
        stamp = self._manifest_stamp()
        if stamp != self._stamp:
            return True
        if stamp is None or time.time_ns() - stamp[0] > STAMP_DOUBT * 1e9:
            return False
        try:
            return read_meta(self.folder).get("revision", 0) != self.revision
        except (OSError, ValueError):
            return True

    def reload(self, meta: dict | None = None) -> None:
        """Read the manifest again (a newer revision; `meta`: it, already read) and forget what was read from the old
        one."""
        self.meta = read_meta(self.folder) if meta is None else meta
        self._stamp, self._named = self._manifest_stamp(), _referenced(self.meta)
        self._embeddings = self._parts = self._metadata = self._deleted = None

    @contextlib.contextmanager
    def writer(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the index's write lock (waiting up to `timeout`, default `LOCK_TIMEOUT`, seconds for another writer),
        with the manifest re-read if another process saved it meanwhile."""
        from filelock import FileLock, Timeout

        if self._writing:
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.folder / LOCK_FILE))
        holder = self.folder / f"{LOCK_FILE}.holder"
        try:
            lock.acquire(timeout=LOCK_TIMEOUT if timeout is None else timeout)
        except Timeout:
            who = holder.read_text() if holder.exists() else "unknown"
            raise TimeoutError(f"index {self.folder} is being written by another process ({who.strip()}); waited "
                               f"{LOCK_TIMEOUT if timeout is None else timeout:.0f} s for it to finish") from None
        try:
            holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "command": " ".join(sys.argv)[:200], "since": time.strftime("%Y-%m-%d %H:%M:%S")}))  # fmt: skip
            newest = read_meta(self.folder) if (self.folder / INDEX_FILE).exists() else None
            if newest is not None and newest.get("revision", 0) != self.revision:
                self.reload(newest)  # the revision itself, not the file's stamp: a writer must start from the newest
            self._writing = True
            yield
        finally:
            self._writing = False
            holder.unlink(missing_ok=True)
            lock.release()

    def write_file(self, name: str, data: bytes) -> None:
        """A file of the folder (an engine's), written atomically."""
        write_atomic(self.folder / name, lambda f: f.write(data))

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @property
    def complete_parts(self) -> list[dict]:
        return [p for p in self.meta["parts"] if p["complete"]]

    def __len__(self) -> int:
        return sum(p["count"] for p in self.complete_parts)

    @property
    def documents(self) -> int:
        """The documents stored and not deleted."""
        return sum(p.get("documents", p["count"]) for p in self.complete_parts) - self.meta.get("deleted_documents", 0)

    def deleted(self) -> np.ndarray:
        """The deleted rows, sorted (empty when none)."""
        if self._deleted is None:
            name = self.meta.get("deleted_file")
            self._deleted = np.load(self.folder / name) if name else np.zeros(0, np.int64)
        return self._deleted

    def live_rows(self) -> np.ndarray | None:
        """The rows a search may return: every row but the deleted ones; None when nothing is deleted."""
        deleted = self.deleted()
        return None if len(deleted) == 0 else np.setdiff1d(np.arange(len(self), dtype=np.int64), deleted)

    def rows_of(self) -> dict[str, list[int]]:
        """Each live document id's rows (a chunked document has one a chunk)."""
        out: dict[str, list[int]] = {}
        deleted = set(self.deleted().tolist())
        chunked = bool(self.config.get("chunking"))
        for row, i in enumerate(self.embeddings().ids if self.complete_parts and len(self) else []):
            if row not in deleted:
                out.setdefault(i.rpartition("#")[0] if chunked else i, []).append(row)
        return out

    def delete_rows(self, rows: list[int], documents: int) -> None:
        """Mark `rows` (of `documents` documents) deleted: a new deleted-rows file, which the manifest names once the
        caller saves it (until then readers see the index as it was)."""
        merged = np.union1d(self.deleted(), np.asarray(rows, np.int64)).astype(np.int64)
        data = io.BytesIO()
        np.save(data, merged)
        name = self.versioned(DELETED_STEM, ".npy")
        self.write_file(name, data.getvalue())
        self._deleted, self.meta["deleted_file"] = merged, name
        self.meta["deleted_documents"] = self.meta.get("deleted_documents", 0) + documents

    # ------------------------------------------------------------------ parts and their embeddings

    def pool(self, part: dict) -> Pool:
        path = self.folder / "parts" / f"{part['name']}.jsonl"
        loader = Part(path)
        return Pool(part["name"], loader.ids(), loader, (path,), digest=part["sha256"])

    def cache(self, pool: Pool) -> Path:
        return cache_folder(self.folder / "cache", pool, self.meta["model"]["fingerprint"],
                            DTYPES[self.config["dtype"]], self.config["shard_size"],
                            orientation=self.config["image_orientation"])  # fmt: skip

    def embeddings(self) -> Embeddings:
        """The full fp16 embeddings of every row (memory-mapped cache shards) and their ids, in row order."""
        if self._embeddings is None:
            complete = self.complete_parts
            pools = [self.pool(p) for p in complete]
            shard_size = self.config["shard_size"]
            self._embeddings = Embeddings.concat([load_pool(p, self.cache(p), shard_size) for p in pools])
            self._parts = [(pool.load, Path(part["image_root"])) for pool, part in zip(pools, complete)]
        return self._embeddings

    def part_embeddings(self, part: dict) -> list[np.ndarray]:
        """The full fp16 embedding shards of one complete part."""
        pool = self.pool(part)
        return load_pool(pool, self.cache(pool), self.config["shard_size"]).shards

    def locate(self, row: int) -> tuple[dict, Path]:
        """The stored record of row `row` and the image root of its part."""
        self.embeddings()
        for part, root in self._parts:
            if row < len(part):
                return part.records(row, row + 1)[0], root
            row -= len(part)
        raise IndexError(f"document {row} is out of range (the index holds {len(self)})")

    def document_ids(self) -> set[str]:
        """The ids of the documents in the index, deleted ones left out (a chunked document's id, not its chunks')."""
        return set(self.rows_of())

    def check_new_ids(self, ids: list[str], replacing: set[str] = frozenset()) -> None:
        """Refuse a document id already in the index (unless `replacing` it), or given twice."""
        seen = self.document_ids() - set(replacing)
        for i in ids:
            if i in seen:
                raise ValueError(f"document id {i!r} is already in the index (or twice in the new documents)")
            seen.add(i)

    def add_part(self, records: list[dict], documents: int, root: Path, document_ids: list[str], model, processor,
                 num_workers: int, embeddings: np.ndarray | None = None,
                 replacing: set[str] = frozenset()) -> dict:  # fmt: skip
        """Write `records` (rows; `documents` documents of ids `document_ids`) as a new part and encode it into the
        cache (or store `embeddings`, (rows, D) or (rows, K, D), computed elsewhere by the same model); an interrupted
        part of the same records and root resumes from its cached shards, one of other records is discarded. Returns
        the part's manifest entry, complete and saved."""
        parts_dir = self.folder / "parts"
        parts_dir.mkdir(exist_ok=True)
        pending = self.meta["parts"][-1] if self.meta["parts"] and not self.meta["parts"][-1]["complete"] else None
        name = pending["name"] if pending else self.next_part_name()
        path = parts_dir / f"{name}.jsonl"
        tmp = parts_dir / f".{name}.new"
        write_atomic(tmp, lambda f: f.writelines((json.dumps(r, ensure_ascii=False) + "\n").encode() for r in records))
        if pending is not None and pending["sha256"] == sha256(tmp) and pending["image_root"] == str(root):
            tmp.unlink()  # the same documents: resume from their cached shards
            logger.info("resuming the interrupted encoding of %s", name)
        else:
            if pending is not None:
                logger.warning("discarding the interrupted encoding of %s (other documents)", name)
                shutil.rmtree(self.folder / "cache" / name, ignore_errors=True)
                self.meta["parts"].pop()
            try:
                self.check_new_ids(document_ids, replacing)
            except ValueError:
                tmp.unlink()
                raise
            os.replace(tmp, path)
            self._write_metadata(name, records)
            pending = {"name": name, "count": len(records), "documents": documents, "sha256": sha256(path),
                       "image_root": str(root), "complete": False}  # fmt: skip
            self.meta["parts"].append(pending)
            self.save()
        pool = self.pool(pending)
        config = self.config
        if embeddings is None:
            encode_pool(model, processor, pool, self.cache(pool), root, config["batch_size"], config["shard_size"],
                        num_workers, orientation=config["image_orientation"])  # fmt: skip
        else:
            size = config["shard_size"]
            for shard, start in enumerate(range(0, len(records), size)):
                write_shard(self.cache(pool), shard, pool.ids[start : start + size], embeddings[start : start + size])
        pending["complete"] = True
        self._embeddings = self._parts = self._metadata = None
        return pending

    def next_part_name(self) -> str:
        """`part-NNNNN`, numbered after every part the manifest has held (compaction replaces parts under new names)."""
        self.meta["next_part"] = max(self.meta.get("next_part", 0), len(self.meta["parts"]))
        name = f"part-{self.meta['next_part']:05d}"
        self.meta["next_part"] += 1
        return name

    def compact_parts(self) -> int:
        """Rewrite every part holding deleted rows with its live rows only (records, metadata and cached embeddings
        copied, nothing encoded), each under a new name in the old one's place, and forget the deleted rows. The
        caller saves the manifest (until then readers see the parts as they were) and rebuilds the engines, whose
        row numbers have moved. Returns the rows removed."""
        deleted, start, removed = set(self.deleted().tolist()), 0, 0
        chunked = bool(self.config.get("chunking"))
        parts = []
        for part in self.complete_parts:
            rows = range(start, start + part["count"])
            start += part["count"]
            gone = [row - rows.start for row in rows if row in deleted]
            if not gone:
                parts.append(part)
                continue
            keep = np.setdiff1d(np.arange(part["count"]), gone)
            removed += len(gone)
            if not len(keep):  # every row of the part deleted: the part goes
                continue
            pool = self.pool(part)
            records = pool.load.records(0, part["count"])
            vectors = np.concatenate(self.part_embeddings(part))[keep]
            kept = [records[i] for i in keep]
            ids = [r["id"].rpartition("#")[0] if chunked else r["id"] for r in kept]
            name = self.next_part_name()
            path = self.folder / "parts" / f"{name}.jsonl"
            write_atomic(path, lambda f: f.writelines((json.dumps(r, ensure_ascii=False) + "\n").encode() for r in kept))
            self._write_metadata(name, kept)
            entry = {**part, "name": name, "count": len(kept), "documents": len(set(ids)), "sha256": sha256(path)}
            new_pool = self.pool(entry)
            size = self.config["shard_size"]
            for shard, first in enumerate(range(0, len(kept), size)):
                write_shard(self.cache(new_pool), shard, new_pool.ids[first : first + size], vectors[first : first + size])
            parts.append(entry)
        self.meta["parts"] = parts + [p for p in self.meta["parts"] if not p["complete"]]
        self.meta["deleted_file"], self.meta["deleted_documents"] = None, 0
        self._deleted = np.zeros(0, np.int64)
        self._embeddings = self._parts = self._metadata = None
        return removed

    # ------------------------------------------------------------------ metadata and texts

    def _metadata_path(self, name: str) -> Path:
        from .metadata import SUFFIX

        return self.folder / "parts" / f"{name}{SUFFIX}"

    def _write_metadata(self, name: str, records: list[dict]) -> None:
        """The part's metadata as Parquet. Metadata that is not columnar (a field of different types) is not written:
        a filter then names the field (`metadata`)."""
        from .metadata import write_part

        try:
            write_part(self._metadata_path(name), [r["metadata"] for r in records], f"part {name}")
        except ValueError as err:
            logger.warning("%s; metadata filters on this index will refuse until it is", err)

    def metadata(self):
        """The Arrow table of every row's metadata, in row order (parts whose Parquet is missing, e.g. indexes built
        before metadata was stored, get it written from their records first)."""
        from .metadata import read_parts, write_part

        if self._metadata is None:
            parts = self.complete_parts
            for part in parts:
                path = self._metadata_path(part["name"])
                if not path.exists():
                    records = Part(self.folder / "parts" / f"{part['name']}.jsonl")
                    write_part(path, [r["metadata"] for r in records.records(0, len(records))], f"part {part['name']}")
            self._metadata = read_parts([self._metadata_path(p["name"]) for p in parts], [p["count"] for p in parts])
        return self._metadata

    def texts(self) -> list[str | None]:
        """Every row's text, in row order."""
        out = []
        for part in self.complete_parts:
            records = Part(self.folder / "parts" / f"{part['name']}.jsonl")
            out += [r["text"] for r in records.records(0, len(records))]
        return out
