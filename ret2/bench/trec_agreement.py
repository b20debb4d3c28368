"""An external scorer on an M-BEIR evaluation's run files: trec_eval (through ir-measures) scores the TREC run files
and the qrels that `ret2-eval-mbeir` used, and every value is compared with its `results.json`.

    python -m ret2.bench.trec_agreement --eval-dir results/mbeir --data-root data/synthetic [--rank-by score]

UniIR's Recall@k (a hit rate) is `Success@k` and `ndcg@10` is `nDCG@10`, and `mrr@10` is `RR` on each query's first
10 documents, all computed by trec_eval. trec_eval has no cut-off RR, so the run is cut here, in trec_eval's own order
(score descending, equal scores by document id descending); ir-measures' `RR@10` is MS MARCO's script, which breaks
ties the other way (document id ascending) and so is not used. The evaluation follows trec_eval's rule
(`ret2.eval.report.trec_order`). `--rank-by score` ranks each query's documents by the score column, as the tools do;
`--rank-by rank` by the rank column (the evaluation's own order).
Prints one line per pool and row with the largest difference, and the count of values that agree (to 1e-12: the tools
sum in another order). Needs the `mteb` extra (`pip install -e ".[mteb]"`, which brings ir-measures).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ret2.commands._common import ArgumentParser, run_cli
from ret2.data.mbeir import EVAL_ROWS

RANK_BY = ("score", "rank")
_AGREE = 1e-12


def read_qrels_4(path: Path) -> list:
    """M-BEIR's qrels (`qid 0 did relevance task_id`) as ir-measures qrels: its fifth column is not TREC's."""
    from ir_measures import Qrel

    return [Qrel(q, d, int(rel)) for q, _, d, rel, *_ in (line.split() for line in path.read_text().splitlines() if line)]


def read_run(path: Path, rank_by: str) -> list:
    """A TREC run file as ir-measures scored documents, scored by its score column or by minus its rank."""
    from ir_measures import ScoredDoc

    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by {rank_by!r} is not one of {list(RANK_BY)}")
    lines = (line.split() for line in path.read_text().splitlines() if line)
    return [ScoredDoc(q, d, float(score) if rank_by == "score" else -int(rank)) for q, _, d, rank, score, _ in lines]


def compare(eval_dir: str | Path, data_root: str | Path, rank_by: str = "score") -> list[dict]:
    """One dict per (pool, row) of `eval_dir/results.json`: `{"pool", "row", "ours": {metric: value}, "external":
    {metric: value}, "tools": {metric: measure}}`, the metrics being the row's `recall@k`, `mrr@10` and `ndcg@10`."""
    import ir_measures
    from ir_measures import RR, Success, nDCG

    eval_dir, data_root = Path(eval_dir), Path(data_root)
    results = json.loads((eval_dir / "results.json").read_text())
    rows = {row.query_stem: row for row in EVAL_ROWS}
    out = []
    for pool in ("local", "global"):
        for stem, ours in results.get(pool, {}).items():
            if stem == "average":
                continue
            run = read_run(eval_dir / "runs" / pool / f"{stem}.trec", rank_by)
            qrels = read_qrels_4(rows[stem].qrels_path(data_root))
            measures = {f"recall@{k}": Success @ k for k in rows[stem].ks} | {"ndcg@10": nDCG @ 10}
            scored = ir_measures.calc_aggregate(list(measures.values()), qrels, run)
            external = {name: scored[m] for name, m in measures.items()}
            external["mrr@10"] = ir_measures.calc_aggregate([RR], qrels, first(run, 10))[RR]
            out.append({"pool": pool, "row": stem, "ours": {name: ours[name] for name in external},
                        "external": external})  # fmt: skip
    return out


def first(run: list, k: int) -> list:
    """Each query's first `k` scored documents in trec_eval's order: score descending, equal scores by document id
    descending (trec_eval sorts by score, then by `strcmp` of the ids)."""
    by_query = defaultdict(list)
    for doc in run:
        by_query[doc.query_id].append(doc)
    return [d for docs in by_query.values() for d in sorted(docs, key=lambda d: (d.score, d.doc_id), reverse=True)[:k]]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--eval-dir", required=True, type=Path, help="ret2-eval-mbeir's --output-dir")
    parser.add_argument("--data-root", required=True, type=Path, help="the M-BEIR root it evaluated (for the qrels)")
    parser.add_argument("--rank-by", choices=list(RANK_BY), default="score",
                        help="rank by the score column (as trec_eval does) or by the rank column")
    args = parser.parse_args(argv)
    rows = compare(args.eval_dir, args.data_root, args.rank_by)
    print("| pool | row | values | agree | largest difference (points) |\n|---|---|---:|---:|---:|")
    agree = total = 0
    for r in rows:
        diffs = [abs(r["ours"][m] - r["external"][m]) for m in r["ours"]]
        agree, total = agree + sum(d <= _AGREE for d in diffs), total + len(diffs)
        print(f"| {r['pool']} | {r['row']} | {len(diffs)} | {sum(d <= _AGREE for d in diffs)} | {100 * max(diffs):.2f} |")
    print(f"\n{agree} of {total} values agree (ranked by the {args.rank_by} column)")
    return rows


if __name__ == "__main__":
    run_cli(main)
