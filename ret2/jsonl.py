"""JSON-lines helpers that every reader shares (benchmark pools, an index's records, training data): read records with
their line numbers, find the line of the n-th record, and refuse a pool whose ids repeat, naming both places."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence


def record_line(path: str | Path, index: int) -> int:
    """1-based line of the `index`-th (0-based) record of a JSON-lines file: readers skip blank lines. A scan of the
    file: run it on errors only."""
    line_no = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                if index == 0:
                    return line_no
                index -= 1
    return line_no + 1


def read_json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, record) of each non-blank line of a JSON-lines file, in plain Python;
    ValueError naming the file and line of one that is not a JSON object."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e})") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield line_no, record


def check_unique_ids(ids: Sequence[str], field: str = "did", source: str | Path | None = None) -> None:
    """ValueError naming the first id of a candidate pool that occurs twice and both its places: `file:line` when
    `source` is a JSON-lines file, else the 0-based record indices (of `source`, when given). The one duplicate check
    of every pool reader (M-BEIR, M2KR) and of training's `CandidatePool`."""
    if len(set(ids)) == len(ids):
        return
    first: dict[str, int] = {}
    for index, value in enumerate(ids):
        if value in first:
            break
        first[value] = index
    if source is not None and str(source).endswith(".jsonl"):
        where = f"{source}:{record_line(source, first[value])} and {source}:{record_line(source, index)}"
    else:
        where = f"records {first[value]} and {index}" + (f" of {source}" if source is not None else "")
    raise ValueError(f"{where}: {field} {value!r} appears twice in the candidate pool (ids must be unique)")
