"""M2KR (PreFLMR) and ReT-M2KR: sub-dataset table and readers that normalise both layouts.

Two layouts hold the same benchmark:

* **ReT-M2KR jsonl** (what the ReT code evaluates). File names follow ReT's inference scripts, all in
  one folder: queries `<root>/<stem>_test.jsonl` (E-VQA: `evqa_test_m2kr.jsonl`), passages
  `<root>/<stem>_passages_test.jsonl`. Query lines: `data_id, instruction, question|null,
  image_path|null, passage_id (scalar or list), answer (list|null)`; passage lines: `passage_id,
  passage_text|null, passage_image_path|null`. Image paths are relative to a separate image root.
* **Original M2KR parquet** (the hub dataset's configs `<DS>_data` / `<DS>_passages`, split `test` /
  `test_passages`), read from a local copy: `<root>/<DS>_data/test-*.parquet` and
  `<root>/<DS>_passages/test_passages-*.parquet`. Columns `question_id, question, instruction,
  img_path, pos_item_ids, answers` and `passage_id, passage_content`.

Both are normalised to the same records (every path is overridable):

* query: ``{"qid": str, "text": str, "img_path": str | None, "pos_ids": list[str], "answers": list | None}``
  where text = instruction, plus " " + question when the question is not null (ReT's rule; PreFLMR's
  own script instead appends ":" to the instruction); a ReT-M2KR query with a non-empty `neg_passage_id` list
  (hard negatives, e.g. written by `ret2-mine`) also gets ``"neg_ids": list[str]``;
* passage: ``{"pid": str, "text": str, "img_path": str | None}`` (null text becomes "", as in ReT).

Ids are compared as strings; a scalar positive id counts as a one-element list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ret2.jsonl import check_unique_ids, read_json_lines


@dataclass(frozen=True)
class M2KRDataset:
    """One M2KR sub-dataset: its names in both layouts and the metrics reported for it.

    Attributes:
        name: display name, e.g. "E-VQA".
        stem: ReT-M2KR file stem, e.g. "evqa".
        config: original M2KR config prefix, e.g. "EVQA" (configs `EVQA_data`, `EVQA_passages`).
        recall_k: K of the reported Recall@K.
        pseudo_k: K of the reported Pseudo Recall@K, or None when the dataset has no answers.
        queries_file: ReT-M2KR query file name (default `<stem>_test.jsonl`).
    """

    name: str
    stem: str
    config: str
    recall_k: int
    pseudo_k: int | None = None
    queries_file: str = ""

    @property
    def metric_names(self) -> list[str]:
        """Reported metric names, as `compute_retrieval_metrics` names them."""
        return [f"recall@{self.recall_k}"] + ([f"pseudo_recall@{self.pseudo_k}"] if self.pseudo_k else [])

    def ret_paths(self, root: str | Path) -> tuple[Path, Path]:
        """(queries, passages) paths of the ReT-M2KR jsonl layout under `root`."""
        root = Path(root)
        return root / (self.queries_file or f"{self.stem}_test.jsonl"), root / f"{self.stem}_passages_test.jsonl"

    def parquet_paths(self, root: str | Path) -> tuple[list[Path], list[Path]]:
        """(query files, passage files) of the original M2KR parquet layout under `root`."""
        root = Path(root)
        return (sorted((root / f"{self.config}_data").glob("test-*.parquet")),
                sorted((root / f"{self.config}_passages").glob("test_passages-*.parquet")))


# MSMARCO of the original M2KR is left out: it has no query images and ReT-M2KR drops it.
LAYOUTS = ("ret", "parquet")  # ReT-M2KR jsonl files, or the original M2KR parquet configs
M2KR_DATASETS: dict[str, M2KRDataset] = {d.name: d for d in (
    M2KRDataset("WIT", "wit", "WIT", 10),
    M2KRDataset("IGLUE", "iglue", "IGLUE", 1),
    M2KRDataset("KVQA", "kvqa", "KVQA", 5),
    M2KRDataset("OVEN", "oven", "OVEN", 5),
    M2KRDataset("LLaVA", "llava", "LLaVA", 1),
    M2KRDataset("InfoSeek", "infoseek", "Infoseek", 5, 5),
    M2KRDataset("E-VQA", "evqa", "EVQA", 5, 5, queries_file="evqa_test_m2kr.jsonl"),
    M2KRDataset("OKVQA", "okvqa", "OKVQA", 5, 5),
)}


def m2kr_dataset(name: str) -> M2KRDataset:
    """The sub-dataset called `name` (a key of `M2KR_DATASETS`)."""
    if name not in M2KR_DATASETS:
        raise ValueError(f"unknown M2KR dataset {name!r}; valid names: {list(M2KR_DATASETS)}")
    return M2KR_DATASETS[name]


def _query(qid, instruction: str, question: str | None, img_path: str | None, pos_ids, answers) -> dict:
    pos = pos_ids if isinstance(pos_ids, (list, tuple)) else [pos_ids]
    text = instruction if question is None else f"{instruction} {question}"
    return {"qid": str(qid), "text": text, "img_path": img_path, "pos_ids": [str(p) for p in pos],
            "answers": None if answers is None else list(answers)}


def _passage(pid, text: str | None, img_path: str | None) -> dict:
    return {"pid": str(pid), "text": text or "", "img_path": img_path}


def _read_json_lines(path: str | Path, required: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, record) pairs, ValueError naming file and line for bad JSON or a missing field.
    Plain `json`, not Arrow: M2KR mixes scalar and list ids, string and dict answers in one column."""
    records = list(read_json_lines(path))
    for line_no, record in records:
        missing = [k for k in required if k not in record]
        if missing:
            raise ValueError(f"{path}:{line_no}: missing field(s) {missing} (required: {list(required)})")
    return records


