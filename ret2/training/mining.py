"""Hard negatives mined with a model: `mine_hard_negatives` and `write_mined` (the command is `ret2-mine`).

    ret2-mine --model runs/demo/seed-42/ret2-model --data-root data/synthetic --output data/mined.jsonl \\
        --num-negatives 3 --range-min 2 --margin 0.05

For every training query (M-BEIR or ReT-M2KR, read as `ret2-train` reads them), the candidate pool is encoded once
into the resumable shard cache (`ret2.cache`) and searched exactly (`ret2.search`); the query's mined negatives are
the best-scoring candidates that pass every filter, best first:

* never one of the query's positives;
* ranks `[range_min, range_max)` among the non-positive candidates (skipping the very top keeps likely unlabelled
  positives out; `range_max` bounds how deep the search looks);
* `margin`: a score at most the query's lowest positive score minus the margin (a candidate the model scores as high
  as a positive is more likely a false negative than a hard one); `max_score`: an absolute ceiling;
* `same_modality`: only candidates of a modality one of the positives has (text / image / image,text).

The output is the input query file with each record's negatives replaced (M-BEIR `neg_cand_list`, ReT-M2KR
`neg_passage_id`): train on it with `ret2-train --train-queries OUTPUT --num-hard-negatives N`. Queries are mined in
parts of `part_size`, each written atomically to `OUTPUT.parts/`; an interrupted run resumes from its last finished
part and writes the same file (the embeddings come from the same cache and the search is exact and deterministic).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ret2.cache import Pool, cache_folder, encode_pool, load_pool, write_atomic
from ret2.encoding import Item, ItemList, encode_items
from ret2.model import default_device, load_model_and_processor, model_fingerprint
from ret2.jsonl import read_json_lines
from ret2.options import TRAINING_FORMATS as FORMATS
from ret2.search import gather_rows, search
from ret2.training.arguments import MiningOptions

if TYPE_CHECKING:
    from ret2.training.dataset import ContrastiveDataset

logger = logging.getLogger(__name__)

NEGATIVE_FIELDS = {"mbeir": "neg_cand_list", "m2kr": "neg_passage_id"}  # where each format keeps a query's negatives
MINING_VERSION = 1  # bump when what a part holds changes: stale parts are then mined again


def modality(text: str | None, image: str | None) -> str:
    """An item's modality as M-BEIR spells it: "text", "image" or "image,text"."""
    return ",".join(name for name, present in (("image", image), ("text", text)) if present)


def select_negatives(
    ranked: list[tuple[str, float]], positive_ids: set[str], positive_score: float, options: MiningOptions,
    modalities: dict[str, str] | None = None, allowed: set[str] | None = None,
) -> list[str]:
    """The negatives of one query: `ranked` (did, score) best first, positives excluded, the rank range applied, then
    the margin / ceiling / modality filters, the first `num_negatives` kept. `modalities` (did -> modality) and
    `allowed` (the positives' modalities) apply with `same_modality`."""
    kept = []
    negatives = [(did, score) for did, score in ranked if did not in positive_ids]
    for did, score in negatives[options.range_min : options.range_max]:
        if options.margin is not None and score > positive_score - options.margin:
            continue
        if options.max_score is not None and score > options.max_score:
            continue
        if options.same_modality and modalities is not None and modalities[did] not in allowed:
            continue
        kept.append(did)
        if len(kept) == options.num_negatives:
            break
    return kept


def _pool_of(dataset: ContrastiveDataset) -> tuple[Pool, list[dict]]:
    """The training set's candidate pool as a cache `Pool` keyed by its content (the candidates' ids, texts and
    images), and its items."""
    pool = dataset.pool
    items = [pool.item(row) for row in range(len(pool))]
    digest = hashlib.sha256(json.dumps([[i["id"], i["text"], i["img_path"]] for i in items]).encode()).hexdigest()
    loaded = [Item(i["id"], i["text"] or None, i["img_path"] or None, "the candidate pool", n)
              for n, i in enumerate(items)]  # fmt: skip
    return Pool("mining-pool", [i["id"] for i in items], ItemList(loaded), (), digest), items


