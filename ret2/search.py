"""Exact top-k search of query embeddings against document embeddings held in shards.

Single vectors, (Nq, D) against (N, D), are scored by inner product (cosine: the embeddings are normalised);
multi-vector embeddings, (Nq, Kq, D) against (N, Kd, D), by late interaction: the sum over query tokens of the best
dot product over the document's tokens; both through `modeling_ret2.similarity`, the model's own scoring. Every
vector (each token of a multi-vector embedding, as the model makes them) is re-normalised after widening from its
stored dtype, as UniIR does: fp16 rounding moves norms by ~1e-3, and stored rows need not be unit vectors at all.

The search makes two passes. A scan over the documents, chunk by chunk, keeps the best `k + margin` candidates of
every query: FAISS exact inner-product k-NN, `faiss.knn` (single vectors on the CPU) or a torch matrix product (any device, both kinds),
fp32, memory bounded by the chunk, never by the pool. The candidates are then rescored in float64 (exact for fp16
embeddings, whatever the engine or chunking) and ordered by score, ties to the lower document index. So every
backend, chunk size and shard layout gives the same ranking.

Quantized search (`precision="int8"` or `"binary"`, single vectors) scans compact FAISS codes of the documents instead
of the fp16 vectors (`build_quantized`: int8 scalar codes calibrated per dimension on the stored documents, 1 byte a
dimension; or sign bits compared by Hamming distance, 1 bit a dimension), keeps `rescore_multiplier * k` candidates
and rescores them exactly from the fp16 vectors, which stay on disk (memory-mapped) and are read only for those
candidates (`search_quantized`). With `rescore_multiplier=0` the codes' own scores rank the top k.

For collections in the millions, `build_hnsw` / `search_hnsw` are the approximate alternative (FAISS HNSW over fp32
copies of single vectors), and `recall_at_k` measures it against `search`.

Every search takes `allowed`, the sorted rows a metadata filter keeps (`ret2.index.metadata.select`), and ranks only
those, before the top k: the exact scan reads and scores only the allowed rows; the FAISS indexes (int8 / binary
codes, HNSW, IVF-PQ) skip the others through an `IDSelectorBitmap`. An approximate index then returns k results
whenever k rows are allowed: a query it leaves short (a selective filter cuts HNSW's graph walk and IVF's probed
cells) is answered by the exact scan of the allowed rows, and so is every query when at most
`EXACT_FILTER_ROWS` rows are allowed (docs/benchmarks.md#filtered-search).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from modeling_ret2 import similarity

# what the exact scan runs on, what it reads, how many candidates quantized codes leave for fp16 rescoring
from .options import BACKENDS, PRECISIONS, RESCORE_MULTIPLIER  # noqa: F401 - light names the commands list

logger = logging.getLogger(__name__)

_MARGIN = 16  # extra candidates kept by the scan: engines disagree by ~1e-7 on near-ties at the k-th place
_BLOCK = 1 << 25  # score-matrix elements per step of the scan (128 MB in fp32)
EXACT_FILTER_ROWS = 20_000  # approximate engines scan the allowed rows exactly when a filter keeps at most this many


def _unit(x: torch.Tensor) -> torch.Tensor:
    """`x` L2-normalised along its last dimension (single vectors, or each token of multi-vector embeddings)."""
    return torch.nn.functional.normalize(x, dim=-1)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """A float32 copy of `x` with every vector re-normalised: what the approximate engines (HNSW, Milvus) are given,
    so that they score the same vectors as the exact search."""
    return np.ascontiguousarray(_unit(torch.from_numpy(np.array(x, dtype=np.float32))).numpy())


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _resolve_backend(backend: str, multi_vector: bool, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"search backend {backend!r} is not one of {list(BACKENDS)}")
    if backend == "faiss":
        if multi_vector:
            raise ValueError("the faiss backend searches single vectors only; use 'torch' for multi-vector embeddings")
        if _faiss() is None:
            raise ValueError("the faiss backend needs faiss (pip install faiss-cpu)")
        return backend
    return "torch" if backend == "auto" else backend


def _float_queries(queries: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Query embeddings as a float32 CPU tensor, from a tensor or an array."""
    if isinstance(queries, torch.Tensor):
        return queries.detach().cpu().float()
    return torch.from_numpy(np.asarray(queries, dtype=np.float32))


