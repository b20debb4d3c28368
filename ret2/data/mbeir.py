"""The M-BEIR benchmark protocol in one file: ids, the 16 evaluation rows, instructions, text
formatting, validated readers for queries / candidate pools / qrels (images: `ret2.data.images`).

Follows `docs/mbeir-m2kr.md` (facts from UniIR's code and the M-BEIR dataset card). All paths are
relative to the dataset root::

    query/test/mbeir_<dataset>_task<N>_test.jsonl
    cand_pool/local/mbeir_<dataset>_task<N>_cand_pool.jsonl   (mscoco: ..._task<N>_test_cand_pool.jsonl)
    cand_pool/global/mbeir_union_test_cand_pool.jsonl         (the 16 local test pools concatenated)
    qrels/test/mbeir_<dataset>_task<N>_test_qrels.txt
    instructions/query_instructions.tsv
    mbeir_images/<dataset>_images/...

Typical use (an encoder / eval script)::

    table = load_instructions(root / INSTRUCTIONS)          # or DEFAULT_INSTRUCTIONS
    images = ImageLoader(root)                              # ret2.data.images
    for row in EVAL_ROWS:
        for query in read_queries(row.query_path(root)):
            text = query_text(query, query_instruction(query, table))
            image = images(query["query_img_path"], query["qid"]) if query["query_img_path"] else None
        for cand in read_candidates(row.pool_path(root)):
            text, image_path = candidate_text(cand), cand["img_path"]
        positives = read_qrels(row.qrels_path(root))        # {qid: {did, ...}}
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, NamedTuple, NoReturn, Sequence

from ret2.jsonl import check_unique_ids, read_json_lines, record_line

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

DATASET_IDS: dict[str, int] = {
    "VisualNews": 0, "Fashion200K": 1, "WebQA": 2, "EDIS": 3, "NIGHTS": 4,
    "OVEN": 5, "InfoSeek": 6, "FashionIQ": 7, "CIRR": 8, "MSCOCO": 9,
}
MODALITIES: tuple[str, ...] = ("text", "image", "image,text")  # "image,text" in that order, never "text,image"
# task id -> (query modality, candidate modality); task 5 (image -> image,text) is unused by M-BEIR.
TASK_IDS: dict[int, tuple[str, str]] = {
    0: ("text", "image"), 1: ("text", "text"), 2: ("text", "image,text"),
    3: ("image", "text"), 4: ("image", "image"),
    6: ("image,text", "text"), 7: ("image,text", "image"), 8: ("image,text", "image,text"),
}
_SHORT = {"text": "t", "image": "i", "image,text": "(i,t)"}

# Fixed locations inside the dataset root.
GLOBAL_POOL = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"
TRAIN_QUERIES = "query/union_train/mbeir_union_up_train.jsonl"
EVAL_POOLS = ("local", "global", "both")  # what an evaluation searches: each row's local pool, the global pool, both
TRAIN_POOL = "cand_pool/global/mbeir_union_train_cand_pool.jsonl"
INSTRUCTIONS = "instructions/query_instructions.tsv"
INSTRUCTION_COLUMNS = ("query_modality", "cand_modality", "dataset_name", "dataset_id",
                       "prompt_1", "prompt_2", "prompt_3", "prompt_4")


@dataclass(frozen=True)
class EvalRow:
    """One of the 16 rows of UniIR's M-BEIR table: a test query file searched against its pool.

    Attributes:
        query_stem: query file name without `.jsonl`, e.g. `mbeir_mscoco_task0_test`.
        dataset: dataset name, a key of `DATASET_IDS`.
        task_id: M-BEIR task id, a key of `TASK_IDS`.
        pool_stem: local pool file name without `.jsonl`, e.g. `mbeir_mscoco_task0_test_cand_pool`.
        primary_k: K of the headline Recall@K of this row.
        ks: the Ks UniIR reports for this row ((1, 5, 10) or (10, 20, 50)).
    """

    query_stem: str
    dataset: str
    task_id: int
    pool_stem: str
    primary_k: int
    ks: tuple[int, ...]

    @property
    def dataset_id(self) -> int:
        return DATASET_IDS[self.dataset]

    @property
    def query_modality(self) -> str:
        return TASK_IDS[self.task_id][0]

    @property
    def cand_modality(self) -> str:
        return TASK_IDS[self.task_id][1]

    @property
    def label(self) -> str:
        """Short row label as in UniIR's table, e.g. `MSCOCO (t->i)`."""
        return f"{self.dataset} ({_SHORT[self.query_modality]}->{_SHORT[self.cand_modality]})"

    def query_path(self, root: str | Path) -> Path:
        return Path(root) / "query" / "test" / f"{self.query_stem}.jsonl"

    def pool_path(self, root: str | Path) -> Path:
        return Path(root) / "cand_pool" / "local" / f"{self.pool_stem}.jsonl"

    def qrels_path(self, root: str | Path) -> Path:
        return Path(root) / "qrels" / "test" / f"{self.query_stem}_qrels.txt"


