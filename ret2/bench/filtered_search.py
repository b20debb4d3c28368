"""Search within a part of an index, at scale and on the demo's data, through `Ret2Index` itself.

    python -m ret2.bench.filtered_search                                  # 1,000,000 x 768, 1000 clusters, one thread
    python -m ret2.bench.filtered_search --num-docs 100000 --nlist 256
    python -m ret2.bench.filtered_search --num-docs 0 --demo-dir runs/demo --seeds 42 1 2   # the demo's data only

At scale: an index folder of `--num-docs` clustered random unit vectors (fp16, as the cache stores them) stored with
`Ret2Index.build(..., embeddings=)` for a tiny model of the same width, each document with a generated word text and
a metadata field `bucket` (0-999, a random permutation, so `{"bucket": {"$lt": b}}` keeps exactly b / 1000 of the
documents). Per selectivity (`--selectivities`): ms/query of the filtered exact scan against the unfiltered one (the
filter's evaluation over the Parquet metadata, `ret2.index.metadata.select`, included: once per batch, as `search`
runs it; also shown alone, "filter ms/batch"), and of the IVF-PQ engine with the same filter, with its recall@10
against the filtered exact scan. Then `Ret2Index.search` on text queries (3 words of a document's text): vector,
BM25 (`mode="keyword"`; the BM25 index is built by the first keyword search, timed apart) and hybrid
(`mode="hybrid"`, RRF; the tiny model encodes the queries), unfiltered and at the 10% filter.

On the demo's data (`--demo-dir`, the folder `ret2-demo` writes: `seed-<s>/data` and `seed-<s>/ret2-model`): for each
seed and each M-BEIR row whose queries are texts, an index of the row's local pool built with that seed's trained
model, searched with the row's queries (the instruction and the query text, as the evaluation encodes them) in each
mode; the row's primary recall (hit@k: a positive among the top k), mean and spread over the seeds.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ret2.bench.help_time import machine
from ret2.bench.search_index import _best_of, random_shards
from ret2.commands._common import ArgumentParser, configure_logging, run_cli
from ret2.options import SEARCH_MODES

logger = logging.getLogger("ret2.bench")

SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
BUCKETS = 1000  # values of the `bucket` field: a filter `$lt b` keeps b / BUCKETS of the documents
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "gu", "ha", "jo", "ke", "la", "mu",
             "no", "pi", "qua", "re", "so", "tu", "va", "we", "xi", "yo", "za", "be", "co")  # fmt: skip


def word_texts(num_docs: int, seed: int = 0, words: int = 20_000, length: tuple[int, int] = (8, 16)) -> list[str]:
    """`num_docs` texts of `length` words drawn from a vocabulary of `words` three-syllable words with Zipf-like
    frequencies (the r-th word's probability proportional to 1 / (r + 10)), so a few words are common and most rare."""
    rng = np.random.default_rng(seed)
    s = len(SYLLABLES)
    vocabulary = np.array([SYLLABLES[i // s**2 % s] + SYLLABLES[i // s % s] + SYLLABLES[i % s] for i in range(words)])
    probability = 1.0 / (np.arange(words) + 10.0)
    lengths = rng.integers(length[0], length[1] + 1, num_docs)
    drawn = vocabulary[rng.choice(words, int(lengths.sum()), p=probability / probability.sum())]
    ends = np.cumsum(lengths)
    return [" ".join(drawn[end - n : end]) for end, n in zip(ends, lengths)]


def stored_index(work: Path, num_docs: int, dim: int, clusters: int, metadata=lambda i: {}):
    """(an index in `work/index` of `num_docs` clustered unit vectors stored with `embeddings=` for a tiny model of
    width `dim` saved in `work/model`, each document with a word text and the fields `metadata(i)`, their texts)."""
    from ret2.index import Ret2Index
    from ret2.tiny import tiny_model_and_processor

    model, processor = tiny_model_and_processor(["x"], embedding_dim=dim)
    model.save_pretrained(work / "model")
    processor.save_pretrained(work / "model")
    vectors = np.concatenate(random_shards(num_docs, dim, seed=0, clusters=clusters))
    texts = word_texts(num_docs)
    records = [{"id": f"d{i}", "text": t, **metadata(i)} for i, t in enumerate(texts)]
    start = time.perf_counter()
    index = Ret2Index.build(work / "index", records, model=work / "model", image_root=work, shard_size=100_000,
                            embeddings=vectors, device="cpu")  # fmt: skip
    logger.info("%d documents stored in the index in %.1f s", num_docs, time.perf_counter() - start)
    return index, texts


def _filter(selectivity: float) -> dict:
    return {"bucket": {"$lt": round(selectivity * BUCKETS)}}


def run(num_docs: int, dim: int = 768, clusters: int = 1000, num_queries: int = 32, recall_queries: int = 128,
        selectivities: Sequence[float] = SELECTIVITIES, nlist: int = 1024, pq_m: int = 192, nbits: int | None = None,
        nprobe: int = 8, repeats: int = 3, folder: Path | None = None) -> dict[str, list[dict]]:  # fmt: skip
    """{"vector": rows per selectivity (None: unfiltered), "text": rows per mode and filter}."""
    from ret2.index.metadata import select
    from ret2.search import EXACT_FILTER_ROWS, recall_at_k

    bad = [s for s in selectivities if not 0 < s <= 1]
    if bad:
        raise ValueError(f"selectivities must be in (0, 1], got {bad}")
    work = Path(folder or tempfile.mkdtemp(prefix="ret2-filtered-search-"))
    buckets = np.random.default_rng(2).permutation(num_docs) % BUCKETS
    index, texts = stored_index(work, num_docs, dim, clusters, lambda i: {"bucket": int(buckets[i])})
    queries = np.concatenate(random_shards(max(recall_queries, num_queries), dim, seed=1, clusters=clusters))
    queries = queries.astype(np.float32)
    batch = queries[:num_queries]
    metadata = index.storage.metadata()

    def scan(engine: str, selectivity: float | None, on: np.ndarray):
        allowed = None if selectivity is None else select(metadata, _filter(selectivity))
        return index.search_embeddings(on, 10, engine, allowed=allowed)

    start = time.perf_counter()
    report = index.build_approximate("ivfpq", recall_sample=min(1000, num_docs), nlist=nlist, m=pq_m, nbits=nbits,
                                     nprobe=nprobe)  # fmt: skip
    ivfpq_build_s = time.perf_counter() - start
    logger.info("IVF-PQ built in %.1f s (recall@10 %.4f on stored documents)", ivfpq_build_s, report["recall_at_10"])
    vector_rows = []
    for selectivity in (None, *selectivities):
        select_s, kept = (0.0, None) if selectivity is None else _best_of(
            lambda: select(metadata, _filter(selectivity)), repeats)  # fmt: skip
        matching = num_docs if kept is None else len(kept)
        exact_s, _ = _best_of(lambda: scan("exact", selectivity, batch), repeats)
        ivfpq_s, _ = _best_of(lambda: scan("approximate", selectivity, batch), repeats)
        _, exact = scan("exact", selectivity, queries)
        _, found = scan("approximate", selectivity, queries)
        vector_rows.append({"selectivity": selectivity, "matching": matching, "filter_ms": 1000 * select_s,
                            "exact_ms": 1000 * exact_s / num_queries, "ivfpq_ms": 1000 * ivfpq_s / num_queries,
                            "ivfpq_recall_at_10": recall_at_k(exact, found),
                            "ivfpq_path": "exact scan of the allowed rows" if selectivity is not None
                            and matching <= EXACT_FILTER_ROWS else "IVF-PQ"})  # fmt: skip
        logger.info("selectivity %s: %s", selectivity, vector_rows[-1])
    unfiltered = vector_rows[0]["exact_ms"]
    for row in vector_rows:
        row["exact_vs_unfiltered"] = row["exact_ms"] / unfiltered
        row["ivfpq_build_s"] = ivfpq_build_s

    rng = np.random.default_rng(3)
    sources = rng.integers(0, num_docs, num_queries)
    text_queries = [" ".join(rng.choice(texts[i].split(), 3, replace=False)) for i in sources]
    start = time.perf_counter()
    index.search(text_queries[:1], k=10, mode="keyword")  # builds the BM25 index of the texts
    bm25_build_s = time.perf_counter() - start
    index.search(text_queries[:1], k=10, mode="hybrid")  # warms the model's first query encoding up
    logger.info("BM25 index of %d texts built in %.1f s", num_docs, bm25_build_s)
    text_rows = []
    for mode in SEARCH_MODES:
        for selectivity in (None, 0.1):
            filter_ = None if selectivity is None else _filter(selectivity)
            seconds, _ = _best_of(lambda: index.search(text_queries, k=10, mode=mode, filter=filter_), repeats)
            text_rows.append({"mode": mode, "selectivity": selectivity, "docs": num_docs, "bm25_build_s": bm25_build_s,
                              "ms_per_query": 1000 * seconds / num_queries})  # fmt: skip
    return {"vector": vector_rows, "text": text_rows}


def text_query_rows():
    """The M-BEIR rows whose queries are texts only."""
    from ret2.data.mbeir import EVAL_ROWS

    return [row for row in EVAL_ROWS if row.query_modality == "text"]


def run_demo(demo_dir: Path, seeds: Sequence[int], folder: Path | None = None) -> list[dict]:
    """Per text-query row and mode: the primary recall of each seed's trained model on its own generated data, and
    the mean and spread (sample standard deviation; 0 for one seed) over the seeds."""
    from ret2.data.mbeir import (
        DEFAULT_INSTRUCTIONS, INSTRUCTIONS, candidate_text, load_instructions, query_instruction, query_text,
        read_candidates, read_qrels, read_queries,
    )  # fmt: skip
    from ret2.index import Ret2Index

    work = Path(folder or tempfile.mkdtemp(prefix="ret2-filtered-demo-"))
    recalls: dict[tuple[str, str], list[float]] = {}
    for seed in seeds:
        data, model = Path(demo_dir) / f"seed-{seed}" / "data", Path(demo_dir) / f"seed-{seed}" / "ret2-model"
        missing = [str(p) for p in (data, model) if not p.is_dir()]
        if missing:
            raise FileNotFoundError(f"seed {seed}: {missing} missing; run `ret2-demo --output-dir {demo_dir}` first")
        tsv = data / INSTRUCTIONS  # the data's own, else the built-in table (as the evaluation does)
        instructions = load_instructions(tsv) if tsv.is_file() else DEFAULT_INSTRUCTIONS
        for row in text_query_rows():
            records = [{"id": c["did"], "text": candidate_text(c) or None, "image": c["img_path"]}
                       for c in read_candidates(row.pool_path(data))]  # fmt: skip
            index = Ret2Index.build(work / f"seed-{seed}" / row.query_stem, records, model=model, image_root=data,
                                    device="cpu")  # fmt: skip
            queries = list(read_queries(row.query_path(data)))
            texts = [query_text(q, query_instruction(q, instructions)) for q in queries]
            qrels = read_qrels(row.qrels_path(data))
            for mode in SEARCH_MODES:
                hits = index.search(texts, k=row.primary_k, mode=mode)
                found = [bool(qrels.get(q["qid"], set()) & {h.id for h in h_}) for q, h_ in zip(queries, hits)]
                recalls.setdefault((row.label, mode), []).append(sum(found) / len(found))
    rows = []
    for (label, mode), values in recalls.items():
        rows.append({"row": label, "mode": mode, "values": values, "mean": statistics.fmean(values),
                     "std": statistics.stdev(values) if len(values) > 1 else 0.0})  # fmt: skip
    return rows


def _selectivity(s: float | None) -> str:
    return "none" if s is None else f"{100 * s:g}%"


def tables(result: dict) -> str:
    """The markdown tables of a result of `run` (keys "vector", "text") and `run_demo` ("demo")."""
    out = []
    if result.get("vector"):
        out += ["| filter keeps | documents matching | filter ms/batch | exact ms/query | vs unfiltered exact | "
                "IVF-PQ ms/query | IVF-PQ recall@10 vs filtered exact | IVF-PQ answered by |",
                "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        out += [f"| {_selectivity(r['selectivity'])} | {r['matching']:,} | {r['filter_ms']:.1f} | "
                f"{r['exact_ms']:.2f} | {r['exact_vs_unfiltered']:.3g}x | {r['ivfpq_ms']:.2f} | {r['ivfpq_recall_at_10']:.4f} | "
                f"{r['ivfpq_path']} |" for r in result["vector"]]  # fmt: skip
        out.append("")
    if result.get("text"):
        out += ["| mode | filter keeps | documents | ms/query (Ret2Index.search) |", "|---|---|---:|---:|"]
        out += [f"| {r['mode']} | {_selectivity(r['selectivity'])} | {r['docs']:,} | {r['ms_per_query']:.2f} |"
                for r in result["text"]]  # fmt: skip
        out.append("")
    if result.get("demo"):
        out += ["| row (text queries) | mode | recall (mean ± std over seeds) | per seed |", "|---|---|---:|---|"]
        out += [f"| {r['row']} | {r['mode']} | {r['mean']:.3f} ± {r['std']:.3f} | "
                f"{' '.join(f'{v:.3f}' for v in r['values'])} |"
                for r in result["demo"]]  # fmt: skip
        for mode in SEARCH_MODES:
            means = [r["mean"] for r in result["demo"] if r["mode"] == mode]
            out.append(f"| **average** | {mode} | {statistics.fmean(means):.3f} | |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--num-docs", type=int, default=1_000_000,
                        help="documents in the index (0: skip the scale run)")
    parser.add_argument("--dim", type=int, default=768, help="embedding width")
    parser.add_argument("--clusters", type=int, default=1000, help="0: uniform random vectors")
    parser.add_argument("--selectivities", type=float, nargs="+", default=list(SELECTIVITIES),
                        help="fractions of the documents the filters keep")
    parser.add_argument("--num-queries", type=int, default=32, help="queries of the timed batch")
    parser.add_argument("--recall-queries", type=int, default=128, help="queries recall@10 is measured on")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF-PQ cells")
    parser.add_argument("--pq-m", type=int, default=192, help="IVF-PQ codes a document")
    parser.add_argument("--nbits", type=int, help="IVF-PQ bits a code (default: the engine's)")
    parser.add_argument("--nprobe", type=int, default=8, help="IVF-PQ cells visited per query")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each case (the best is reported)")
    parser.add_argument("--demo-dir", type=Path, help="a `ret2-demo` output folder: also measure its text-query rows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="the demo's seeds (with --demo-dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    parser.add_argument("--folder", type=Path, help="where the indexes are written (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.num_docs == 0 and args.demo_dir is None:
        parser.error("--num-docs 0 skips the scale run: give --demo-dir to measure something")
    configure_logging()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    result: dict = {"machine": machine(), "threads": args.threads}
    if args.num_docs:
        folder = args.folder and args.folder / "scale"
        result |= run(args.num_docs, args.dim, args.clusters, args.num_queries, args.recall_queries,
                      tuple(args.selectivities), args.nlist, args.pq_m, args.nbits, args.nprobe, args.repeats,
                      folder)  # fmt: skip
    if args.demo_dir is not None:
        result["demo"] = run_demo(args.demo_dir, args.seeds, args.folder and args.folder / "demo")
    where, result["load_average_at_end"] = result["machine"], machine()["load_average"]
    print(f"machine: {where['cores']} cores, CPU flags {' '.join(where['simd_flags']) or 'unknown'}, load average "
          f"{' '.join(f'{x:.2f}' for x in where['load_average'])} at the start, "
          f"{' '.join(f'{x:.2f}' for x in result['load_average_at_end'])} at the end, "
          f"{args.threads} thread(s)")  # fmt: skip
    print(tables(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    run_cli(main)