def read_ret_m2kr_queries(path: str | Path) -> list[dict]:
    """Read a ReT-M2KR query jsonl into normalised query records."""
    out = []
    for line_no, r in _read_json_lines(path, ("data_id", "instruction", "question", "image_path", "passage_id")):
        if r["passage_id"] is None or r["passage_id"] == []:
            raise ValueError(f"{path}:{line_no}: query {r['data_id']!r} has no passage_id")
        query = _query(r["data_id"], r["instruction"], r["question"], r["image_path"], r["passage_id"], r.get("answer"))
        if r.get("neg_passage_id"):  # optional: hard negatives (ret2-mine)
            query["neg_ids"] = [str(p) for p in r["neg_passage_id"]]
        out.append(query)
    return out


def read_ret_m2kr_passages(path: str | Path) -> list[dict]:
    """Read a ReT-M2KR passage jsonl into normalised passage records; passage ids must be unique."""
    passages = [_passage(r["passage_id"], r["passage_text"], r["passage_image_path"])
                for _, r in _read_json_lines(path, ("passage_id", "passage_text", "passage_image_path"))]
    check_unique_ids([p["pid"] for p in passages], "passage_id", path)
    return passages


def _read_parquet(files: Sequence[str | Path], columns: Sequence[str]) -> dict[str, list]:
    import pyarrow as pa  # here, not at the top: importing the module stays light (every command's --help)
    import pyarrow.parquet as pq

    if not files:
        raise FileNotFoundError("no parquet files given (check the M2KR root and config name)")
    tables = []
    for f in files:
        missing = [c for c in columns if c not in pq.read_schema(f).names]
        if missing:
            raise ValueError(f"{f}: missing column(s) {missing} (required: {list(columns)})")
        tables.append(pq.read_table(f, columns=list(columns)))
    return pa.concat_tables(tables).to_pydict()


def read_m2kr_parquet_queries(files: Sequence[str | Path]) -> list[dict]:
    """Read original M2KR `<DS>_data` parquet files into normalised query records."""
    cols = ("question_id", "instruction", "question", "img_path", "pos_item_ids", "answers")
    table = _read_parquet(files, cols)
    return [_query(*values) for values in zip(*(table[c] for c in cols))]


def read_m2kr_parquet_passages(files: Sequence[str | Path]) -> list[dict]:
    """Read original M2KR `<DS>_passages` parquet files into normalised passage records (no images); passage ids
    must be unique."""
    table = _read_parquet(files, ("passage_id", "passage_content"))
    passages = [_passage(pid, text, None) for pid, text in zip(table["passage_id"], table["passage_content"])]
    check_unique_ids([p["pid"] for p in passages], "passage_id", ", ".join(map(str, files)))
    return passages


def _as_list(files: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [files] if isinstance(files, (str, Path)) else list(files)


def load_m2kr(
    name: str,
    root: str | Path | None = None,
    layout: str = "ret",
    queries: str | Path | Sequence[str | Path] | None = None,
    passages: str | Path | Sequence[str | Path] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Normalised (queries, passages) of sub-dataset `name` (test split).

    `layout` is "ret" (ReT-M2KR jsonl) or "parquet" (original M2KR). Paths default to the layout's
    names under `root`; `queries` / `passages` (a jsonl path, or parquet file(s)) override them.
    """
    dataset = m2kr_dataset(name)
    if layout not in ("ret", "parquet"):
        raise ValueError(f"layout {layout!r} is not one of ['ret', 'parquet']")
    if root is None and (queries is None or passages is None):
        raise ValueError("give `root`, or both `queries` and `passages`")
    if layout == "ret":
        default_q, default_p = dataset.ret_paths(root) if root is not None else (None, None)
        return read_ret_m2kr_queries(queries or default_q), read_ret_m2kr_passages(passages or default_p)
    default_q, default_p = dataset.parquet_paths(root) if root is not None else ([], [])
    return (read_m2kr_parquet_queries(_as_list(queries) if queries else default_q),
            read_m2kr_parquet_passages(_as_list(passages) if passages else default_p))
