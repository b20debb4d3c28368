"""Index size and exact search: one 768-d vector per document (ReT-2) vs 32 x 128 token vectors (ReT-1).

Times the shipped search, `ret2.search.search` (what `eval.mbeir`, `eval.m2kr` and `ret2.index` rank with), over
documents held in host memory as the cache holds them: single vectors with its torch backend on `device` and, on the
CPU, its faiss `IndexFlatIP` backend; multi-vector documents by late interaction, `s(q, d) = sum_k max_l <q_k, d_l>`,
with its torch backend. Each call includes the float64 rescoring of the k + 16 candidates the scan keeps.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ret2.search import search

from .common import summarise, synchronize, time_calls

logger = logging.getLogger("bench")


def random_unit(shape: tuple[int, ...], device: torch.device, seed: int, chunk: int = 10_000) -> torch.Tensor:
    """Random L2-normalised fp32 vectors along the last dim, generated in chunks along dim 0 (less peak memory)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(shape, device=device)
    for start in range(0, shape[0], chunk):
        block = out[start : start + chunk]
        block.normal_(generator=generator)
        block.copy_(F.normalize(block, dim=-1))
    return out


def run(
    device: torch.device,
    num_docs: int = 100_000,
    num_queries: int = 16,
    dim: int = 768,
    tokens: int = 32,
    token_dim: int = 128,
    multi_docs: int | None = None,
    k: int = 10,
    repeats: int = 2,
) -> list[dict]:
    """Rows for the single-vector and multi-vector indexes over `num_docs` documents.

    `multi_docs`: search the multi-vector index over only this many documents and scale the time linearly to
    `num_docs` (the search is a linear scan); the row says so (`scaled_from_docs`). Default: all `num_docs`.
    """
    rows = []
    cpu = torch.device("cpu")
    docs = random_unit((num_docs, dim), cpu, seed=0).numpy()  # host memory, as the cache's shards are
    queries = random_unit((num_queries, dim), cpu, seed=1)
    seconds = time_calls(lambda: search(queries, [docs], k, "torch", device), device, warmup=1, repeats=repeats)
    rows.append(_row("single", "torch", num_docs, num_queries, dim * 4, seconds, None, device, dim=dim))
    try:
        import faiss  # optional: absent on the GPU machine
    except ImportError:
        faiss = None
        logger.info("faiss is not installed: single-vector search timed with torch only")
    if faiss is not None and device.type == "cpu":
        faiss.omp_set_num_threads(torch.get_num_threads())  # the same threads as the torch searches
        seconds = time_calls(lambda: search(queries, [docs], k, "faiss", device), device, warmup=1, repeats=repeats)
        rows.append(_row("single", "faiss IndexFlatIP", num_docs, num_queries, dim * 4, seconds, None, device,
                         dim=dim, faiss_threads=faiss.omp_get_max_threads()))  # fmt: skip
    del docs

    searched = min(multi_docs or num_docs, num_docs)
    multi = random_unit((searched, tokens, token_dim), cpu, seed=2).numpy()  # (N, L, D) fp32: 1.6 GB at 100k x 32 x 128
    multi_queries = random_unit((num_queries, tokens, token_dim), cpu, seed=3)
    seconds = time_calls(
        lambda: search(multi_queries, [multi], k, "torch", device), device, warmup=1, repeats=repeats
    )
    scale = num_docs / searched
    rows.append(_row("multi", "torch late interaction", num_docs, num_queries, tokens * token_dim * 4,
                     [s * scale for s in seconds], searched if searched != num_docs else None, device,
                     tokens=tokens, token_dim=token_dim))  # fmt: skip
    del multi
    synchronize(device)
    return rows


def _row(kind, engine, num_docs, num_queries, bytes_per_doc, seconds, scaled_from, device, **extra) -> dict:
    row = {"section": "index", "index": kind, "engine": engine, "num_docs": num_docs, "num_queries": num_queries,
           "bytes_per_doc": bytes_per_doc, "index_mb": bytes_per_doc * num_docs / 2**20, **extra, **summarise(seconds)}  # fmt: skip
    row["ms_per_query"] = 1000 * row["best_s"] / num_queries
    row["scaled_from_docs"] = scaled_from
    row["device"] = str(device)
    logger.info(
        "index %-6s %-22s %d docs: %d B/doc, %.2f ms/query%s", kind, engine, num_docs, bytes_per_doc,
        row["ms_per_query"], f" (measured on {scaled_from} docs, scaled)" if scaled_from else "",
    )  # fmt: skip
    return row


__all__ = ["run", "random_unit"]
