"""M-BEIR evaluation with UniIR's protocol: the 16 test query files against their local pools and/or the global pool.

    ret2-eval-mbeir --model M --data-root R --pool both --output-dir out
    torchrun --nproc_per_node 8 -m ret2.eval.mbeir --model M --data-root R --pool both --output-dir out --dtype bfloat16

(from a checkout: `python -m eval.mbeir ...`; from Python: `evaluate_mbeir(model, data_root, output_dir, ...)`.)

Local: each query file against its own local pool. Global: every query file against the union of the 16 local pools
(no filtering), made of the local pools' cached embeddings, so nothing is encoded twice; when
`cand_pool/global/mbeir_union_test_cand_pool.jsonl` exists it must hold exactly those candidates. Queries get the
prompt_1 instruction of their (dataset, query modality, candidate modality) from `instructions/query_instructions.tsv`
(or the built-in table), or a seeded random prompt with `--random-instruction`. Positives come from the qrels, whose
dids must all be in the pools read (the 16 for the global pool; for `--pool local`, the requested rows' pools, and dids
of other datasets are not checked). A partial root works: only the requested rows' query, qrels and pool files are
needed, plus the 16 local pools for the global pool; missing ones are all named in one error.

Writes to `--output-dir`: `runs/<pool>/<query file>.trec` (TREC run files), `results.json` (fractions in [0, 1], and
under "model" the model's name and fingerprint) and `results.md` (UniIR's table, also printed). "recall@k" is UniIR's hit rate: 1 if any positive is in the top k.
Under `torchrun` every rank encodes its share of each pool; rank 0 then searches and scores.
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ret2.distributed import finish, main_first
from ret2.cache import Embeddings, Pool
from ret2.encoding import Item
from ret2.data.mbeir import (
    DEFAULT_INSTRUCTIONS, EVAL_POOLS as POOLS, EVAL_ROWS, GLOBAL_POOL, INSTRUCTIONS, EvalRow, candidate_text, check_qrels,
    load_instructions, query_instruction, query_text, read_candidates, read_qrels, read_queries,
)
from ret2.jsonl import record_line
from ret2.metrics import chance_hit_rate_at_k, compute_retrieval_metrics
from ret2.search import search

from .encoder import EncodeOptions, Encoder
from .report import trec_order, write_report, write_trec

logger = logging.getLogger(__name__)

_EXTRA = ("mrr@10", "ndcg@10")  # reported beside UniIR's recall@k


def select_rows(names: Sequence[str] | None) -> list[EvalRow]:
    """The rows named by query stem (`mbeir_webqa_task1_test`), short stem (`webqa_task1`) or label
    (`WebQA (t->t)`), case-insensitive, in table order; all 16 for None."""
    if not names:
        return list(EVAL_ROWS)
    short = {row: row.query_stem.removeprefix("mbeir_").removesuffix("_test") for row in EVAL_ROWS}
    keys = {key: row for row in EVAL_ROWS for key in (row.query_stem, short[row], row.label.lower())}
    unknown = [n for n in names if n.lower() not in keys]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid: {list(short.values())} (or query stems, or labels)")
    chosen = {keys[n.lower()] for n in names}
    return [row for row in EVAL_ROWS if row in chosen]


class _Candidates:
    """`ItemLoader` over a candidate pool read with `read_candidates`: columns are read by slice."""

    def __init__(self, dataset, path: Path):
        self.dataset, self.path = dataset, str(path)

    def __call__(self, start: int, stop: int) -> list[Item]:
        rows = self.dataset[start:stop]
        return [
            Item(did, candidate_text({"txt": txt}) or None, img, self.path, start + i)
            for i, (did, txt, img) in enumerate(zip(rows["did"], rows["txt"], rows["img_path"]))
        ]


def candidate_pool(row: EvalRow, root: Path, cache_dir: Path) -> Pool:
    """The local pool of a row, read (and validated) with `datasets`; its Arrow copy goes under `cache_dir`."""
    path = row.pool_path(root)
    dataset = read_candidates(path, cache_dir=str(cache_dir / "datasets"))
    return Pool(row.pool_stem, dataset["did"], _Candidates(dataset, path), (path,))


def chance_per_row(root: Path, k: int | None = None, cache_dir: str | None = None) -> dict[str, float]:
    """Expected hit rate at `k` (default: each row's primary K) of a random ranking of each row's local pool, by
    query stem: a query with p positives among the pool's N candidates scores `chance_hit_rate_at_k(N, p, k)`."""
    chance = {}
    for row in EVAL_ROWS:
        dids = set(read_candidates(row.pool_path(root), cache_dir=cache_dir)["did"])
        hits = [chance_hit_rate_at_k(len(dids), len(positives & dids), k or row.primary_k)
                for positives in read_qrels(row.qrels_path(root)).values()]  # fmt: skip
        chance[row.query_stem] = sum(hits) / len(hits)
    return chance


def check_global_pool(path: Path, union_ids: list[str], cache_dir: Path) -> None:
    """ValueError unless the global pool file holds exactly the candidates of the 16 local pools (any order)."""
    global_ids = read_candidates(path, cache_dir=str(cache_dir / "datasets"))["did"]
    if global_ids == union_ids:
        return
    only_global, only_local = set(global_ids) - set(union_ids), set(union_ids) - set(global_ids)
    if only_global or only_local or len(global_ids) != len(union_ids):
        raise ValueError(
            f"{path} is not the union of the 16 local pools, which this evaluation searches: it has "
            f"{len(global_ids)} candidates against {len(union_ids)}, {len(only_global)} dids absent from the local pools "
            f"(e.g. {sorted(only_global)[:3]}), and lacks {len(only_local)} of theirs (e.g. {sorted(only_local)[:3]})"
        )
    logger.info("%s holds the local pools' candidates in another order; searching the union of the local pools", path)


def read_row_queries(
    row: EvalRow, root: Path, instructions: dict, rng: random.Random | None, cache_dir: Path, pool_dids: set[str],
    datasets: set[int] | None = None,
) -> tuple[list[Item], list[set[str]]]:  # fmt: skip
    """The queries of a row as items (instruction + text, image) and their positive dids from the qrels, checked
    against `pool_dids` (the global pool's, or those of the pools read, of dataset ids `datasets`: `check_qrels`)."""
    path, qrels_path = row.query_path(root), row.qrels_path(root)
    qrels = read_qrels(qrels_path)
    check_qrels(qrels, pool_dids, qrels_path, datasets)
    items, positives = [], []
    for i, record in enumerate(read_queries(path, cache_dir=str(cache_dir / "datasets"))):
        if record["qid"] not in qrels:
            raise ValueError(f"{path}:{record_line(path, i)}: query {record['qid']!r} has no positive in {qrels_path}")
        text = query_text(record, query_instruction(record, instructions, rng))
        items.append(Item(record["qid"], text, record["query_img_path"], str(path), i))
        positives.append(qrels[record["qid"]])
    return items, positives


def _score_row(
    row: EvalRow, items: list[Item], positives: list[set[str]], scores: np.ndarray, indices: np.ndarray,
    doc_ids: list[str], run_path: Path, run_id: str,
) -> dict[str, float]:  # fmt: skip
    indices, scores = trec_order(doc_ids, indices, scores)  # equal scores ranked as trec_eval ranks the run file
    ranked = [[doc_ids[i] for i in ranking] for ranking in indices.tolist()]
    metrics = compute_retrieval_metrics(ranked, positives, ks=sorted(set(row.ks) | {10}))
    write_trec(run_path, [item.id for item in items], doc_ids, indices, scores, run_id)
    return {**{f"recall@{k}": metrics[f"recall@{k}"] for k in row.ks}, **{name: metrics[name] for name in _EXTRA}}


def results_table(rows: Sequence[EvalRow], results: dict[str, dict]) -> str:
    """UniIR's layout: one line per row (label, task, primary metric, local, global) and the average, scores x 100."""
    pools = [p for p in ("local", "global") if p in results]
    lines = ["| Row | Task | Metric | " + " | ".join(p.capitalize() for p in pools) + " |",
             "|---|---|---|" + "---:|" * len(pools)]
    for row in rows:
        cells = [f"{100 * results[p][row.query_stem][f'recall@{row.primary_k}']:.1f}" for p in pools]
        lines.append(f"| {row.label} | {row.task_id} | R@{row.primary_k} | " + " | ".join(cells) + " |")
    lines.append("| **Average** | | | " + " | ".join(f"**{100 * results[p]['average']:.1f}**" for p in pools) + " |")
    scope = "the 16 rows (UniIR's headline number)" if len(rows) == len(EVAL_ROWS) else f"these {len(rows)} rows only"
    return "\n".join(lines) + (
        "\n\nR@k is UniIR's \"Recall@k\", a hit rate: a query scores 1 if any positive is among its top k candidates. "
        f"Scores x 100; the average is the plain mean of the primary metric over {scope}.\n"
    )


def check_files(root: Path, rows: Sequence[EvalRow], pools: Sequence[str]) -> None:
    """FileNotFoundError listing, in one line, every file of `root` the evaluation needs and lacks: the query, qrels
    and local pool files of `rows`, and for the global pool the 16 local pools."""
    if not root.is_dir():
        raise FileNotFoundError(f"the M-BEIR root {root} is not a folder")
    needed = [p for row in rows for p in (row.query_path(root), row.qrels_path(root), row.pool_path(root))]
    needed += [row.pool_path(root) for row in EVAL_ROWS] if "global" in pools else []
    missing = [str(p.relative_to(root)) for p in dict.fromkeys(needed) if not p.is_file()]
    if missing:
        scope = "the global pool is the union of the 16 local pools" if "global" in pools else "--pool local"
        shown = missing if len(missing) <= 6 else [*missing[:6], f"... {len(missing) - 6} more"]
        raise FileNotFoundError(f"{root}: {len(missing)} missing M-BEIR file(s) {shown} (needed for {scope}; only the "
                                "requested rows' query, qrels and pool files are needed otherwise)")


def evaluate_mbeir(
    model: str | Path,
    data_root: str | Path,
    output_dir: str | Path,
    *,
    pool: str = "both",
    tasks: Sequence[str] | None = None,
    instructions: str | Path | None = None,
    random_instruction: bool = False,
    seed: int = 0,
    k: int | None = None,
    options: EncodeOptions | None = None,
    loaded: tuple[torch.nn.Module, object] | None = None,
) -> dict | None:
    """Evaluate a model on M-BEIR with UniIR's protocol (see the module docstring).

    Args:
        model: saved ReT-2 folder or hub id (loaded with `trust_remote_code`); with `loaded`, the folder whose files
            key the embedding cache.
        data_root: the M-BEIR root (query/, cand_pool/, qrels/, instructions/, mbeir_images/).
        output_dir: where TREC runs, `results.json`, `results.md` and (by default) the cache go.
        pool: "local", "global" or "both".
        tasks: rows to evaluate (`webqa_task1`, query stems or labels); None: all 16.
        instructions: a query_instructions.tsv (None: the root's, else the built-in prompt_1 table).
        random_instruction: draw one prompt per query with `seed`, as UniIR does.
        k: results per query (None: each row's largest reported K).
        options: batching, device, dtype, cache and search backend.
        loaded: an in-memory (model, processor) pair to evaluate instead of loading `model`.

    Returns:
        `{pool: {query stem: {"recall@k": ..., "mrr@10": ..., "ndcg@10": ...}, "average": ...}}` (fractions) on rank 0;
        None on the other ranks of a distributed run.
    """
    root, output_dir = Path(data_root), Path(output_dir)
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r} is not one of {list(POOLS)}")
    options = options or EncodeOptions()
    if options.cache_dir is None:
        options = replace(options, cache_dir=output_dir / "cache")
    cache_dir = options.cache_dir
    rows = select_rows(tasks)
    pools = ["local", "global"] if pool == "both" else [pool]
    if k is not None and k < max(kk for row in rows for kk in row.ks):
        raise ValueError(f"k={k} is below the largest reported K of these rows, {max(max(r.ks) for r in rows)}")

    def depth(row: EvalRow) -> int:
        return k or max(row.ks)

    instructions_path = instructions or (root / INSTRUCTIONS if (root / INSTRUCTIONS).exists() else None)
    table = load_instructions(instructions_path) if instructions_path else DEFAULT_INSTRUCTIONS
    rng = random.Random(seed) if random_instruction else None
    check_files(root, rows, pools)

    encoder = Encoder.create(model, options, loaded)
    job = encoder.job
    try:
        to_encode = EVAL_ROWS if "global" in pools else rows
        with main_first(job):  # rank 0 reads and checks every input before hours of encoding start
            candidates = {row.pool_stem: candidate_pool(row, root, cache_dir) for row in to_encode}
            if job.is_main:
                union_ids = [did for row in to_encode for did in candidates[row.pool_stem].ids]
                if "global" in pools and (root / GLOBAL_POOL).exists():
                    check_global_pool(root / GLOBAL_POOL, union_ids, cache_dir)
                # The qrels are checked against the pools read: all 16 for the global pool, else the rows' own.
                datasets = None if "global" in pools else {row.dataset_id for row in rows}
                queries = {row: read_row_queries(row, root, table, rng, cache_dir, set(union_ids), datasets)
                           for row in rows}  # fmt: skip
        embeddings = encoder.pools([candidates[row.pool_stem] for row in to_encode], root)
        if embeddings is None:
            return None
        query_embeddings = {row: encoder.queries(queries[row][0], root, f"queries {row.query_stem}") for row in rows}

        run_name = Path(str(model).rstrip("/")).name
        results: dict[str, dict] = {}
        for name in pools:
            if name == "local":
                hits = {row: search(query_embeddings[row], embeddings[row.pool_stem].shards, depth(row),
                                    options.search_backend, encoder.device, options.precision,
                                    options.rescore_multiplier) for row in rows}  # fmt: skip
                doc_ids = {row: embeddings[row.pool_stem].ids for row in rows}
            else:  # one pass over the union for the queries of every row, split back by row
                union = Embeddings.concat([embeddings[row.pool_stem] for row in EVAL_ROWS])
                scores, indices = search(np.concatenate([query_embeddings[row] for row in rows]), union.shards,
                                         max(depth(row) for row in rows), options.search_backend, encoder.device,
                                         options.precision, options.rescore_multiplier)  # fmt: skip
                bounds = np.cumsum([0] + [len(query_embeddings[row]) for row in rows])
                hits = {row: (scores[a:b, : depth(row)], indices[a:b, : depth(row)])
                        for row, a, b in zip(rows, bounds[:-1], bounds[1:])}
                doc_ids = dict.fromkeys(rows, union.ids)
            results[name] = {
                row.query_stem: _score_row(row, *queries[row], *hits[row], doc_ids[row],
                                           output_dir / "runs" / name / f"{row.query_stem}.trec", f"{run_name}-{name}")
                for row in rows
            }
            results[name]["average"] = float(np.mean([results[name][r.query_stem][f"recall@{r.primary_k}"] for r in rows]))
        report = results_table(rows, results)
        write_report(output_dir, results, report, model, encoder.fingerprint, root, options.truncate_dim)
        logger.info("results written to %s", output_dir)
        return results
    finally:
        finish(job)


if __name__ == "__main__":  # `python -m eval.mbeir` / `torchrun -m ret2.eval.mbeir`: the `ret2-eval-mbeir` command
    from ret2.commands.eval_mbeir import main

    main()