def _chunks(shards: Sequence[np.ndarray], rows: int, allowed: np.ndarray | None = None):
    """(global indices (c,) int64, tensor in the stored dtype) of consecutive chunks of at most `rows` documents,
    only the `allowed` ones (sorted global indices) when given: fp16 travels to the device as it is and is widened
    there."""
    offset = 0
    for shard in shards:
        if allowed is None:
            for start in range(0, len(shard), rows):
                block = np.array(shard[start : start + rows])  # a copy: shards are read-only
                yield np.arange(offset + start, offset + start + len(block)), torch.from_numpy(block)
        else:
            inside = allowed[np.searchsorted(allowed, offset) : np.searchsorted(allowed, offset + len(shard))]
            for start in range(0, len(inside), rows):
                ids = inside[start : start + rows]
                yield ids, torch.from_numpy(np.asarray(shard[ids - offset]))  # reads only the allowed rows
        offset += len(shard)


def check_allowed(allowed: np.ndarray | None, total: int) -> np.ndarray | None:
    """`allowed` as sorted unique int64 row indices in [0, total), or a ValueError naming the bad row."""
    if allowed is None:
        return None
    allowed = np.unique(np.asarray(allowed, dtype=np.int64))
    if len(allowed) and (allowed[0] < 0 or allowed[-1] >= total):
        bad = allowed[0] if allowed[0] < 0 else allowed[-1]
        raise ValueError(f"allowed row {bad} is outside the {total} documents searched")
    return allowed


def _selector(allowed: np.ndarray, total: int):
    """A FAISS `IDSelectorBitmap` of the allowed rows, and the bitmap it reads (keep it alive while searching)."""
    mask = np.zeros(total, bool)
    mask[allowed] = True
    bits = np.packbits(mask, bitorder="little")
    return _faiss().IDSelectorBitmap(total, _faiss().swig_ptr(bits)), bits