def _row(dataset: str, task_id: int, primary_k: int = 5) -> EvalRow:
    name = dataset.lower()
    # Only the MSCOCO pools carry the split in their name.
    pool = f"mbeir_{name}_task{task_id}_test_cand_pool" if name == "mscoco" else f"mbeir_{name}_task{task_id}_cand_pool"
    ks = (10, 20, 50) if primary_k == 10 else (1, 5, 10)
    return EvalRow(f"mbeir_{name}_task{task_id}_test", dataset, task_id, pool, primary_k, ks)


EVAL_ROWS: tuple[EvalRow, ...] = (
    _row("VisualNews", 0), _row("MSCOCO", 0), _row("Fashion200K", 0, primary_k=10),
    _row("WebQA", 1), _row("EDIS", 2), _row("WebQA", 2),
    _row("VisualNews", 3), _row("MSCOCO", 3), _row("Fashion200K", 3, primary_k=10),
    _row("NIGHTS", 4), _row("OVEN", 6), _row("InfoSeek", 6),
    _row("FashionIQ", 7, primary_k=10), _row("CIRR", 7), _row("OVEN", 8), _row("InfoSeek", 8),
)

# prompt_1 of every row, from the UniIR paper's instruction table (fallback when the TSV is absent).
# Values are lists so that this table and `load_instructions` have the same type.
_WIKI_PARAGRAPH = "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image."
_WIKI_PAIR = "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image."
DEFAULT_INSTRUCTIONS: dict[tuple[int, str, str], list[str]] = {
    (row.dataset_id, row.query_modality, row.cand_modality): [prompt]
    for row, prompt in zip(EVAL_ROWS, (
        "Identify the news-related image in line with the described event.",
        "Find me an everyday image that matches the given caption.",
        "Based on the following fashion description, retrieve the best matching image.",
        "Retrieve passages from Wikipedia that provide answers to the following question.",
        "Find a news image that matches the provided caption.",
        "Find a Wikipedia image that answers this question.",
        "Find a caption for the news in the given photo.",
        "Find an image caption describing the following everyday image.",
        "Find a product description for the fashion item in the image.",
        "Find a day-to-day image that looks similar to the provided image.",
        _WIKI_PARAGRAPH,
        _WIKI_PARAGRAPH,
        "Find a fashion image that aligns with the reference image and style note.",
        "Retrieve a day-to-day image that aligns with the modification instructions of the provided image.",
        _WIKI_PAIR,
        _WIKI_PAIR,
    ))
}


def global_pool_stems() -> list[str]:
    """The local pools whose concatenation, in `EVAL_ROWS` order, is the global test pool.

    No pool file serves two rows (the 16 stems are distinct), so nothing needs deduplicating.
    """
    return [row.pool_stem for row in EVAL_ROWS]


def build_global_pool(root: str | Path) -> Path:
    """Write `cand_pool/global/mbeir_union_test_cand_pool.jsonl` under `root` as exactly the
    byte concatenation of the 16 local test pools (a missing final newline is added). Returns its path."""
    root = Path(root)
    out = root / GLOBAL_POOL
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as dst:
        for stem in global_pool_stems():
            with open(root / "cand_pool" / "local" / f"{stem}.jsonl", "rb") as src:
                shutil.copyfileobj(src, dst)
                size = src.tell()
                if size:
                    src.seek(size - 1)
                    if src.read(1) != b"\n":
                        dst.write(b"\n")
    return out


# ----------------------------------------------------------------------------- text and instructions

def format_string(s: str | None) -> str:
    """UniIR's text normalisation: drop `\\r`, strip spaces then `"`, capitalise the first letter,
    end with `.` unless it ends in `.`, `?` or `!`. Empty (or None) gives ``""``."""
    s = (s or "").replace("\r", "").strip().strip('"')
    if not s:
        return s
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".?!" else s + "."


