"""Document metadata stored columnar: one Parquet file per index part (pyarrow), read as one Arrow table.

Each document's `metadata` (a dict of scalar fields: str, int, float, bool or null) becomes one row; each field one
column, its type inferred by Arrow over the part's documents (a field a document lacks is null there). Parts are
concatenated in index order; a field that only some parts have is null in the others, and ints widen to floats
where parts disagree. A filter (`ret2.index.filters`) is then one vectorised pass over the columns (`select`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .filters import FilterError, to_arrow

SUFFIX = ".metadata.parquet"  # beside each part's records: parts/<name>.metadata.parquet


def part_table(metadata: Sequence[dict], where: str = "documents"):
    """The Arrow table of one part's metadata dicts (one row per document). A field whose values have no common
    type (a string in one document, a number in another) is refused, naming the field and `where`."""
    import pyarrow as pa

    fields: dict[str, None] = {}
    for m in metadata:
        if not isinstance(m, dict):
            raise ValueError(f"{where}: a document's metadata must be a dict of fields, got {type(m).__name__} {m!r}")
        fields.update(dict.fromkeys(m))
    columns = {}
    for name in fields:
        try:
            columns[str(name)] = pa.array([m.get(name) for m in metadata])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"{where}: metadata field {name!r} holds values of different types ({err}); give every "
                             "document the same type for it (or leave it out)") from err  # fmt: skip
    return pa.table(columns) if columns else _empty(len(metadata))


def _empty(rows: int):
    """A table of `rows` rows and no columns (documents without metadata)."""
    import pyarrow as pa

    return pa.table({"_": pa.nulls(rows)}).drop_columns(["_"])


def write_part(path: Path, metadata: Sequence[dict], where: str = "documents") -> None:
    """Write one part's metadata to `path` (Parquet; written to a temporary name first, then renamed)."""
    import pyarrow.parquet as pq

    table = part_table(metadata, where)
    tmp = path.with_name(f".{path.name}.new")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_parts(paths: Sequence[Path], counts: Sequence[int]):
    """One Arrow table of the parts' metadata, in order (`counts`: each part's rows, for parts without fields)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path, count in zip(paths, counts):
        table = pq.read_table(path)
        if table.num_columns == 0:  # Parquet keeps no row count without columns
            table = _empty(count)
        if table.num_rows != count:
            raise ValueError(f"{path} holds {table.num_rows} rows of metadata, its part {count} documents")
        tables.append(table)
    if not tables:
        return pa.table({})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"the metadata of the index's parts have fields of different types: {err}") from err


def select(table, where: dict) -> np.ndarray:
    """The rows (sorted int64 positions in `table`) whose metadata match filter `where`: one vectorised pass."""
    import pyarrow as pa

    expression = to_arrow(where, table.schema)
    rows = pa.table({"__row": np.arange(table.num_rows, dtype=np.int64)})
    for name in table.column_names:
        rows = rows.append_column(name, table[name])
    try:
        return rows.filter(expression)["__row"].to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        raise FilterError(f"filter {where} cannot be evaluated over the metadata: {err}") from err