def mine_hard_negatives(
    dataset: ContrastiveDataset,
    model: str | Path,
    image_root: str | Path,
    parts_dir: str | Path,
    options: MiningOptions = MiningOptions(),
    *,
    batch_size: int = 64,
    part_size: int = 10_000,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    orientation: str = "stored",
) -> dict[str, list[str]]:
    """qid -> mined negative dids (best first) for every query of `dataset` (a `ContrastiveDataset`: its queries as
    `build_query(record, None)` gives them, i.e. M-BEIR's first instruction prompt, and its candidate pool).

    The pool is encoded into `cache_dir` (default `parts_dir/cache`) with `model`; queries are mined `part_size` at a
    time, each part written atomically to `parts_dir` and reused by a later call with the same model, data and
    options (so an interrupted run resumes)."""
    if not isinstance(part_size, int) or part_size < 1:
        raise ValueError(f"part_size must be a positive integer, got {part_size!r}")
    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    device = device or default_device()
    net, processor = load_model_and_processor(str(model), device)
    fingerprint = model_fingerprint(str(model))
    pool, items = _pool_of(dataset)
    key = {"version": MINING_VERSION, "model": fingerprint, "pool": pool.digest, "options": asdict(options),
           "part_size": part_size, "orientation": orientation,
           "queries": hashlib.sha256("\n".join(dataset.queries["qid"]).encode()).hexdigest()}  # fmt: skip
    meta = parts_dir / "meta.json"
    if meta.exists() and json.loads(meta.read_text()) != key:
        logger.warning("%s: parts were mined with other settings, model or data; mining again", parts_dir)
        for old in parts_dir.glob("part-*.json"):
            old.unlink()
    write_atomic(meta, lambda f: f.write(json.dumps(key, indent=1).encode()))

    folder = cache_folder(cache_dir or parts_dir / "cache", pool, fingerprint, torch.float32, 10_000,
                          orientation=orientation)  # fmt: skip
    encode_pool(net, processor, pool, folder, image_root, batch_size, 10_000, orientation=orientation)
    shards = load_pool(pool, folder, 10_000).shards
    modalities = {i["id"]: modality(i["text"], i["img_path"]) for i in items}

    num_queries = len(dataset.queries)
    num_parts = -(-num_queries // part_size)
    done = sum((parts_dir / f"part-{p:05d}.json").exists() for p in range(num_parts))
    if done:
        logger.info("%s: %d of %d parts already mined", parts_dir, done, num_parts)
    mined: dict[str, list[str]] = {}
    for p in tqdm(range(num_parts), desc="mine negatives (parts)", disable=num_parts == 1):
        path = parts_dir / f"part-{p:05d}.json"
        if not path.exists():
            write_atomic(path, lambda f: f.write(json.dumps(_mine_part(
                dataset, range(p * part_size, min((p + 1) * part_size, num_queries)), net, processor, image_root,
                shards, pool.ids, modalities, options, batch_size, orientation,
            )).encode()))  # fmt: skip
        mined.update(json.loads(path.read_text()))
    return mined


def _mine_part(dataset, rows, net, processor, image_root, shards, ids, modalities, options, batch_size,
               orientation) -> dict[str, list[str]]:  # fmt: skip
    """qid -> negatives for the queries at `rows` of the dataset, against the pool's embeddings `shards` (rows:
    `ids`)."""
    row_of = {did: row for row, did in enumerate(ids)}
    queries = [dataset.build_query(dataset.queries[row], None) for row in rows]
    items = [Item(q.qid, q.text or None, q.img_path or None, "queries", row) for q, row in zip(queries, rows)]
    embeddings = encode_items(net, processor, items, image_root, "query", batch_size,
                              desc=f"mine: encode queries {rows.start}-{rows.stop - 1}", orientation=orientation)  # fmt: skip
    depth = options.range_max + max(len(q.positive_ids) for q in queries)
    scores, found = search(embeddings, shards, depth)
    query_vectors = torch.nn.functional.normalize(torch.from_numpy(embeddings).double(), dim=-1)
    out = {}
    for n, query in enumerate(queries):
        positives = [did for did in query.positive_ids if did in row_of]
        if not positives:
            raise ValueError(f"query {query.qid!r}: none of its positives {query.positive_ids} is in the candidate pool")
        docs = torch.from_numpy(gather_rows(shards, np.array([row_of[did] for did in positives])).astype(np.float64))
        positive_score = float((torch.nn.functional.normalize(docs, dim=-1) @ query_vectors[n]).min())  # as `search` scores
        ranked = [(ids[i], float(s)) for i, s in zip(found[n], scores[n])]
        allowed = {modalities[did] for did in positives}
        out[query.qid] = select_negatives(ranked, set(query.positive_ids), positive_score, options, modalities,
                                          allowed)  # fmt: skip
    return out


def write_mined(source: str | Path, output: str | Path, mined: dict[str, list[str]], format: str) -> int:
    """`source` (an M-BEIR or ReT-M2KR query jsonl) rewritten to `output`, atomically, with each query's negatives
    replaced by `mined[qid]`; every other field is kept as it is. Returns the number of queries written."""
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not one of {list(FORMATS)}")
    id_field = "qid" if format == "mbeir" else "data_id"
    lines = []
    for line_no, record in read_json_lines(source):
        qid = str(record[id_field])
        if qid not in mined:
            raise ValueError(f"{source}:{line_no}: query {qid!r} was not mined (is the query file the mined one?)")
        record[NEGATIVE_FIELDS[format]] = mined[qid]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(output), lambda f: f.write("".join(lines).encode("utf-8")))
    return len(lines)
