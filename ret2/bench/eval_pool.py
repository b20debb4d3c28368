"""Evaluation-pool benchmark: encode a large synthetic candidate pool into the shard cache, then search it, with a
tiny ReT-2 (random weights, 768-d output) through the code the evaluation CLIs run (`ret2.encoding`, `ret2.cache`, `ret2.search`).

    python -m ret2.bench.eval_pool [--sizes 25000 100000] [--json bench-eval-pool.json]

The pool is the text candidates of WebQA (t->t), generated with `generate_mbeir(row_pool_sizes=
{"mbeir_webqa_task1_test": N})`, searched by its 256 queries for the top 10. Per size, one process generates the
data, one encodes it (wall time, candidates/s, growth of resident memory), then fresh processes load the cache and
search it, three per backend: best wall time and candidates/s, smallest growth of resident memory during the search
(exact: the kernel's high-water mark `ru_maxrss` minus the resident size before). The cache is memory-mapped, so a
search's growth is the embeddings it reads plus working memory; the working memory staying flat from size to size
shows that the search takes no memory in proportion to the pool beyond the embeddings themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ret2.cache import SHARD_SIZE, cache_folder, encode_pool, load_pool
from ret2.encoding import Item, encode_items
from ret2.model import load_model_and_processor, model_fingerprint
from ret2.eval.mbeir import candidate_pool
from ret2.data.mbeir import EVAL_ROWS, read_queries
from ret2.search import search
from ret2.data.synthetic import generate_mbeir
from ret2.tiny import tiny_model_and_processor, words_of

from ret2.commands._common import ArgumentParser, run_cli

from .common import machine_info

ROW = next(row for row in EVAL_ROWS if row.query_stem == "mbeir_webqa_task1_test")
QUERIES = 256
BACKENDS = ("faiss", "torch")
REPEATS = 3  # search runs per backend and size
EMBEDDING_DIM = 768  # ReT-2's output width: embeddings as large as a real model's, towers tiny so encoding is quick


def rss() -> int:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def prepare_step(size: int, workdir: Path, batch_size: int) -> dict:
    """Generate a pool of `size` candidates, save the tiny model and the query embeddings under `workdir`."""
    root = generate_mbeir(workdir / "data", n_per_task=QUERIES, pool_size=16, n_train_per_task=1,
                          row_pool_sizes={ROW.query_stem: size}, m2kr=False)
    texts = ROW.pool_path(root).read_text().splitlines()[:2000]
    model, processor = tiny_model_and_processor(words_of(texts + ["find retrieve passages wikipedia"]), seed=0,
                                                embedding_dim=EMBEDDING_DIM)
    model.save_pretrained(workdir / "model")
    processor.save_pretrained(workdir / "model")
    queries = [Item(q["qid"], q["query_txt"], None, "", i) for i, q in enumerate(read_queries(ROW.query_path(root)))]
    embeddings = encode_items(model, processor, queries, root, batch_size=batch_size, orientation="stored")
    np.save(workdir / "queries.npy", embeddings)
    candidate_pool(ROW, root, workdir / "cache")  # the Arrow copy, outside the measured steps
    return {"candidates": size, "queries": len(queries)}


def encode_step(workdir: Path, batch_size: int) -> dict:
    """Encode the pool into the shard cache, through `AutoModel` as the CLIs load it."""
    model, processor = load_model_and_processor(str(workdir / "model"))
    pool = candidate_pool(ROW, workdir / "data", workdir / "cache")
    before = rss()
    start = time.perf_counter()
    encode_pool(model, processor, pool, _folder(workdir, pool), workdir / "data", batch_size=batch_size,
                orientation="stored")
    seconds = time.perf_counter() - start
    return {"encode_s": seconds, "encode_cands_per_s": len(pool.ids) / seconds, "encode_rss_growth": max_rss() - before}


def search_step(workdir: Path, backend: str) -> dict:
    """Load the cache written by `encode_step` and search it once with `backend`."""
    queries = np.load(workdir / "queries.npy")
    pool = candidate_pool(ROW, workdir / "data", workdir / "cache")
    embeddings = load_pool(pool, _folder(workdir, pool))
    search(queries[:1], embeddings.shards[:1], 10, backend=backend)  # warm-up: imports, first allocations
    before = rss()
    start = time.perf_counter()
    search(queries, embeddings.shards, 10, backend=backend)
    seconds = time.perf_counter() - start
    return {f"search_{backend}_s": seconds, f"search_{backend}_rss_growth": max_rss() - before,
            "embedding_bytes": embeddings.nbytes}


def _folder(workdir: Path, pool) -> Path:
    return cache_folder(workdir / "cache", pool, model_fingerprint(str(workdir / "model")), torch.float32, SHARD_SIZE,
                        orientation="stored")


def table(rows: list[dict]) -> str:
    mb = 2**20
    lines = [
        "| candidates | encode s | encode cand/s | encode RSS growth MB | embeddings MB | backend | search s | "
        "search cand/s | search RSS growth MB | growth - embeddings MB |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        for backend in BACKENDS:
            lines.append(
                f"| {r['candidates']:,} | {r['encode_s']:.1f} | {r['encode_cands_per_s']:,.0f} | "
                f"{r['encode_rss_growth'] / mb:.0f} | {r['embedding_bytes'] / mb:.0f} | {backend} | "
                f"{r[f'search_{backend}_s']:.2f} | {r[f'search_{backend}_cands_per_s']:,.0f} | "
                f"{r[f'search_{backend}_rss_growth'] / mb:.0f} | "
                f"{(r[f'search_{backend}_rss_growth'] - r['embedding_bytes']) / mb:.0f} |"
            )
    return "\n".join(lines) + (
        f"\n\n{rows[0]['queries']} queries, top 10, best of {REPEATS} searches. A search's RSS growth is the embeddings it "
        "reads (memory-mapped) plus its working memory, the last column."
    )


def main(argv: list[str] | None = None) -> dict:
    """CLI: one fresh process per (size, step); prints the table, writes the JSON report, returns it."""
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000], help="pool sizes")
    parser.add_argument("--batch-size", type=int, default=256, help="items per model call")
    parser.add_argument("--json", type=Path, default=Path("bench-eval-pool.json"), help="where to write the report")
    parser.add_argument("--child", nargs=2, metavar=("WORKDIR", "STEP"), help=argparse.SUPPRESS)  # one measured step
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.child:
        workdir, step = Path(args.child[0]), args.child[1]
        if step == "prepare":
            result = prepare_step(args.size, workdir, args.batch_size)
        else:
            result = encode_step(workdir, args.batch_size) if step == "encode" else search_step(workdir, step)
        print(json.dumps(result))
        return result
    rows = []
    for size in args.sizes:
        row = {}
        with tempfile.TemporaryDirectory() as tmp:
            # A fresh process per step gives clean peak-memory readings; searches run REPEATS times each, keeping the
            # fastest time and the smallest memory growth (allocator and page-cache noise only ever add).
            for step in ("prepare", "encode", *[b for b in BACKENDS for _ in range(REPEATS)]):
                command = [sys.executable, "-m", "ret2.bench.eval_pool", "--child", tmp, step, "--size", str(size),
                           "--batch-size", str(args.batch_size)]
                child = subprocess.run(command, capture_output=True, text=True, check=False)
                if child.returncode:
                    raise RuntimeError(f"size {size}, step {step} failed:\n{child.stderr[-3000:]}")
                for key, value in json.loads(child.stdout.strip().splitlines()[-1]).items():
                    row[key] = min(row[key], value) if key.startswith("search_") and key in row else value
        for backend in BACKENDS:  # derived from the fastest run
            row[f"search_{backend}_cands_per_s"] = size / row[f"search_{backend}_s"]
        rows.append(row)
    report = {"machine": machine_info(torch.device("cpu")), "batch_size": args.batch_size, "results": rows}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    return report


if __name__ == "__main__":
    run_cli(main)
