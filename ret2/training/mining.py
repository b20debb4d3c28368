"""Hard negatives mined with a model: `ret2-mine` (`python -m ret2.training.mining`) and `mine_hard_negatives`.

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

import argparse
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ret2.cache import Pool, cache_folder, encode_pool, load_pool, write_atomic
from ret2.cli import ArgumentParser, configure_logging, run_cli
from ret2.encoding import Item, ItemList, encode_items
from ret2.model import default_device, load_model_and_processor, model_fingerprint
from ret2.jsonl import read_json_lines
from ret2.search import gather_rows, search

if TYPE_CHECKING:
    from ret2.training.dataset import ContrastiveDataset

logger = logging.getLogger(__name__)

FORMATS = ("mbeir", "m2kr")
NEGATIVE_FIELDS = {"mbeir": "neg_cand_list", "m2kr": "neg_passage_id"}  # where each format keeps a query's negatives
MINING_VERSION = 1  # bump when what a part holds changes: stale parts are then mined again


@dataclass(frozen=True)
class MiningOptions:
    """Which candidates become a query's negatives (see the module docstring).

    Attributes:
        num_negatives: negatives kept per query (fewer when the filters leave fewer).
        range_min: skip the `range_min` best non-positive candidates.
        range_max: look no deeper than this rank among the non-positive candidates.
        margin: keep a candidate only if its score <= the query's lowest positive score - margin (None: off).
        max_score: keep a candidate only if its score <= this (None: off).
        same_modality: keep only candidates with the modality of one of the query's positives.
    """

    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 50
    margin: float | None = None
    max_score: float | None = None
    same_modality: bool = False

    def __post_init__(self):
        for name in ("num_negatives", "range_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.range_min, bool) or not isinstance(self.range_min, int) or self.range_min < 0:
            raise ValueError(f"range_min must be an integer >= 0, got {self.range_min!r}")
        if self.range_max <= self.range_min:
            raise ValueError(f"range_max ({self.range_max}) must be above range_min ({self.range_min})")
        for name in ("margin", "max_score"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number or None, got {value!r}")


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the ReT-2 model (folder or Hub id) that scores the pool")
    parser.add_argument("--output", required=True, type=Path, help="the mined query file (jsonl) to write")
    parser.add_argument("--format", choices=list(FORMATS), default="mbeir", help="training data format")
    parser.add_argument("--data-root", type=Path, help="dataset root: relative paths and images resolve against it")
    parser.add_argument("--train-queries", help="M-BEIR query jsonl (default: the root's union training file)")
    parser.add_argument("--train-pool", help="M-BEIR candidate pool jsonl (default: the root's training pool)")
    parser.add_argument("--m2kr-queries", help="ReT-M2KR query jsonl (--format m2kr)")
    parser.add_argument("--m2kr-passages", help="ReT-M2KR passage jsonl (--format m2kr)")
    parser.add_argument("--image-root", type=Path, help="root of image paths (default: --data-root)")
    defaults = MiningOptions()
    parser.add_argument("--num-negatives", type=int, default=defaults.num_negatives, help="negatives per query")
    parser.add_argument("--range-min", type=int, default=defaults.range_min,
                        help="skip this many best non-positive candidates")
    parser.add_argument("--range-max", type=int, default=defaults.range_max,
                        help="look no deeper than this rank among non-positive candidates")
    parser.add_argument("--margin", type=float, help="keep candidates scoring <= lowest positive score - MARGIN "
                        "(default: off)")  # fmt: skip
    parser.add_argument("--max-score", type=float, help="keep candidates scoring <= MAX_SCORE (default: off)")
    parser.add_argument("--same-modality", action="store_true",
                        help="keep only candidates with the modality of one of the positives")
    parser.add_argument("--batch-size", type=int, default=64, help="items per model call")
    parser.add_argument("--part-size", type=int, default=10_000, help="queries per resumable part")
    parser.add_argument("--cache-dir", type=Path, help="embedding cache (default: OUTPUT.parts/cache)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--image-orientation", choices=["stored", "upright"], default="stored",
                        help="how image files are read (docs/images.md)")
    parser.add_argument("--keep-parts", action="store_true", help="keep OUTPUT.parts/ (and its cache) after writing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`ret2-mine`: mine, then write the query file with the mined negatives."""
    args = parse_args(argv)
    configure_logging()
    options = MiningOptions(args.num_negatives, args.range_min, args.range_max, args.margin, args.max_score,
                            args.same_modality)  # fmt: skip
    from ret2.data.mbeir import TRAIN_QUERIES
    from ret2.training.train import DataArguments, _path, build_datasets

    data = DataArguments(
        data_root=None if args.data_root is None else str(args.data_root), format=args.format,
        train_queries=args.train_queries, train_pool=args.train_pool, m2kr_queries=args.m2kr_queries,
        m2kr_passages=args.m2kr_passages,
    )  # fmt: skip
    dataset, _ = build_datasets(data, seed=0)
    root = args.image_root or args.data_root
    if root is None:
        raise ValueError("give --data-root or --image-root: image paths in the data are relative to it")
    if args.format == "mbeir":
        source = _path(args.data_root, args.train_queries, TRAIN_QUERIES)
    else:
        source = _path(args.data_root, args.m2kr_queries)
    parts = args.output.with_name(args.output.name + ".parts")
    mined = mine_hard_negatives(
        dataset, args.model, root, parts, options, batch_size=args.batch_size, part_size=args.part_size,
        cache_dir=args.cache_dir, device=args.device, orientation=args.image_orientation,
    )  # fmt: skip
    count = write_mined(source, args.output, mined, args.format)
    short = sum(len(negatives) < options.num_negatives for negatives in mined.values())
    logger.info("wrote %s: %d queries, %d with fewer than %d negatives after the filters", args.output, count, short,
                options.num_negatives)  # fmt: skip
    if not args.keep_parts:
        shutil.rmtree(parts)
    return 0


if __name__ == "__main__":
    run_cli(main)