def dataset_id_of(record_id: str) -> int:
    """Dataset id of a qid or did (`"<dataset_id>:<n>"`)."""
    head, sep, _ = str(record_id).partition(":")
    if not sep or not head.isdigit():
        raise ValueError(f"id {record_id!r} is not of the form '<dataset_id>:<n>'")
    return int(head)


def cand_modality(task_id: int) -> str:
    """Candidate modality of a task id, e.g. 2 -> "image,text"."""
    if task_id not in TASK_IDS:
        raise ValueError(f"task id {task_id!r} is not one of {sorted(TASK_IDS)}")
    return TASK_IDS[task_id][1]


def load_instructions(tsv_path: str | Path) -> dict[tuple[int, str, str], list[str]]:
    """Read `instructions/query_instructions.tsv` into {(dataset_id, query_modality, cand_modality): prompts}.

    The file is tab-separated with the header `INSTRUCTION_COLUMNS`; empty prompt cells are dropped.
    As in UniIR, a repeated key keeps its last line.
    """
    table: dict[tuple[int, str, str], list[str]] = {}
    with open(tsv_path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if tuple(header[:5]) != INSTRUCTION_COLUMNS[:5]:
            raise ValueError(f"{tsv_path}:1: header {header} does not start with {list(INSTRUCTION_COLUMNS[:5])}")
        for line_no, line in enumerate(f, start=2):
            if not line.strip():
                continue
            cells = line.rstrip("\r\n").split("\t")
            if len(cells) < 5:
                raise ValueError(f"{tsv_path}:{line_no}: expected at least 5 tab-separated cells, got {len(cells)}")
            qmod, cmod, _, dataset_id, *prompts = cells
            for name, value in (("query_modality", qmod), ("cand_modality", cmod)):
                if value not in MODALITIES:
                    raise ValueError(f"{tsv_path}:{line_no}: {name} {value!r} is not one of {list(MODALITIES)}")
            if not dataset_id.strip().isdigit():
                raise ValueError(f"{tsv_path}:{line_no}: dataset_id {dataset_id!r} is not an integer")
            prompts = [p for p in prompts if p.strip()]
            if not prompts:
                raise ValueError(f"{tsv_path}:{line_no}: no prompt for ({dataset_id}, {qmod}, {cmod})")
            table[(int(dataset_id), qmod, cmod)] = prompts
    return table


def pick_instruction(
    table: Mapping[tuple[int, str, str], Sequence[str]],
    dataset_id: int,
    query_modality: str,
    cand_modality: str,
    rng: random.Random | None = None,
) -> str:
    """The instruction for (dataset_id, query_modality, cand_modality), formatted with `format_string`.

    `rng=None` gives prompt_1 (deterministic evaluation); otherwise `rng.choice` over the prompts, as
    UniIR does with its seeded `random`. UniIR formats the prompt before joining it to the query text,
    which matters when a TSV prompt lacks its final period.
    """
    key = (dataset_id, query_modality, cand_modality)
    prompts = table.get(key)
    if not prompts:
        raise KeyError(f"no instruction for (dataset_id, query_modality, cand_modality) = {key}")
    return format_string(prompts[0] if rng is None else rng.choice(list(prompts)))


def query_instruction(
    record: Mapping, table: Mapping[tuple[int, str, str], Sequence[str]], rng: random.Random | None = None
) -> str:
    """The instruction of a query record: looked up by its qid's dataset id, its modality and the
    candidate modality of its task."""
    return pick_instruction(
        table, dataset_id_of(record["qid"]), record["query_modality"], cand_modality(record["task_id"]), rng
    )


def query_text(record: Mapping, instruction: str) -> str:
    """`format_string(instruction + " " + query_txt)`; an image-only query gets the instruction alone."""
    return format_string(f"{instruction} {record['query_txt'] or ''}")


def candidate_text(record: Mapping) -> str:
    """A candidate's text (``""`` when null): `format_string(txt)`, with no instruction.

    Candidates never get an instruction; their text goes through the same `format_string` as queries, as in
    UniIR's candidate dataset, so that scores are comparable with UniIR's published numbers.
    """
    return format_string(record["txt"])


# ----------------------------------------------------------------------------- validated readers
# pyarrow and datasets are imported where the files are read: importing the protocol (rows, instructions, text
# formatting) stays light, as every command's --help does.

_Rule = tuple["pa.ChunkedArray", Callable[[dict], str]]


class _Schema(NamedTuple):
    fields: dict[str, str]  # required fields and their Arrow type's name (`_arrow_type`)
    rules: Callable[["pa.Table"], list[_Rule]]  # (bad-record mask, message) pairs
    id_field: str


def _arrow_type(name: str) -> "pa.DataType":
    import pyarrow as pa

    return {"string": pa.string(), "strings": pa.list_(pa.string()), "int64": pa.int64()}[name]


def _modality_rules(table: "pa.Table", modality: str, txt: str, img: str) -> list[_Rule]:
    import pyarrow as pa
    import pyarrow.compute as pc

    mod = table[modality]
    return [
        (pc.invert(pc.is_in(mod, value_set=pa.array(MODALITIES))),
         lambda r: f"{modality} {r[modality]!r} is not one of {list(MODALITIES)}"),
        (pc.and_(pc.match_substring(mod, "text"), pc.is_null(table[txt])),
         lambda r: f"{modality} is {r[modality]!r} but {txt} is null"),
        (pc.and_(pc.match_substring(mod, "image"), pc.is_null(table[img])),
         lambda r: f"{modality} is {r[modality]!r} but {img} is null"),
    ]


def _null_rules(table: "pa.Table", fields: Sequence[str]) -> list[_Rule]:
    import pyarrow.compute as pc

    return [(pc.is_null(table[f]), lambda r, f=f: f"field {f!r} is missing or null") for f in fields]


def _query_rules(table: "pa.Table") -> list[_Rule]:
    import pyarrow as pa
    import pyarrow.compute as pc

    task_ids = pa.array(list(TASK_IDS), pa.int64())
    expected = pa.array([TASK_IDS[t][0] for t in TASK_IDS])  # query modality of each task id
    return _null_rules(table, ("qid", "query_modality", "pos_cand_list", "task_id")) + _modality_rules(
        table, "query_modality", "query_txt", "query_img_path"
    ) + [
        (pc.equal(pc.list_value_length(table["pos_cand_list"]), 0), lambda r: "pos_cand_list is empty"),
        (pc.invert(pc.is_in(table["task_id"], value_set=task_ids)),
         lambda r: f"task_id {r['task_id']!r} is not one of {sorted(TASK_IDS)}"),
        (pc.not_equal(pc.take(expected, pc.index_in(table["task_id"], value_set=task_ids)), table["query_modality"]),
         lambda r: f"query_modality {r['query_modality']!r} does not match task_id {r['task_id']} "
                   f"(expects {TASK_IDS[r['task_id']][0]!r})"),
    ]


def _candidate_rules(table: "pa.Table") -> list[_Rule]:
    return _null_rules(table, ("did", "modality")) + _modality_rules(table, "modality", "txt", "img_path")


_QUERIES = _Schema({"qid": "string", "query_txt": "string", "query_img_path": "string", "query_modality": "string",
                    "pos_cand_list": "strings", "task_id": "int64"}, _query_rules, "qid")
_CANDIDATES = _Schema({"did": "string", "txt": "string", "img_path": "string", "modality": "string"},
                      _candidate_rules, "did")


def _fits(value, type_name: str) -> bool:
    if value is None:
        return True
    if type_name == "strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if type_name == "int64":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def _raise_read_error(path: str, schema: _Schema, err: Exception) -> NoReturn:
    """Arrow's errors (bad JSON, mixed types) name neither file nor line: rescan in Python to find
    the offending line. Runs only once something has gone wrong."""
    for line_no, record in read_json_lines(path):
        for name, type_name in schema.fields.items():
            if not _fits(record.get(name), type_name):
                raise ValueError(
                    f"{path}:{line_no}: field {name!r} is {record[name]!r}, expected {_arrow_type(type_name)}"
                ) from err
    raise ValueError(f"{path}: could not be read as JSON lines: {err}") from err


def _validate(table: "pa.Table", path: str, offset: int, schema: _Schema) -> None:
    """Raise a ValueError naming `path` and the line of the first bad record of `table` (records
    `offset`, `offset + 1`, ... of the file). Vectorised with pyarrow: cheap on millions of lines."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name, type_name in schema.fields.items():
        if name not in table.column_names:
            raise ValueError(
                f"{path}:{record_line(path, offset)}: field {name!r} is missing (required: {list(schema.fields)})"
            )
        try:  # all-null columns come typed null, mixed ones as JSON: give each column its M-BEIR type
            table = table.set_column(table.column_names.index(name), name, table[name].cast(_arrow_type(type_name)))
        except (pa.ArrowException, ValueError, TypeError) as err:
            _raise_read_error(path, schema, err)
    first, describe = -1, None
    for mask, message in schema.rules(table):
        i = pc.index(pc.fill_null(mask, False), True).as_py()
        if i >= 0 and (first < 0 or i < first):
            first, describe = i, message
    if describe is not None:
        record = table.slice(first, 1).to_pylist()[0]
        raise ValueError(
            f"{path}:{record_line(path, offset + first)}: {describe(record)} (record {record[schema.id_field]!r})"
        )


def _arrow_batches(path: str, schema: _Schema) -> Iterator["pa.Table"]:
    import datasets

    try:  # errors while reading (not the consumer's) are re-raised naming the file and line
        stream = datasets.load_dataset("json", data_files=path, split="train", streaming=True)
        yield from stream.with_format("arrow").iter(batch_size=10_000)
    except Exception as err:  # noqa: BLE001
        _raise_read_error(path, schema, err)


def _stream(path: str, schema: _Schema) -> Iterator[dict]:
    offset = 0
    for batch in _arrow_batches(path, schema):
        _validate(batch, path, offset, schema)
        offset += batch.num_rows
        yield from batch.to_pylist()


def _read_jsonl(
    path: str | Path, streaming: bool, cache_dir: str | None, schema: _Schema
) -> datasets.Dataset | datasets.IterableDataset:
    import datasets

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    if streaming:  # validated batch by batch as the stream is consumed
        return datasets.IterableDataset.from_generator(_stream, gen_kwargs={"path": path, "schema": schema})
    try:
        ds = datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - re-raised naming the file and line
        _raise_read_error(path, schema, err)
    _validate(ds.data.table, path, 0, schema)
    if schema is _CANDIDATES:
        check_unique_ids(ds["did"], "did", path)
    return ds


def read_queries(
    path: str | Path, streaming: bool = False, cache_dir: str | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """Read an M-BEIR query file with `datasets`, validating it as it is read.

    Records have `qid, query_txt, query_img_path, query_modality, query_src_content, pos_cand_list,
    neg_cand_list, task_id`. Raises ValueError naming the file and the 1-based line of the first bad
    record: invalid JSON, a required field missing, null or of the wrong type, a bad modality string,
    the text or image its modality needs missing, an empty `pos_cand_list`, or a task id unknown or
    inconsistent with the modality. `cache_dir` is where `datasets` keeps its Arrow copy.
    """
    return _read_jsonl(path, streaming, cache_dir, _QUERIES)


def read_candidates(
    path: str | Path, streaming: bool = False, cache_dir: str | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """Read an M-BEIR candidate pool (`txt, img_path, modality, did, src_content`), validated like
    `read_queries` (invalid JSON, missing did / modality, bad modality string, text or image missing) and, when not
    streaming, for unique dids (`check_unique_ids`)."""
    return _read_jsonl(path, streaming, cache_dir, _CANDIDATES)


def read_qrels(path: str | Path) -> dict[str, set[str]]:
    """Read `<qid> 0 <did> <relevance> <task_id>` lines into {qid: {did, ...}}, keeping relevance > 0."""
    qrels: dict[str, set[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5 or not parts[3].lstrip("-").isdigit():
                raise ValueError(
                    f"{path}:{line_no}: expected '<qid> 0 <did> <relevance> <task_id>', got {line.strip()!r}"
                )
            if int(parts[3]) > 0:
                qrels.setdefault(parts[0], set()).add(parts[2])
    return qrels


def check_qrels(
    qrels: Mapping[str, set[str]], pool_dids: set[str], path: str | Path, datasets: set[int] | None = None
) -> None:
    """Raise ValueError naming `path` and the line of the first qrel whose did is not in `pool_dids`.

    Check against the global pool's dids: OVEN / InfoSeek local qrels legitimately list dids of the
    other dataset's pool, which are absent from their local pool (they just never hit there). With only some pools
    read, give their dataset ids as `datasets`: dids of other datasets are then not checked.
    """
    prefixes = None if datasets is None else {f"{d}:" for d in datasets}

    def unknown(did: str) -> bool:
        return did not in pool_dids and (prefixes is None or did[: did.find(":") + 1] in prefixes)

    if not any(unknown(d) for dids in qrels.values() for d in dids):
        return
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if len(parts) == 5 and unknown(parts[2]) and parts[2] in qrels.get(parts[0], ()):
                raise ValueError(
                    f"{path}:{line_no}: did {parts[2]!r} of query {parts[0]!r} is not in the candidate pool"
                )
    raise ValueError(f"{path}: some qrels dids are not in the candidate pool")
