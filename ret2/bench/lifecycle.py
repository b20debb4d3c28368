"""A collection that changes, at scale: the cost of deleting, of searching with deletions pending, of compacting and
of an upsert, through `Ret2Index` itself.

    python -m ret2.bench.lifecycle                          # 1,000,000 x 768, 1000 clusters, IVF-PQ, one thread
    python -m ret2.bench.lifecycle --num-docs 100000 --nlist 256 --json lifecycle.json

An index folder of `--num-docs` clustered unit vectors stored with `Ret2Index.build(..., embeddings=)` for a tiny
model of the same width (as `ret2.bench.filtered_search`), with an IVF-PQ engine. Then: 1% of the documents deleted,
10% in all, each timed; after each, ms/query of the exact scan (fp16), the int8 codes (made in memory) and IVF-PQ with
the deletions pending, against the same before any deletion (deleted rows are masked: `allowed=` the live rows); then
`compact()` timed (parts rewritten, IVF-PQ refilled, its recall measured again) and the searches once more. Last, an
upsert of `--upsert` documents with new texts (the tiny model encodes them: its time is the index's work, not a real
model's), against re-encoding the collection from scratch at `--docs-per-s` (default: ViT-B/32, image+text, batch 8,
one thread, fp32, from docs/benchmarks.md). The machine's load is printed with the table.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ret2.bench.filtered_search import stored_index
from ret2.bench.help_time import machine
from ret2.bench.search_index import _best_of, random_shards
from ret2.commands._common import ArgumentParser, configure_logging, run_cli

logger = logging.getLogger("ret2.bench")

VIT_B32_DOCS_PER_S = 5.59  # ViT-B/32 ReT-2, image+text documents, batch 8, one CPU thread, fp32 (docs/benchmarks.md)


def run(num_docs: int, dim: int = 768, clusters: int = 1000, num_queries: int = 32, nlist: int = 1024, pq_m: int = 192,
        upsert: int = 1000, docs_per_s: float = VIT_B32_DOCS_PER_S, repeats: int = 3,
        folder: Path | None = None) -> dict:  # fmt: skip
    work = Path(folder or tempfile.mkdtemp(prefix="ret2-lifecycle-"))
    index, texts = stored_index(work, num_docs, dim, clusters)
    start = time.perf_counter()
    index.build_approximate("ivfpq", recall_sample=min(1000, num_docs), nlist=nlist, m=pq_m)
    logger.info("IVF-PQ built in %.1f s", time.perf_counter() - start)
    queries = np.concatenate(random_shards(num_queries, dim, seed=1, clusters=clusters)).astype(np.float32)

    def searches(state: str, extra: dict) -> dict:
        row = {"state": state, "rows": len(index), "deleted_rows": len(index.storage.deleted()), **extra}
        for name, options in (("exact_ms", {}), ("int8_ms", {"precision": "int8"}),
                              ("ivfpq_ms", {"engine": "approximate"})):  # fmt: skip
            index.search_embeddings(queries[:1], 10, **options)  # the int8 codes are made by the first call
            seconds, _ = _best_of(lambda: index.search_embeddings(queries, 10, **options), repeats)
            row[name] = 1000 * seconds / num_queries
        logger.info("%s", row)
        return row

    rows = [searches("none deleted", {})]
    rng = np.random.default_rng(4)
    order = rng.permutation(num_docs)
    done = 0
    for fraction in (0.01, 0.10):
        ids = [f"d{i}" for i in order[done : int(fraction * num_docs)]]
        start = time.perf_counter()
        index.delete(ids)
        seconds = time.perf_counter() - start
        done = int(fraction * num_docs)
        rows.append(searches(f"{fraction:.0%} deleted, pending", {"op": f"delete {len(ids):,}", "op_s": seconds}))
    start = time.perf_counter()
    removed = index.compact()
    rows.append(searches("compacted", {"op": f"compact ({removed:,} rows removed)", "op_s": time.perf_counter() - start,
                                       "recall_at_10": index.meta["approximate"]["recall_at_10"]}))  # fmt: skip
    live = sorted(index.storage.rows_of())[:upsert]
    changed = [{"id": i, "text": f"changed {i} {texts[int(i[1:])]}"} for i in live]
    start = time.perf_counter()
    counts = index.upsert(changed, image_root=work)
    upsert_s = time.perf_counter() - start
    result = {
        "rows": rows,
        "upsert": {"documents": upsert, "counts": counts, "seconds_tiny_model": upsert_s,
                   "projected_encode_s": upsert / docs_per_s, "rebuild_encode_s": index.documents / docs_per_s,
                   "docs_per_s": docs_per_s},  # fmt: skip
        "machine": machine(), "num_docs": num_docs, "folder": str(work),
    }
    return result


def tables(result: dict) -> str:
    lines = [
        f"{result['num_docs']:,} documents; machine: {json.dumps(result['machine'])}",
        "",
        "| state | op | op s | rows | deleted rows | exact ms/query | int8 ms/query | IVF-PQ ms/query |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        op = r.get("op", "")
        lines.append(f"| {r['state']} | {op} | {r.get('op_s', 0):.2f} | {r['rows']:,} | {r['deleted_rows']:,} | "
                     f"{r['exact_ms']:.2f} | {r['int8_ms']:.2f} | {r['ivfpq_ms']:.2f} |")  # fmt: skip
    u = result["upsert"]
    lines += [
        "",
        f"Upsert of {u['documents']:,} changed documents: {u['seconds_tiny_model']:.1f} s with the tiny model "
        f"({u['counts']}); their encoding at {u['docs_per_s']} docs/s would add {u['projected_encode_s']:.0f} s, "
        f"against {u['rebuild_encode_s'] / 3600:.1f} h to encode the {result['num_docs']:,} documents again.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    def go(argv):
        parser = ArgumentParser(description=__doc__)
        parser.add_argument("--num-docs", type=int, default=1_000_000, help="documents in the index")
        parser.add_argument("--nlist", type=int, default=1024, help="IVF-PQ cells")
        parser.add_argument("--pq-m", type=int, default=192, help="IVF-PQ codes a document")
        parser.add_argument("--upsert", type=int, default=1000, help="documents changed by the upsert")
        parser.add_argument("--docs-per-s", type=float, default=VIT_B32_DOCS_PER_S, help="a real model's encode rate")
        parser.add_argument("--folder", type=Path, default=None, help="where to build the index (default: a temp dir)")
        parser.add_argument("--json", type=Path, default=None, help="also write the result here")
        args = parser.parse_args(argv)
        configure_logging()
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        result = run(args.num_docs, nlist=args.nlist, pq_m=args.pq_m, upsert=args.upsert, docs_per_s=args.docs_per_s,
                     folder=args.folder)  # fmt: skip
        print(tables(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return result

    return run_cli(go, argv)


if __name__ == "__main__":
    main()