def _empty_result(num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((num_queries, 0), np.float32), np.empty((num_queries, 0), np.int64)


def _merge(best: tuple[torch.Tensor, torch.Tensor], scores: torch.Tensor, ids: torch.Tensor) -> None:
    """Keep, in place, the best `width` of (best, new) candidates; best = (scores (b, width), ids (b, width))."""
    best_scores, best_ids = best
    all_scores = torch.cat([best_scores, scores], dim=1)  # (b, width + c)
    top = all_scores.topk(best_scores.shape[1], dim=1)
    best_ids.copy_(torch.cat([best_ids, ids], dim=1).gather(1, top.indices))
    best_scores.copy_(top.values)


def _scan_torch(queries: torch.Tensor, shards: Sequence[np.ndarray], width: int, device: torch.device,
                allowed: np.ndarray | None = None) -> torch.Tensor:  # fmt: skip
    """Candidate indices (Nq, width) from a chunked torch scan on `device`."""
    num_queries, multi = queries.shape[0], queries.dim() == 3
    pairs = queries.shape[1] * shards[0].shape[1] if multi else 1  # token pairs scored per (query, document)
    query_block = min(num_queries, max(1, 4096 // (queries.shape[1] if multi else 1)))
    rows = max(1, _BLOCK // (query_block * pairs))
    queries = queries.to(device)
    best_scores = torch.full((num_queries, width), -torch.inf, device=device)
    best_ids = torch.full((num_queries, width), -1, dtype=torch.long, device=device)
    for ids, docs in _chunks(shards, rows, allowed):
        docs = _unit(docs.to(device).float())  # (c, D) or (c, Kd, D)
        ids = torch.from_numpy(ids).to(device)
        for q in range(0, num_queries, query_block):
            block = queries[q : q + query_block]
            scores = similarity(block, docs)  # (b, c)
            _merge((best_scores[q : q + query_block], best_ids[q : q + query_block]), scores, ids.expand(len(block), -1))
    return best_ids.cpu()


def _scan_faiss(queries: torch.Tensor, shards: Sequence[np.ndarray], width: int,
                allowed: np.ndarray | None = None) -> torch.Tensor:  # fmt: skip
    """Candidate indices (Nq, width) from FAISS's exact inner-product k-NN over one chunk of documents at a time
    (`faiss.knn`: the scan of `IndexFlatIP` without copying the chunk into an index)."""
    faiss = _faiss()
    dim = queries.shape[1]
    queries = np.ascontiguousarray(queries.numpy())
    best = (torch.full((len(queries), width), -torch.inf), torch.full((len(queries), width), -1, dtype=torch.long))
    for rows, docs in _chunks(shards, max(width, _BLOCK // dim), allowed):
        chunk = np.ascontiguousarray(_unit(docs.float()).numpy())
        scores, ids = faiss.knn(queries, chunk, min(width, len(docs)), faiss.METRIC_INNER_PRODUCT)  # (Nq, min(width, c))
        _merge(best, torch.from_numpy(scores), torch.from_numpy(rows[ids]))
    return best[1]


def gather_rows(shards: Sequence[np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Rows `ids` (global indices) of the concatenated shards: one sorted pass, one slice per shard touched."""
    offsets = np.cumsum([0] + [len(s) for s in shards])
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    bounds = np.searchsorted(sorted_ids, offsets)  # sorted_ids[bounds[s]:bounds[s + 1]] lie in shard s
    out = np.empty((len(ids), *shards[0].shape[1:]), dtype=shards[0].dtype)
    for s in np.flatnonzero(np.diff(bounds)):
        rows = slice(bounds[s], bounds[s + 1])
        out[order[rows]] = shards[s][sorted_ids[rows] - offsets[s]]
    return out


def _rescore(
    queries: torch.Tensor, shards: Sequence[np.ndarray], candidates: torch.Tensor, k: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 scores of the candidates; the top k by score, ties to the lower index. Ids of -1 (an
    approximate engine that found fewer candidates) come last, as -1 with a score of -inf."""
    candidates = candidates.sort(dim=1).values  # ascending ids: a stable sort then breaks ties by index
    num_queries, width = candidates.shape
    per_query = width * int(np.prod(shards[0].shape[1:])) * (queries.shape[1] if queries.dim() == 3 else 1)
    block = max(1, _BLOCK // per_query)
    out_scores, out_ids = np.empty((num_queries, k), np.float32), np.empty((num_queries, k), np.int64)
    for q in range(0, num_queries, block):
        ids = candidates[q : q + block]  # (b, width)
        docs = _unit(torch.from_numpy(gather_rows(shards, ids.clamp(min=0).flatten().numpy())).to(device, torch.float64))
        docs = docs.view(len(ids), width, *docs.shape[1:])  # (b, width, D) or (b, width, Kd, D)
        query = _unit(queries[q : q + block].to(device, torch.float64))
        scores = torch.vmap(similarity)(query.unsqueeze(1), docs).squeeze(1)  # each query against its candidates: (b, width)
        scores = scores.masked_fill(ids.to(device) < 0, -torch.inf)
        order = scores.sort(dim=1, descending=True, stable=True).indices[:, :k].cpu()
        out_scores[q : q + block] = scores.cpu().gather(1, order).numpy()
        out_ids[q : q + block] = ids.gather(1, order).numpy()
    return out_scores, out_ids


def search(
    queries: np.ndarray | torch.Tensor,
    shards: Sequence[np.ndarray],
    k: int,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    precision: str = "fp16",
    rescore_multiplier: int = RESCORE_MULTIPLIER,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents of every query, best first: (scores (Nq, k) float32, indices (Nq, k) int64 into the
    concatenated shards). k is capped at the number of documents (of allowed documents, with `allowed`).

    Args:
        queries: (Nq, D) single vectors or (Nq, Kq, D) multi-vector embeddings.
        shards: document embeddings, (n_i, D) or (n_i, Kd, D) each, e.g. memory-mapped fp16 cache shards.
        k: results per query.
        backend: "faiss" (single vectors, CPU), "torch", or "auto" (torch: the faster on every size measured,
            docs/benchmarks.md#search-at-scale).
        device: where the torch scan and the rescoring run.
        precision: "fp16" (exact), or "int8" / "binary": the documents are quantized by `build_quantized` (calibrated
            on these shards) and searched by `search_quantized` (single vectors only).
        rescore_multiplier: quantized search only: candidates rescored exactly per result (0: no rescoring).
        allowed: the only documents ranked (indices, e.g. those a metadata filter keeps); None: all.
    """
    if precision != "fp16":
        check_precision(precision, rescore_multiplier)
        return search_quantized(build_quantized(shards, precision), queries, shards, k, rescore_multiplier, device,
                                allowed)  # fmt: skip
    shards = [s for s in shards if len(s)]
    queries = _float_queries(queries)
    if not shards:
        raise ValueError("no documents to search")
    if queries.dim() not in (2, 3) or queries.dim() != shards[0].ndim or queries.shape[-1] != shards[0].shape[-1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and documents {tuple(shards[0].shape)} must both be (N, D) or (N, K, D) "
            "with the same D"
        )
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    device = torch.device(device)
    allowed = check_allowed(allowed, sum(len(s) for s in shards))
    num_docs = sum(len(s) for s in shards) if allowed is None else len(allowed)
    k, width = min(k, num_docs), min(k + _MARGIN, num_docs)
    if len(queries) == 0 or k == 0:
        return np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
    queries = _unit(queries)
    if _resolve_backend(backend, queries.dim() == 3, device) == "faiss":
        candidates = _scan_faiss(queries, shards, width, allowed)
    else:
        candidates = _scan_torch(queries, shards, width, device, allowed)
    return _rescore(queries, shards, candidates, k, device)


# ----------------------------------------------------------------------------- quantized: int8 codes, sign bits


def check_precision(precision: str, rescore_multiplier: int = RESCORE_MULTIPLIER) -> None:
    """Refuse a precision outside `PRECISIONS` or a rescore multiplier that is not an integer >= 0."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if not isinstance(rescore_multiplier, int) or isinstance(rescore_multiplier, bool) or rescore_multiplier < 0:
        raise ValueError(f"rescore_multiplier must be an integer >= 0 (0: no rescoring), got {rescore_multiplier!r}")


def _single_vector_shards(shards: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    shards = [s for s in shards if len(s)]
    if not shards:
        raise ValueError("no documents to search")
    if shards[0].ndim != 2:
        raise ValueError(f"{what} indexes single vectors (N, D); multi-vector embeddings are searched exactly by `search`")
    return shards


def _blocks(shards: Sequence[np.ndarray], block: int):
    """Unit fp32 rows of the shards, `block` at a time (bounded extra memory)."""
    for shard in shards:
        for start in range(0, len(shard), block):
            yield unit_rows(shard[start : start + block])


def sign_bits(x: np.ndarray) -> np.ndarray:
    """(N, D / 8) uint8: the sign bits of (N, D) vectors, packed 8 to a byte (FAISS's binary vector layout)."""
    return np.packbits(np.asarray(x) > 0, axis=1)


def build_quantized(shards: Sequence[np.ndarray], precision: str, block: int = 100_000):
    """A FAISS index of the quantized single-vector documents (n_i, D) in shards, in order.

    "int8": an `IndexScalarQuantizer` (QT_8bit, inner product), one byte per dimension, each dimension's range the
    minimum to maximum of the (re-normalised) documents: D bytes a document. "binary": an `IndexBinaryFlat` of
    `sign_bits` (Hamming distance), D / 8 bytes a document; D must be a multiple of 8.
    """
    faiss = _faiss()
    if faiss is None:
        raise ValueError("quantized search needs faiss (pip install faiss-cpu)")
    check_precision(precision)
    if precision == "fp16":
        raise ValueError("precision 'fp16' searches the stored vectors; quantized indexes are 'int8' or 'binary'")
    shards = _single_vector_shards(shards, "quantized search")
    dim = shards[0].shape[1]
    if precision == "binary":
        if dim % 8:
            raise ValueError(f"binary codes need a width that is a multiple of 8, got {dim}")
        index = faiss.IndexBinaryFlat(dim)
        for rows in _blocks(shards, block):
            index.add(sign_bits(rows))
        return index
    index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    low, high = np.full(dim, np.inf, np.float32), np.full(dim, -np.inf, np.float32)
    for rows in _blocks(shards, block):  # one pass for the range of every dimension...
        low, high = np.minimum(low, rows.min(0)), np.maximum(high, rows.max(0))
    index.train(np.stack([low, high]))  # ...which FAISS's min-max training of these two rows takes as they are
    for rows in _blocks(shards, block):
        index.add(rows)
    return index


def search_quantized(
    index,
    queries: np.ndarray | torch.Tensor,
    shards: Sequence[np.ndarray],
    k: int,
    rescore_multiplier: int = RESCORE_MULTIPLIER,
    device: str | torch.device = "cpu",
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents of every query through a `build_quantized` or `build_ivfpq` index: (scores (Nq, k) float32,
    indices (Nq, k)). With `allowed` (indices), only those documents are ranked (see the module docstring).

    The codes rank `rescore_multiplier * k` candidates (int8: inner product of the query with the decoded codes;
    binary: Hamming distance between sign bits), which are rescored in float64 from `shards` (the documents the
    index was built from, e.g. memory-mapped fp16) and ordered as `search` orders them. With `rescore_multiplier=0`
    the codes' own scores are returned (binary: 1 - 2 * Hamming / D, the cosine's sign-agreement estimate).
    """
    check_precision("fp16", rescore_multiplier)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    queries = _float_queries(queries)
    if queries.dim() != 2 or queries.shape[1] != index.d:
        raise ValueError(f"queries {tuple(queries.shape)} must be (N, {index.d}) single vectors like the index's")
    faiss = _faiss()
    allowed = check_allowed(allowed, index.ntotal)
    total = index.ntotal if allowed is None else len(allowed)
    k = min(k, total)
    if k == 0:
        return _empty_result(len(queries))
    if allowed is not None and total <= EXACT_FILTER_ROWS:
        return search(queries, shards, k, device=device, allowed=allowed)
    width = min(k * max(rescore_multiplier, 1), total)
    params, _bits = None, None
    if allowed is not None:
        selector, _bits = _selector(allowed, index.ntotal)
        params = (faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe) if isinstance(index, faiss.IndexIVF)
                  else faiss.SearchParameters(sel=selector))  # fmt: skip
    queries = _unit(queries)
    if isinstance(index, faiss.IndexBinary):  # Hamming distance between the query's and the documents' signs
        distances, ids = index.search(sign_bits(queries.numpy()), width, params=params)
        scores = 1 - 2 * distances.astype(np.float32) / index.d
    else:
        scores, ids = index.search(np.ascontiguousarray(queries.numpy()), width, params=params)
    if rescore_multiplier == 0:
        scores, ids = scores[:, :k], ids[:, :k]
    else:
        scores, ids = _rescore(queries, shards, torch.from_numpy(ids), k, torch.device(device))
    if allowed is None:
        return scores, ids
    return _fill_short(scores, ids, lambda q: search(queries[q], shards, k, device=device, allowed=allowed))


def _fill_short(scores: np.ndarray, ids: np.ndarray, exact) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) with every query that an approximate engine left with fewer than k results (a -1 id) answered
    by `exact(query indices)` instead, the exact scan of the allowed rows."""
    short = np.flatnonzero((ids < 0).any(axis=1))
    if len(short):
        scores, ids = scores.copy(), ids.copy()
        scores[short], ids[short] = exact(torch.from_numpy(short))
    return scores, ids


def build_ivfpq(shards: Sequence[np.ndarray], nlist: int = 1024, m: int = 96, train_size: int = 65_536,
                block: int = 100_000, nbits: int = 8):
    """A FAISS `IndexIVFPQ` (inner product) over single-vector documents (n_i, D) in shards, in order: `nlist` k-means
    cells, each document stored as `m` codes of `nbits` bits (`m` bytes at 8 bits) of product-quantized residual (+ its
    8-byte id), the coarse centroids and the codebooks trained on `train_size` documents spread evenly over the
    collection (at least 2 ** nbits of them). Search it with `search_quantized` (set `index.nprobe`, the cells visited
    per query, first): its best `rescore_multiplier * k` candidates are rescored from the fp16 vectors. D must be a
    multiple of `m`."""
    faiss = _faiss()
    if faiss is None:
        raise ValueError("approximate search needs faiss (pip install faiss-cpu)")
    shards = _single_vector_shards(shards, "IVF-PQ")
    dim, total = shards[0].shape[1], sum(len(s) for s in shards)
    for name, value in (("nlist", nlist), ("m", m), ("train_size", train_size), ("nbits", nbits)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if dim % m:
        raise ValueError(f"m={m} must divide the embedding width {dim}")
    if total < nlist:
        raise ValueError(f"nlist={nlist} cells need at least as many documents; the collection holds {total}")
    if min(train_size, total) < 2**nbits:
        raise ValueError(f"nbits={nbits} codebooks of {2**nbits} entries need at least as many training documents; "
                         f"there are {min(train_size, total)}: lower nbits")  # fmt: skip
    rows = np.linspace(0, total - 1, min(train_size, total)).astype(np.int64)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.train(unit_rows(gather_rows(shards, rows)))
    for rows in _blocks(shards, block):
        index.add(rows)
    return index


# ----------------------------------------------------------------------------- approximate: FAISS HNSW


def build_hnsw(shards: Sequence[np.ndarray], m: int = 32, ef_construction: int = 80, block: int = 100_000):
    """A FAISS `IndexHNSWFlat` (inner product) over single-vector document embeddings (n_i, D) in shards, added as fp32
    blocks of `block` rows (bounded extra memory). Memory: 4 * D + about 8 * m bytes per document."""
    faiss = _faiss()
    if faiss is None:
        raise ValueError("approximate search needs faiss (pip install faiss-cpu)")
    shards = [s for s in shards if len(s)]
    if not shards or shards[0].ndim != 2:
        raise ValueError("HNSW indexes single vectors (N, D); multi-vector embeddings are searched exactly by `search`")
    for name, value in (("m", m), ("ef_construction", ef_construction)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    index = faiss.IndexHNSWFlat(shards[0].shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    for shard in shards:
        for start in range(0, len(shard), block):
            index.add(unit_rows(shard[start : start + block]))
    return index


def search_hnsw(index, queries: np.ndarray | torch.Tensor, k: int, ef_search: int = 128,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(scores (Nq, k) float32, indices (Nq, k) int64) of the HNSW index, best first; -1 pads when fewer than k
    documents are reachable. `ef_search` >= k: the search depth (higher: better recall, slower). With `allowed`
    (indices) only those documents are returned, k of them whenever k are allowed: the graph walk skips the others
    (`IDSelectorBitmap`), and a query it leaves short, or every query when at most `EXACT_FILTER_ROWS` rows are
    allowed, gets the exact inner-product scan of the allowed rows' vectors (read back from the index)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not isinstance(ef_search, int) or ef_search < 1:
        raise ValueError(f"ef_search must be a positive integer, got {ef_search!r}")
    queries = unit_rows(queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries))
    if allowed is None:
        index.hnsw.efSearch = max(ef_search, k)
        return index.search(queries, min(k, index.ntotal))
    faiss = _faiss()
    allowed = check_allowed(allowed, index.ntotal)
    k = min(k, len(allowed))
    if k == 0:
        return _empty_result(len(queries))

    def exact(q: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = faiss.knn(queries[q.numpy()], index.reconstruct_batch(allowed), k, faiss.METRIC_INNER_PRODUCT)
        return scores, allowed[ids]

    if len(allowed) <= EXACT_FILTER_ROWS:
        return exact(torch.arange(len(queries)))
    selector, _bits = _selector(allowed, index.ntotal)
    scores, ids = index.search(queries, k, params=faiss.SearchParametersHNSW(sel=selector, efSearch=max(ef_search, k)))
    return _fill_short(scores, ids, exact)


def recall_at_k(exact: np.ndarray, approximate: np.ndarray) -> float:
    """Mean over queries of the fraction of the exact top-k ids (Nq, k) that the approximate top-k (Nq, k) holds."""
    if exact.shape != approximate.shape:
        raise ValueError(f"exact {exact.shape} and approximate {approximate.shape} results must have the same shape")
    return float(np.mean([len(set(e) & set(a)) / len(e) for e, a in zip(exact.tolist(), approximate.tolist())]))
