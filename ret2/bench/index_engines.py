"""The index's engines at scale, through `Ret2Index` itself: an index folder of clustered random unit vectors (fp16,
as the cache stores them) stored with `Ret2Index.build(..., embeddings=)` for a tiny model of the same width, then
the exact scan (both backends) and the IVF-PQ engine of `build_approximate("ivfpq")` searched through
`Ret2Index.search_embeddings`.

    python -m ret2.bench.index_engines                        # 1,000,000 x 768, 1000 clusters, one thread
    python -m ret2.bench.index_engines --num-docs 100000 --nprobe 4 8

Prints a table: build seconds, resident bytes per document (IVF-PQ: codes, ids, centroids and codebooks; exact: the
fp16 vectors), ms/query over a batch of `--num-queries`, recall@10 against the exact search on `--recall-queries`
queries, and the speed against the fastest exact backend.
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ret2.bench.search_index import _best_of, _resident_bytes, random_shards
from ret2.commands._common import ArgumentParser, configure_logging, run_cli
from ret2.search import recall_at_k

logger = logging.getLogger("ret2.bench")


def run(num_docs: int, dim: int = 768, clusters: int = 1000, num_queries: int = 32, recall_queries: int = 256,
        nlist: int = 1024, pq_m: int = 192, nprobe: tuple[int, ...] = (4, 8, 16), repeats: int = 3,
        folder: Path | None = None) -> list[dict]:  # fmt: skip
    from ret2.index import Ret2Index
    from ret2.tiny import tiny_model_and_processor

    work = Path(folder or tempfile.mkdtemp(prefix="ret2-index-engines-"))
    model, processor = tiny_model_and_processor(["x"], embedding_dim=dim)
    model.save_pretrained(work / "model")
    processor.save_pretrained(work / "model")
    vectors = np.concatenate(random_shards(num_docs, dim, seed=0, clusters=clusters))
    records = [{"id": f"d{i}", "text": "x"} for i in range(num_docs)]
    start = time.perf_counter()
    index = Ret2Index.build(work / "index", records, model=work / "model", image_root=work, shard_size=100_000,
                            embeddings=vectors, device="cpu")  # fmt: skip
    stored_s = time.perf_counter() - start
    del vectors, records
    logger.info("%d documents stored in the index in %.1f s", num_docs, stored_s)
    queries = np.concatenate(random_shards(max(recall_queries, num_queries), dim, seed=1, clusters=clusters))
    queries = queries.astype(np.float32)
    batch = queries[:num_queries]
    data = f"{clusters} clusters" if clusters else "uniform"
    rows = []
    for backend in ("faiss", "torch"):
        seconds, _ = _best_of(lambda: index.search_embeddings(batch, 10, "exact", backend=backend), repeats)
        rows.append({"engine": f"Ret2Index exact, backend {backend}", "data": data, "docs": num_docs, "build_s": 0.0,
                     "bytes_per_doc": dim * 2, "ms_per_query": 1000 * seconds / num_queries, "recall_at_10": 1.0})  # fmt: skip
    exact_ms = min(r["ms_per_query"] for r in rows)
    _, exact = index.search_embeddings(queries, 10, "exact", backend="torch")
    start = time.perf_counter()
    report = index.build_approximate("ivfpq", recall_sample=1000, nlist=nlist, m=pq_m, nprobe=nprobe[0])
    build_s = time.perf_counter() - start
    resident = _resident_bytes(index._approximate().index) / num_docs
    logger.info("IVF-PQ built in %.1f s (recall@10 %.4f on stored documents), %.0f bytes/doc resident", build_s,
                report["recall_at_10"], resident)  # fmt: skip
    for n in nprobe:
        seconds, _ = _best_of(lambda: index.search_embeddings(batch, 10, "approximate", nprobe=n), repeats)
        _, found = index.search_embeddings(queries, 10, "approximate", nprobe=n)
        rows.append({"engine": f"Ret2Index IVF-PQ (nlist {nlist}, m {pq_m}), nprobe {n} + fp16 rescoring x"
                               f"{report['rescore_multiplier']}", "data": data, "docs": num_docs, "build_s": build_s,
                     "bytes_per_doc": resident, "ms_per_query": 1000 * seconds / num_queries,
                     "recall_at_10": recall_at_k(exact, found)})  # fmt: skip
    for r in rows:
        r["speedup"] = exact_ms / r["ms_per_query"]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--num-docs", type=int, default=1_000_000, help="documents in the index")
    parser.add_argument("--dim", type=int, default=768, help="embedding width")
    parser.add_argument("--clusters", type=int, default=1000, help="0: uniform random vectors")
    parser.add_argument("--num-queries", type=int, default=32, help="queries of the timed batch")
    parser.add_argument("--recall-queries", type=int, default=256, help="queries recall@10 is measured on")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF-PQ cells")
    parser.add_argument("--pq-m", type=int, default=192, help="IVF-PQ codes a document")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16], help="IVF-PQ cells visited per query")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    parser.add_argument("--folder", type=Path, help="where the index is written (default: a temporary folder)")
    args = parser.parse_args(argv)
    configure_logging()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows = run(args.num_docs, args.dim, args.clusters, args.num_queries, args.recall_queries, args.nlist, args.pq_m,
               tuple(args.nprobe), folder=args.folder)  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} thread(s)")
    print("| engine | data | documents | build (s) | bytes/doc | ms/query | recall@10 | vs fastest exact |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['data']} | {r['docs']:,} | {r['build_s']:.1f} | {r['bytes_per_doc']:.0f} | "
              f"{r['ms_per_query']:.2f} | {r['recall_at_10']:.4f} | {r['speedup']:.1f}x |")


if __name__ == "__main__":
    run_cli(main)
