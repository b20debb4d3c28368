"""Documents as records: read a `.jsonl` or `.csv` file, a folder of images, a `datasets.Dataset` or a list of dicts
into {"id", "text", "image", "metadata"} records whose image paths are relative to one image root, with every bad
record named by its file and line. `Ret2Index` indexes them; `ret2.training.pairs` reads pair records the same way.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Union

# A source of records (see `raw_records`): a file or folder path, or records (a list of dicts, a datasets.Dataset).
Records = Union[str, os.PathLike, Iterable[Mapping]]


def _record(raw: Mapping, where: str, root: Path, id_field: str, text_field: str, image_field: str) -> dict:
    """One stored record {"id", "text", "image", "metadata"} (and "stamp", the image file's [size, mtime_ns]) from a
    raw record; the image path made relative to `root` (an absolute path must lie under it)."""
    if raw.get(id_field) in (None, ""):
        raise ValueError(f"{where}: record has no {id_field!r} field (fields: {sorted(raw)})")
    text, image = raw.get(text_field) or None, raw.get(image_field) or None
    if text is None and image is None:
        raise ValueError(f"{where}: record {raw[id_field]!r} has neither text ({text_field!r}) nor an image ({image_field!r})")
    if image is not None:
        image = relative_image(image, root, where)
        if not (root / image).is_file():  # checked here, where the user's file and line are known
            raise FileNotFoundError(f"{where}: image {image!r} of record {raw[id_field]!r} not found at {root / image}")
    metadata = {k: v for k, v in raw.items() if k not in (id_field, text_field, image_field)}
    record = {"id": str(raw[id_field]), "text": None if text is None else str(text), "image": image, "metadata": metadata}
    if image is not None:  # the file's size and mtime, as rsync compares them: `upsert` / `sync` see a changed file
        stat = (root / image).stat()
        record["stamp"] = [stat.st_size, stat.st_mtime_ns]
    return record


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
    from modeling_ret2.processing_ret2 import IMAGE_EXTENSIONS  # the processor's list (importing it loads transformers)

    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
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
