"""Search at scale, through the shipped code: exact (`ret2.search.search`, both backends), int8 and binary codes with
rescoring (`ret2.search.build_quantized` / `search_quantized`), approximate (`ret2.search`'s IVF-PQ with rescoring and
HNSW) and Milvus Lite (`ret2.milvus`), over random unit vectors stored in fp16 shards as the embedding cache stores
them.

    python -m ret2.bench.search_index                                   # 1,000,000 x 768, one thread
    python -m ret2.bench.search_index --num-docs 100000 --milvus-docs 100000 --ef-search 64 128 256
    python -m ret2.bench.search_index --num-docs 100000 --clusters 1000   # structured data instead of uniform
    python -m ret2.bench.search_index --clusters 1000 --hnsw-max-docs 0 --precisions int8 binary --nprobe 8 16

For each size it reports: exact ms/query (a batch of `--num-queries` queries, top 10); the HNSW index's build time,
bytes/doc, ms/query and recall@10 against exact at each `--ef-search`; Milvus Lite's insert time, ms/query and
recall@10 (on `--milvus-docs` documents, exact searched again on that subset); for each of `--precisions` the flat
scan of its codes, and with `--nprobe` the IVF-PQ index (`--nlist` cells, `--pq-m` bytes a document), each at every
`--rescore-multiplier`. Speed is against the fastest exact backend. Recall is measured on `--recall-queries` random
queries (the timed batch included). One thread unless `--threads`.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ret2.commands._common import ArgumentParser, configure_logging, run_cli
from ret2.cache import SHARD_SIZE
from ret2.search import (RESCORE_MULTIPLIER, build_hnsw, build_ivfpq, build_quantized, recall_at_k, search, search_hnsw,
                         search_quantized)

logger = logging.getLogger("ret2.bench")


def random_shards(
    num_docs: int, dim: int, seed: int, clusters: int = 0, spread: float = 1.0, shard_size: int = SHARD_SIZE
) -> list[np.ndarray]:
    """Unit vectors (num_docs, dim) as fp16 shards of `shard_size` rows, like the cache's shards: uniformly random
    (`clusters=0`), or each a random one of `clusters` fixed centres (seed 12345) plus Gaussian noise of norm about
    `spread` (structured, like real embeddings: a document's near neighbours are few)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((clusters, dim), dtype=np.float32) if clusters else None
    if centres is not None:
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    shards = []
    for start in range(0, num_docs, shard_size):
        block = rng.standard_normal((min(shard_size, num_docs - start), dim), dtype=np.float32)
        if centres is not None:
            block = centres[rng.integers(0, clusters, len(block))] + block * (spread / np.sqrt(dim))
        shards.append((block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float16))
    return shards


def _best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _resident_bytes(index) -> int:
    """What a quantized index keeps in memory: its codes, and for IVF-PQ the 8-byte ids, the coarse centroids and the
    codebooks (the fp16 vectors that rescore its candidates stay on disk)."""
    import faiss

    if isinstance(index, faiss.IndexIVFPQ):
        return index.ntotal * (index.code_size + 8) + index.nlist * index.d * 4 + index.pq.centroids.size() * 4
    return index.ntotal * index.code_size


def _hnsw_bytes(index) -> int:
    """Vectors (fp32) + neighbour lists (int32) + per-node offsets (int64) and levels (int32)."""
    hnsw = index.hnsw
    return index.ntotal * index.d * 4 + hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4


def run(
    num_docs: int,
    dim: int = 768,
    num_queries: int = 32,
    recall_queries: int = 256,
    k: int = 10,
    m: int = 32,
    ef_construction: int = 80,
    ef_search: tuple[int, ...] = (64, 128, 256),
    milvus_docs: int = 0,
    repeats: int = 3,
    clusters: int = 0,
    hnsw: bool = True,
    precisions: tuple[str, ...] = (),
    rescore_multipliers: tuple[int, ...] = (RESCORE_MULTIPLIER,),
    nprobe: tuple[int, ...] = (),
    nlist: int = 1024,
    pq_m: int = 96,
) -> list[dict]:
    """Rows of the table (see the module docstring); `hnsw=False` skips HNSW, empty `precisions` / `nprobe` skip the
    quantized flat scans / IVF-PQ."""
    data = "uniform" if not clusters else f"{clusters} clusters"
    shards = random_shards(num_docs, dim, seed=0, clusters=clusters)
    queries = np.concatenate(random_shards(max(recall_queries, num_queries), dim, seed=1, clusters=clusters))
    queries = queries.astype(np.float32)
    batch = queries[:num_queries]
    rows = []
    for backend in ("faiss", "torch"):
        seconds, _ = _best_of(lambda: search(batch, shards, k, backend), repeats)
        ms = 1000 * seconds / num_queries
        rows.append({"engine": f"exact: ret2.search.search, backend {backend} (fp16 shards)", "data": data,
                     "docs": num_docs, "build_s": 0.0, "bytes_per_doc": dim * 2, "ms_per_query": ms,
                     "recall_at_10": 1.0})  # fmt: skip
        logger.info("exact (%s): %.2f ms/query over %d docs", backend, ms, num_docs)
    exact_ms = min(r["ms_per_query"] for r in rows)  # the fastest exact backend: the reference of the speed column
    for r in rows:
        r["speedup"] = exact_ms / r["ms_per_query"]
    _, exact = search(queries, shards, k, "torch")
    engines = [(f"{p} codes, flat scan", lambda p=p: build_quantized(shards, p), None) for p in precisions]
    engines += [(f"IVF-PQ (nlist={nlist}, m={pq_m}), nprobe={n}", lambda: build_ivfpq(shards, nlist, pq_m), n)
                for n in nprobe]  # fmt: skip
    built = {}
    for name, build, probes in engines:
        key = name.split(",")[0] if probes else name
        if key not in built:
            start = time.perf_counter()
            built[key] = (build(), time.perf_counter() - start)
            logger.info("%s: built in %.1f s", key, built[key][1])
        index, build_s = built[key]
        if probes:
            index.nprobe = probes
        for multiplier in rescore_multipliers:
            seconds, _ = _best_of(lambda: search_quantized(index, batch, shards, k, multiplier), repeats)
            recall = recall_at_k(exact, search_quantized(index, queries, shards, k, multiplier)[1])
            ms = 1000 * seconds / num_queries
            rescored = f" + fp16 rescoring of {multiplier} x k" if multiplier else ""
            rows.append({"engine": name + rescored, "data": data, "docs": num_docs, "build_s": build_s,
                         "bytes_per_doc": _resident_bytes(index) / num_docs, "ms_per_query": ms, "recall_at_10": recall,
                         "speedup": exact_ms / ms})  # fmt: skip
            logger.info("%s%s: %.3f ms/query, recall@10 %.4f", name, rescored, ms, recall)
    if milvus_docs:
        rows += _milvus(shards, queries, num_queries, k, milvus_docs, repeats, data)
    if not hnsw:
        return rows

    start = time.perf_counter()
    index = build_hnsw(shards, m, ef_construction)
    build_s = time.perf_counter() - start
    logger.info("HNSW build: %.1f s", build_s)
    for ef in ef_search:
        seconds, _ = _best_of(lambda: search_hnsw(index, batch, k, ef), repeats)
        recall = recall_at_k(exact, search_hnsw(index, queries, k, ef)[1])
        ms = 1000 * seconds / num_queries
        rows.append({"engine": f"HNSW (m={m}, ef_construction={ef_construction}, ef_search={ef})", "data": data,
                     "docs": num_docs,
                     "build_s": build_s, "bytes_per_doc": _hnsw_bytes(index) / num_docs, "ms_per_query": ms,
                     "recall_at_10": recall, "speedup": exact_ms / ms})  # fmt: skip
        logger.info("HNSW ef_search %d: %.3f ms/query, recall@10 %.4f", ef, ms, recall)
    return rows


def _milvus(shards, queries, num_queries, k, milvus_docs, repeats, data) -> list[dict]:
    from ret2.milvus import open_client, search_collection, write_collection

    docs = np.concatenate(shards)[:milvus_docs]
    subset = [docs[i : i + SHARD_SIZE] for i in range(0, len(docs), SHARD_SIZE)]
    batch = queries[:num_queries]
    seconds, _ = _best_of(lambda: search(batch, subset, k, "faiss"), repeats)
    exact_ms = 1000 * seconds / num_queries
    _, exact = search(queries, subset, k, "faiss")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index_type in ("FLAT", "IVF_FLAT", "HNSW"):
            target = {"uri": str(Path(tmp) / f"{index_type}.db"), "collection": "bench", "index_type": index_type}
            start = time.perf_counter()
            try:
                write_collection(target, [str(i) for i in range(len(docs))], subset)
            except Exception as error:  # noqa: BLE001 - an index type Milvus Lite lacks is a row, not a crash
                logger.info("Milvus Lite %s: %s", index_type, error)
                rows.append({"engine": f"Milvus Lite {index_type}: not supported ({str(error)[:80]})", "data": data,
                             "docs": len(docs)})
                continue
            build_s = time.perf_counter() - start
            client = open_client(target)
            try:
                seconds, _ = _best_of(lambda: search_collection(target, batch, k, client=client), repeats)
                recall = recall_at_k(exact, search_collection(target, queries, k, client=client)[1])
            finally:
                client.close()
            ms = 1000 * seconds / num_queries
            rows.append({"engine": f"Milvus Lite {index_type} (exact faiss on the same docs: {exact_ms:.2f} ms/query)",
                         "data": data, "docs": len(docs), "build_s": build_s, "bytes_per_doc": None, "ms_per_query": ms,
                         "recall_at_10": recall, "speedup": exact_ms / ms})  # fmt: skip
            logger.info("Milvus Lite %s: %.2f ms/query, recall@10 %.4f", index_type, ms, recall)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| engine | data | documents | build s | bytes/doc | ms/query | recall@10 vs exact | speed vs fastest exact |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        if "ms_per_query" not in r:
            lines.append(f"| {r['engine']} | {r['data']} | {r['docs']:,} | | | | | |")
            continue
        size = "" if r["bytes_per_doc"] is None else f"{r['bytes_per_doc']:.0f}"
        lines.append(f"| {r['engine']} | {r['data']} | {r['docs']:,} | {r['build_s']:.1f} | {size} | {r['ms_per_query']:.3f} | "
                     f"{r['recall_at_10']:.4f} | {r['speedup']:.1f}x |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`python -m ret2.bench.search_index`: print the table (and write it as JSON with --output)."""
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--num-docs", type=int, nargs="+", default=[1_000_000], help="collection sizes to measure")
    parser.add_argument("--dim", type=int, default=768, help="embedding width")
    parser.add_argument("--num-queries", type=int, default=32, help="queries per timed batch")
    parser.add_argument("--recall-queries", type=int, default=256, help="random queries recall@10 is measured on")
    parser.add_argument("--m", type=int, default=32, help="HNSW neighbours per node")
    parser.add_argument("--ef-construction", type=int, default=80, help="HNSW build depth")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256], help="HNSW search depths to try")
    parser.add_argument("--milvus-docs", type=int, default=0, help="documents written to Milvus Lite (0: skip Milvus)")
    parser.add_argument("--clusters", type=int, default=0, help="0: uniform random vectors; N: around N centres")
    parser.add_argument("--hnsw-max-docs", type=int, help="sizes above this measure no HNSW")
    parser.add_argument("--precisions", nargs="*", choices=["int8", "binary"], default=[],
                        help="quantized codes whose flat scan (+ rescoring) is measured")
    parser.add_argument("--rescore-multipliers", type=int, nargs="+", default=[RESCORE_MULTIPLIER],
                        help="candidates rescored from fp16 per result, for the quantized and IVF-PQ rows (0: none)")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[], help="IVF-PQ cells visited per query (none: skip)")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF-PQ cells")
    parser.add_argument("--pq-m", type=int, default=96, help="IVF-PQ bytes a document")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is reported)")
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    configure_logging()
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rows = []
    for num_docs in args.num_docs:
        rows += run(num_docs, args.dim, args.num_queries, args.recall_queries, 10, args.m, args.ef_construction,
                    tuple(args.ef_search), min(args.milvus_docs, num_docs), args.repeats, args.clusters,
                    args.hnsw_max_docs is None or num_docs <= args.hnsw_max_docs, tuple(args.precisions),
                    tuple(args.rescore_multipliers), tuple(args.nprobe), args.nlist, args.pq_m)  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"faiss {faiss.__version__}, torch {torch.__version__}")  # fmt: skip
    print(table(rows))
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    run_cli(main)
