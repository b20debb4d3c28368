"""Index size and exact search: one 768-d vector per document (ReT-2) vs 32 x 128 token vectors (ReT-1).

Single vectors are searched with faiss `IndexFlatIP` when faiss is installed (and with a torch matrix product, the
same engine as the multi-vector search, always). Multi-vector documents are scored by brute-force late interaction,
`s(q, d) = sum_k max_l <q_k, d_l>`, chunk by chunk in torch, keeping a running top-k.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

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


def single_vector_search(queries: torch.Tensor, docs: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """queries (Nq, D), docs (N, D) -> indices (Nq, k) of the k highest dot products."""
    best_scores = best_ids = None
    for start in range(0, docs.shape[0], chunk):
        scores = queries @ docs[start : start + chunk].T  # (Nq, C)
        best_scores, best_ids = _merge_topk(best_scores, best_ids, scores, start, k)
    return best_ids


def late_interaction_search(queries: torch.Tensor, docs: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """queries (Nq, K, D), docs (N, L, D) -> indices (Nq, k) of the k best late-interaction scores."""
    num_queries, query_tokens, dim = queries.shape
    flat_queries = queries.reshape(-1, dim)  # (Nq*K, D)
    best_scores = best_ids = None
    for start in range(0, docs.shape[0], chunk):
        block = docs[start : start + chunk]  # (C, L, D)
        token_scores = flat_queries @ block.reshape(-1, dim).T  # (Nq*K, C*L)
        token_scores = token_scores.view(num_queries, query_tokens, block.shape[0], block.shape[1])  # (Nq, K, C, L)
        scores = token_scores.amax(dim=-1).sum(dim=1)  # (Nq, C)
        best_scores, best_ids = _merge_topk(best_scores, best_ids, scores, start, k)
    return best_ids


def _merge_topk(best_scores, best_ids, scores, offset, k):
    top_scores, top_ids = scores.topk(min(k, scores.shape[1]), dim=1)  # (Nq, k)
    top_ids = top_ids + offset
    if best_scores is None:
        return top_scores, top_ids
    scores, ids = torch.cat([best_scores, top_scores], dim=1), torch.cat([best_ids, top_ids], dim=1)  # (Nq, 2k)
    keep = scores.topk(k, dim=1).indices
    return scores.gather(1, keep), ids.gather(1, keep)


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
    docs = random_unit((num_docs, dim), device, seed=0)
    queries = random_unit((num_queries, dim), device, seed=1)
    chunk = 20_000
    seconds = time_calls(lambda: single_vector_search(queries, docs, k, chunk), device, warmup=1, repeats=repeats)
    rows.append(_row("single", "torch", num_docs, num_queries, dim * 4, seconds, None, device, dim=dim))
    try:
        import faiss  # optional: absent on the GPU machine
    except ImportError:
        faiss = None
        logger.info("faiss is not installed: single-vector search timed with torch only")
    if faiss is not None and device.type == "cpu":
        faiss.omp_set_num_threads(torch.get_num_threads())  # the same threads as the torch searches
        index = faiss.IndexFlatIP(dim)
        index.add(docs.numpy())
        query_array = queries.numpy()
        seconds = time_calls(lambda: index.search(query_array, k), device, warmup=1, repeats=repeats)
        rows.append(_row("single", "faiss IndexFlatIP", num_docs, num_queries, index.code_size, seconds, None, device,
                         dim=dim, faiss_threads=faiss.omp_get_max_threads()))  # fmt: skip
        del index
    del docs

    searched = min(multi_docs or num_docs, num_docs)
    multi = random_unit((searched, tokens, token_dim), device, seed=2)  # (N, L, D) fp32: 1.6 GB at 100k x 32 x 128
    multi_queries = random_unit((num_queries, tokens, token_dim), device, seed=3)
    chunk = max(1, 2**26 // (num_queries * tokens * tokens))  # token-score block of about 256 MB
    seconds = time_calls(
        lambda: late_interaction_search(multi_queries, multi, k, chunk), device, warmup=1, repeats=repeats
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


__all__ = ["run", "single_vector_search", "late_interaction_search", "random_unit"]
