"""Training data for ReT-2: query files in M-BEIR or ReT-M2KR form, with their candidate pool, as contrastive examples.

An example is one query, one positive drawn from its positives and, optionally, hard negatives, each an item
``{"id": str, "text": str, "img_path": str | None}`` (image paths stay relative to the dataset root: the collator
opens them). Every random choice of an example (the positive, the hard negatives, the M-BEIR instruction) comes from
a generator seeded with ``(seed, epoch, qid)``: a run is reproducible, and a resumed run draws what the
uninterrupted one would have drawn, whatever the order, worker or rank that serves the query.

Pools stay in Arrow (`datasets`, memory-mapped when read from a file) with one ``did -> row`` dict beside them, which
holds millions of ids comfortably; with ``streaming=True`` the query file is streamed instead of loaded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from ret2.data.m2kr import read_ret_m2kr_passages, read_ret_m2kr_queries
from ret2.data.mbeir import (
    DEFAULT_INSTRUCTIONS,
    candidate_text,
    query_instruction,
    query_text,
    read_candidates,
    read_queries,
)
from ret2.jsonl import check_unique_ids

if TYPE_CHECKING:  # imported where tables are built: importing the module (and every --help) stays light
    import datasets

Instructions = Mapping[tuple[int, str, str], Sequence[str]]


@dataclass(frozen=True)
class Query:
    """A training query: its final text, optional image, positive dids and hard-negative dids."""

    qid: str
    text: str
    img_path: str | None
    positive_ids: list[str]
    negative_ids: list[str]


# A query record of the file and a generator (None: deterministic, e.g. evaluation) -> a Query.
QueryBuilder = Callable[[Mapping, "random.Random | None"], Query]


def mbeir_query_builder(instructions: Instructions = DEFAULT_INSTRUCTIONS) -> QueryBuilder:
    """M-BEIR protocol: text = `format_string(instruction + " " + query_txt)`. With a generator the instruction is
    drawn among the prompts of the (dataset, query modality, candidate modality) row, as UniIR trains; without one it
    is prompt_1."""

    def build(record: Mapping, rng: random.Random | None) -> Query:
        text = query_text(record, query_instruction(record, instructions, rng))
        negatives = record.get("neg_cand_list") or []
        return Query(record["qid"], text, record["query_img_path"], list(record["pos_cand_list"]), list(negatives))

    return build


def m2kr_query(record: Mapping, rng: random.Random | None = None) -> Query:
    """A query record normalised by `ret2.data.m2kr` (its text already joins instruction and question; `neg_ids`,
    optional, its hard negatives)."""
    return Query(record["qid"], record["text"], record["img_path"], list(record["pos_ids"]),
                 list(record.get("neg_ids") or []))


class CandidatePool:
    """did -> candidate item over an Arrow table: rows stay in Arrow, one dict maps each did to its row.

    Args:
        table: one row per candidate.
        id_column, image_column: the columns of the did and of the image path (relative, or null).
        format_text: turns a row into the candidate's text (M-BEIR: `candidate_text`, no instruction).
    """

    def __init__(
        self,
        table: datasets.Dataset,
        id_column: str,
        image_column: str,
        format_text: Callable[[Mapping], str],
    ):
        self.table, self.id_column, self.image_column, self.format_text = table, id_column, image_column, format_text
        self.rows = {did: row for row, did in enumerate(table[id_column])}
        if len(self.rows) != len(table):
            check_unique_ids(table[id_column], id_column)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, did: str) -> bool:
        return did in self.rows

    def item(self, row: int) -> dict:
        record = self.table[row]
        return {"id": record[self.id_column], "text": self.format_text(record), "img_path": record[self.image_column]}

    def __getitem__(self, did: str) -> dict:
        if did not in self.rows:
            raise KeyError(f"did {did!r} is not in the candidate pool")
        return self.item(self.rows[did])

    def texts(self) -> Iterator[str]:
        for row in range(len(self.table)):
            yield self.item(row)["text"]


def mbeir_pool(path: str | Path, cache_dir: str | None = None) -> CandidatePool:
    """An M-BEIR candidate pool (`read_candidates`: validated, cached as Arrow by `datasets`)."""
    return CandidatePool(read_candidates(path, cache_dir=cache_dir), "did", "img_path", candidate_text)


def m2kr_pool(path: str | Path) -> CandidatePool:
    """A ReT-M2KR passage file; passage ids become strings, null texts "" (ReT's rule)."""
    import datasets

    table = datasets.Dataset.from_list(read_ret_m2kr_passages(path))
    return CandidatePool(table, "pid", "img_path", lambda record: record["text"])


def m2kr_queries(path: str | Path) -> datasets.Dataset:
    """ReT-M2KR queries as an Arrow table of normalised records (`qid, text, img_path, pos_ids, neg_ids`; answers dropped:
    they mix strings and dicts, which Arrow cannot hold in one column, and training does not use them)."""
    import datasets

    records = [{"qid": r["qid"], "text": r["text"], "img_path": r["img_path"], "pos_ids": r["pos_ids"],
                "neg_ids": r.get("neg_ids", [])} for r in read_ret_m2kr_queries(path)]  # fmt: skip
    return datasets.Dataset.from_list(records)


def _rng(seed: int, epoch: int, qid: str) -> random.Random:
    # A str seed is hashed with SHA-512: the same stream in every process, whatever PYTHONHASHSEED.
    return random.Random(f"{seed}:{epoch}:{qid}")


def make_example(
    query: Query, pool: CandidatePool, num_hard_negatives: int, rng: random.Random, num_positives: int = 1
) -> dict:
    """One positive drawn from the query's positives present in the pool, and `num_hard_negatives` negatives: drawn
    from its hard negatives, topped up with random pool candidates when it has too few. Negatives are never one of
    the query's positives.

    With `num_positives` > 1 the example also holds `positives`, `num_positives - 1` more of its positives (drawn
    without replacement; a query with fewer repeats its drawn ones, which the loss counts once), and `positive_ids`,
    all its positives in the pool (the multi-positive loss, `ContrastiveLoss(positive_ids=...)`)."""
    positives = [did for did in query.positive_ids if did in pool]
    if not positives:
        raise ValueError(f"query {query.qid!r}: none of its positives {query.positive_ids} is in the candidate pool")
    if num_positives == 1:  # the draw of single-positive training, unchanged
        drawn = [rng.choice(positives)]
    else:
        drawn = rng.sample(positives, min(num_positives, len(positives)))
        drawn += [drawn[n % len(drawn)] for n in range(num_positives - len(drawn))]
    example = {
        "query": {"id": query.qid, "text": query.text, "img_path": query.img_path},
        "doc": pool[drawn[0]],
    }
    if num_positives > 1:
        example["positives"] = [pool[did] for did in drawn[1:]]
        example["positive_ids"] = positives
    if num_hard_negatives:
        excluded = set(query.positive_ids)
        if len(pool) < len(excluded) + num_hard_negatives:
            raise ValueError(f"a pool of {len(pool)} candidates cannot give {num_hard_negatives} negatives")
        hard = [did for did in dict.fromkeys(query.negative_ids) if did in pool and did not in excluded]
        chosen = rng.sample(hard, min(num_hard_negatives, len(hard)))
        excluded.update(chosen)
        while len(chosen) < num_hard_negatives:
            did = pool.item(rng.randrange(len(pool)))["id"]
            if did not in excluded:
                chosen.append(did)
                excluded.add(did)
        example["negatives"] = [pool[did] for did in chosen]
    return example


class _ExampleDraws:
    """Turns query records into examples; every draw is seeded with (seed, epoch, qid). Shared by both datasets."""

    def __init__(
        self,
        pool: CandidatePool,
        build_query: QueryBuilder,
        num_hard_negatives: int = 0,
        seed: int = 0,
        deterministic: bool = False,
        num_positives: int = 1,
    ):
        if not isinstance(num_hard_negatives, int) or num_hard_negatives < 0:
            raise ValueError(f"num_hard_negatives must be an integer >= 0, got {num_hard_negatives!r}")
        if isinstance(num_positives, bool) or not isinstance(num_positives, int) or num_positives < 1:
            raise ValueError(f"num_positives must be an integer >= 1, got {num_positives!r}")
        self.pool, self.build_query, self.num_hard_negatives = pool, build_query, num_hard_negatives
        self.seed, self.deterministic, self.epoch, self.num_positives = seed, deterministic, 0, num_positives

    def set_epoch(self, epoch: int) -> None:
        """Draw the examples of this epoch (see `ContrastiveTrainer`, which calls it)."""
        self.epoch = epoch

    def example(self, record: Mapping) -> dict:
        rng = _rng(self.seed, 0 if self.deterministic else self.epoch, record["qid"])
        query = self.build_query(record, None if self.deterministic else rng)
        return make_example(query, self.pool, self.num_hard_negatives, rng, self.num_positives)


class ContrastiveDataset(_ExampleDraws, torch.utils.data.Dataset):
    """Map-style training examples over an Arrow query table (see the module docstring).

    Args:
        queries: one query record per row.
        pool: the candidates the query records point to.
        build_query: record, generator -> `Query` (`mbeir_query_builder(...)` or `m2kr_query`).
        num_hard_negatives: negatives per example.
        seed: base seed of every draw.
        deterministic: evaluation: the same draws at every epoch, and the M-BEIR instruction is prompt_1.
        extra_texts: texts of this data beyond queries and candidates (the instruction prompts); see `texts`.
        num_positives: positives per example (> 1: the multi-positive loss, see `make_example`).

    The epoch reaches dataloader workers when they start, at every epoch: not with `persistent_workers`.
    """

    def __init__(
        self,
        queries: datasets.Dataset,
        pool: CandidatePool,
        build_query: QueryBuilder,
        num_hard_negatives: int = 0,
        seed: int = 0,
        deterministic: bool = False,
        extra_texts: Sequence[str] = (),
        num_positives: int = 1,
    ):
        super().__init__(pool, build_query, num_hard_negatives, seed, deterministic, num_positives)
        self.queries, self.extra_texts = queries, list(extra_texts)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict:
        return self.example(self.queries[index])

    def texts(self) -> Iterator[str]:
        """Every text the data can produce, for building a vocabulary (`--model tiny`): candidate
        texts, query texts with prompt_1, and the other instruction prompts."""
        yield from self.pool.texts()
        for record in self.queries:
            yield self.build_query(record, None).text
        yield from self.extra_texts


class StreamingContrastiveDataset(_ExampleDraws, torch.utils.data.IterableDataset):
    """Training examples over a streamed query file (`datasets.IterableDataset`), for files larger than memory.

    Queries come in file order, or through a `shuffle_buffer`-sized buffer seeded with `(seed, epoch)`. The order
    is the same on every run, so a resumed run skips exactly the queries already trained on (within the first
    pass: the Trainer counts a stream's steps, not its passes). The Trainer needs `max_steps` with a stream.
    """

    def __init__(
        self,
        queries: datasets.IterableDataset,
        pool: CandidatePool,
        build_query: QueryBuilder,
        num_hard_negatives: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 0,
        num_positives: int = 1,
    ):
        super().__init__(pool, build_query, num_hard_negatives, seed, num_positives=num_positives)
        self.queries, self.shuffle_buffer = queries, shuffle_buffer

    def __iter__(self) -> Iterator[dict]:
        stream = self.queries
        if self.shuffle_buffer:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        stream.set_epoch(self.epoch)
        for record in stream:
            yield self.example(record)


def _split(queries: datasets.Dataset, eval_fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    n_eval = max(1, round(len(queries) * eval_fraction))
    if n_eval >= len(queries):
        raise ValueError(f"eval_fraction={eval_fraction} leaves no training query out of {len(queries)}")
    order = random.Random(seed).sample(range(len(queries)), len(queries))
    return queries.select(sorted(order[n_eval:])), queries.select(sorted(order[:n_eval]))


def training_datasets(
    queries: datasets.Dataset | datasets.IterableDataset,
    pool: CandidatePool,
    build_query: QueryBuilder,
    eval_queries: datasets.Dataset | None = None,
    eval_fraction: float = 0.0,
    num_hard_negatives: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 0,
    extra_texts: Iterable[str] = (),
    num_positives: int = 1,
) -> tuple[ContrastiveDataset | StreamingContrastiveDataset, ContrastiveDataset | None]:
    """(train, eval) datasets: eval from `eval_queries`, or the held-out `eval_fraction` of `queries` (a seeded
    draw), or None. A streamed `queries` needs `eval_queries` for evaluation."""
    import datasets

    if eval_queries is not None and eval_fraction:
        raise ValueError("give eval_queries or eval_fraction, not both")
    streaming = isinstance(queries, datasets.IterableDataset)
    if eval_fraction:
        if streaming:
            raise ValueError("eval_fraction needs the whole query file; with streaming give eval_queries instead")
        queries, eval_queries = _split(queries, eval_fraction, seed)
    if streaming:
        train = StreamingContrastiveDataset(queries, pool, build_query, num_hard_negatives, seed, shuffle_buffer,
                                            num_positives)  # fmt: skip
    else:
        train = ContrastiveDataset(queries, pool, build_query, num_hard_negatives, seed, extra_texts=list(extra_texts),
                                   num_positives=num_positives)  # fmt: skip
    evaluation = None
    if eval_queries is not None:
        evaluation = ContrastiveDataset(eval_queries, pool, build_query, num_hard_negatives, seed, deterministic=True,
                                        num_positives=num_positives)  # fmt: skip
    return train, evaluation


def mbeir_training_sets(
    queries: str | Path,
    pool: str | Path,
    instructions: Instructions = DEFAULT_INSTRUCTIONS,
    eval_queries: str | Path | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    **kwargs,
) -> tuple[ContrastiveDataset | StreamingContrastiveDataset, ContrastiveDataset | None]:
    """(train, eval) datasets from M-BEIR query files (`pos_cand_list`, `neg_cand_list`) and their candidate pool;
    `kwargs` go to `training_datasets` (eval_fraction, num_hard_negatives, seed, shuffle_buffer, num_positives)."""
    return training_datasets(
        read_queries(queries, streaming=streaming, cache_dir=cache_dir),
        mbeir_pool(pool, cache_dir),
        mbeir_query_builder(instructions),
        eval_queries=None if eval_queries is None else read_queries(eval_queries, cache_dir=cache_dir),
        extra_texts=[prompt for prompts in instructions.values() for prompt in prompts],
        **kwargs,
    )


def m2kr_training_sets(
    queries: str | Path, passages: str | Path, eval_queries: str | Path | None = None, **kwargs
) -> tuple[ContrastiveDataset, ContrastiveDataset | None]:
    """(train, eval) datasets from ReT-M2KR query and passage jsonl files (read whole: the format mixes scalar and
    list ids, so it is not streamed); `kwargs` go to `training_datasets`."""
    return training_datasets(
        m2kr_queries(queries),
        m2kr_pool(passages),
        m2kr_query,
        eval_queries=None if eval_queries is None else m2kr_queries(eval_queries),
        **kwargs,
    )
