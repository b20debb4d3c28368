"""`ret2-index` (`python -m ret2.index`): build, add to, search and describe an index of your own documents; approximate
and Milvus search; fine-tune a model on (query, document) pairs.

Subcommands: build, add, delete, upsert, sync, compact, search, info, approximate, milvus, train (each has --help)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ret2.commands._common import ArgumentParser, configure_logging, run_cli
from ret2.commands.flags import (
    add_chunking, add_device, add_encoding, add_image_orientation, add_model, add_precision, add_rescore,
    add_search_modes,
)  # fmt: skip
from ret2.index import ENGINES
from ret2.options import RESCORE_MULTIPLIER, SHARD_SIZE

if TYPE_CHECKING:
    from ret2.index import Hit


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def fields(p):
        p.add_argument("--id-field", default="id", help="the id field of the records")
        p.add_argument("--text-field", default="text", help="the text field of the records")
        p.add_argument("--image-field", default="image", help="the image path field of the records")

    def bad_images(p):
        p.add_argument("--on-bad-image", choices=["skip", "stop"], default="skip",
                       help="an image file that cannot be read (empty, truncated, not an image): skip its document "
                            "(default; all are listed in FOLDER/skipped.jsonl) or stop, adding nothing")  # fmt: skip

    def model_flags(p, required=False):
        add_model(p, required=required, help="ReT-2 model folder or Hub id" + (
            "" if required else " (default: the one that built the index; its files must be identical)"))
        add_device(p)

    p = commands.add_parser("build", help="encode documents into a new index folder (resumes if interrupted)")
    p.add_argument("folder", help="the index folder to create")
    p.add_argument("source", help="documents: a .jsonl or .csv of records (id, text, image, metadata) or a folder of "
                   "images (name.txt beside name.jpg is its text)")  # fmt: skip
    model_flags(p, required=True)
    p.add_argument("--image-root", help="folder image paths are relative to (default: the source's folder)")
    add_encoding(p)
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="documents per cache shard (the resume unit)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers opening images")
    add_image_orientation(p, default="upright", extra_help=". Kept in the index for add and search")
    add_precision(p, what=". Kept in the index: what its searches scan unless told otherwise", rescore=False)
    p.add_argument("--truncate-dim", type=int,
                   help="search with this prefix of every embedding, re-normalised (Matryoshka sizes; default: the "
                        "full embedding). Kept in the index for add and search")  # fmt: skip
    add_chunking(p, default=None, overlap=0)
    bad_images(p)
    fields(p)

    for name, what in (("add", "encode more documents into an existing index"),
                       ("upsert", "add documents, replacing those of the same ids (unchanged ones are kept)")):  # fmt: skip
        p = commands.add_parser(name, help=what)
        p.add_argument("folder", help="the index folder")
        p.add_argument("source", help="documents, as for build")
        model_flags(p)
        p.add_argument("--image-root", help="folder image paths are relative to (default: the source's folder)")
        p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers opening images")
        bad_images(p)
        fields(p)

    p = commands.add_parser("delete", help="delete documents by id (no search returns them; their ids are free)")
    p.add_argument("folder", help="the index folder")
    p.add_argument("ids", nargs="*", help="document ids")
    p.add_argument("--ids-file", help="a file of document ids, one a line (with or instead of IDS)")
    p.add_argument("--missing-ok", action="store_true", help="skip ids not in the index instead of refusing them all")
    model_flags(p)

    p = commands.add_parser("sync", help="make the index match its folder of images again: new files added, changed "
                            "ones encoded again, removed ones deleted")  # fmt: skip
    p.add_argument("folder", help="the index folder")
    p.add_argument("images", nargs="?", help="the folder of images (default: the one the index was built from)")
    model_flags(p)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers opening images")
    bad_images(p)

    p = commands.add_parser("compact", help="reclaim the space of deleted documents (delete and upsert do it by "
                            "themselves past a quarter of the rows deleted)")  # fmt: skip
    p.add_argument("folder", help="the index folder")
    model_flags(p)

    p = commands.add_parser("search", help="search the index with text, an image, or both")
    p.add_argument("folder", help="the index folder")
    p.add_argument("--text", help="query text")
    p.add_argument("--image", help="query image path (anywhere on disk)")
    p.add_argument("--queries", help="a .jsonl of queries, each {\"text\": ..., \"image\": ...} (instead of --text/--image)")
    p.add_argument("-k", "--k", type=int, default=10, help="results per query")
    p.add_argument("--engine", choices=list(ENGINES), default="exact",
                   help="exact, approximate (the HNSW or IVF-PQ index of `approximate`) or milvus")
    p.add_argument("--ef-search", type=int, help="HNSW search depth (default: the one chosen at `approximate`)")
    p.add_argument("--nprobe", type=int, help="IVF-PQ cells visited per query (default: the one chosen at `approximate`)")
    add_precision(p, default=None, what=" (default: the build's)", rescore=False)
    add_rescore(p, default=None, what=f" (default: {RESCORE_MULTIPLIER}; for IVF-PQ the one chosen at `approximate`)")
    add_search_modes(p)
    p.add_argument("--json", action="store_true", help="print the hits as JSON lines (one list per query)")
    model_flags(p)

    p = commands.add_parser("info", help="print what the index holds (no model needed)")
    p.add_argument("folder", help="the index folder")

    p = commands.add_parser("approximate", help="build a FAISS IVF-PQ or HNSW index and report its recall@10 against "
                            "exact and its bytes per document")  # fmt: skip
    p.add_argument("folder", help="the index folder")
    p.add_argument("--kind", choices=["hnsw", "ivfpq"], default="hnsw",
                   help="hnsw: a graph over the fp32 vectors (more memory than fp16); ivfpq: product-quantized codes "
                        "in k-means cells, the best candidates rescored from the fp16 vectors (a fraction of fp16's "
                        "memory: the 1M-document choice, docs/benchmarks.md)")  # fmt: skip
    p.add_argument("--m", type=int, default=32, help="HNSW neighbours per node")
    p.add_argument("--ef-construction", type=int, default=80, help="HNSW build depth")
    p.add_argument("--ef-search", type=int, default=128, help="HNSW search depth used by default")
    p.add_argument("--nlist", type=int, help="IVF-PQ cells (default: about the square root of the documents)")
    p.add_argument("--pq-m", type=int, help="IVF-PQ codes a document (default: the largest divisor of D at most D/4)")
    p.add_argument("--nbits", type=int, help="IVF-PQ bits a code (default 8; fewer on small collections)")
    p.add_argument("--nprobe", type=int, default=8, help="IVF-PQ cells visited per query by default")
    add_rescore(p, what="; IVF-PQ: kept in the index for its searches")
    p.add_argument("--recall-sample", type=int, default=1000, help="stored documents used as queries to measure recall")
    model_flags(p)

    p = commands.add_parser("milvus", help="copy the embeddings into a Milvus collection (Lite file or server URI)")
    p.add_argument("folder", help="the index folder")
    p.add_argument("uri", help="a Milvus Lite file (./docs.db) or a server URI (http://host:19530)")
    p.add_argument("--collection", default="ret2", help="collection name")
    p.add_argument("--index-type", default="FLAT", help="Milvus index type: FLAT (exact), HNSW, IVF_FLAT, AUTOINDEX")
    p.add_argument("--overwrite", action="store_true", help="replace an existing collection of that name")
    model_flags(p)

    p = commands.add_parser("train", help="fine-tune a model on (query, document) pairs (see ret2.training.pairs)")
    p.add_argument("pairs", help="a .jsonl or .csv of pairs: query_text / query_image, doc_text / doc_image, doc_id")
    p.add_argument("--model", required=True, help="start model: ReT-2 folder or Hub id, CLIP / SigLIP checkpoint, or tiny")
    p.add_argument("--output-dir", required=True, help="where the fine-tuned model is saved")
    p.add_argument("--image-root", help="folder image paths are relative to (default: the pairs file's folder)")
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step (in-batch negatives)")
    p.add_argument("--learning-rate", type=float, default=1e-5, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def _skipped(index) -> str:
    skipped = index.meta["parts"][-1].get("skipped", 0)
    return f"; {skipped} skipped (unreadable images, listed in {index.folder / 'skipped.jsonl'})" if skipped else ""


def _print_hits(queries: list, hits: list[list[Hit]], as_json: bool) -> None:
    for query, found in zip(queries, hits):
        if as_json:
            print(json.dumps([vars(h) for h in found], ensure_ascii=False))
            continue
        print(f"query: {query}")
        for rank, h in enumerate(found, 1):
            chunk = "" if h.chunk is None else f" [chunk {h.chunk}]"
            print(f"{rank:4d}  {h.score:8.4f}  {h.id}{chunk}  {h.text or ''}  {h.image or ''}")


def run(argv: list[str] | None = None) -> None:
    """Parse and run one sub-command: build, add to, search, describe an index; approximate and Milvus search; train
    on pairs."""
    args = build_parser().parse_args(argv)
    configure_logging()
    from ret2.index import Ret2Index, index_info  # after parsing: --help loads neither the model code nor the index
    fields_ = {k: getattr(args, k, None) for k in ("id_field", "text_field", "image_field")}
    if args.command == "build":
        index = Ret2Index.build(args.folder, args.source, args.model, args.image_root, args.batch_size, args.shard_size,
                                args.dtype, args.device, args.num_workers, **fields_,
                                image_orientation=args.image_orientation, precision=args.precision,
                                truncate_dim=args.truncate_dim, chunk_size=args.chunk_size,
                                chunk_overlap=args.chunk_overlap, on_bad_image=args.on_bad_image)  # fmt: skip
        chunks = f" ({len(index)} chunks)" if index.chunking else ""
        print(f"{args.folder}: {index.documents} documents{chunks}{_skipped(index)}")
    elif args.command == "add":
        index = Ret2Index.open(args.folder, args.model, args.device)
        added = index.add(args.source, args.num_workers, image_root=args.image_root, on_bad_image=args.on_bad_image,
                          **fields_)  # fmt: skip
        print(f"{args.folder}: added {added} documents{_skipped(index)}")
    elif args.command == "delete":
        ids = list(args.ids) + (Path(args.ids_file).read_text(encoding="utf-8").split("\n") if args.ids_file else [])
        ids = [i for i in ids if i]
        if not ids:
            raise ValueError("give the ids to delete (IDS or --ids-file FILE)")
        deleted = Ret2Index.open(args.folder, args.model, args.device).delete(ids, missing_ok=args.missing_ok)
        print(f"{args.folder}: deleted {deleted} documents" + (f" ({len(ids) - deleted} not in the index)"
                                                               if deleted < len(ids) else ""))  # fmt: skip
    elif args.command == "upsert":
        index = Ret2Index.open(args.folder, args.model, args.device)
        counts = index.upsert(args.source, args.num_workers, image_root=args.image_root, on_bad_image=args.on_bad_image,
                              **fields_)  # fmt: skip
        print(f"{args.folder}: {counts['added']} added, {counts['replaced']} replaced, {counts['unchanged']} unchanged")
    elif args.command == "sync":
        index = Ret2Index.open(args.folder, args.model, args.device)
        counts = index.sync(args.images, args.num_workers, on_bad_image=args.on_bad_image)
        print(f"{args.folder}: {counts['added']} added, {counts['replaced']} changed, {counts['deleted']} deleted, "
              f"{counts['unchanged']} unchanged")
    elif args.command == "compact":
        index = Ret2Index.open(args.folder, args.model, args.device)
        removed = index.compact()
        print(f"{args.folder}: {removed} deleted rows removed; {index.documents} documents in {len(index)} rows")
    elif args.command == "search":
        if args.queries:
            queries = [{k: v for k, v in json.loads(line).items() if k in ("text", "image")}
                       for line in Path(args.queries).read_text(encoding="utf-8").splitlines() if line.strip()]  # fmt: skip
        elif args.text or args.image:
            queries = [{"text": args.text, "image": args.image}]
        else:
            raise ValueError("give --text, --image (or both), or --queries FILE.jsonl")
        hits = Ret2Index.open(args.folder, args.model, args.device).search(
            queries, args.k, args.engine, ef_search=args.ef_search, precision=args.precision,
            rescore_multiplier=args.rescore_multiplier, nprobe=args.nprobe, filter=args.filter, mode=args.mode,
            fusion=args.fusion, weights=args.weights)  # fmt: skip
        _print_hits(queries, hits, args.json)
    elif args.command == "info":
        print(json.dumps(index_info(args.folder), indent=1))
    elif args.command == "approximate":
        index = Ret2Index.open(args.folder, args.model, args.device)
        params = (dict(m=args.m, ef_construction=args.ef_construction, ef_search=args.ef_search)
                  if args.kind == "hnsw" else dict(nlist=args.nlist, m=args.pq_m, nbits=args.nbits, nprobe=args.nprobe,
                                                   rescore_multiplier=args.rescore_multiplier))  # fmt: skip
        report = index.build_approximate(args.kind, args.recall_sample, **params)
        print(f"{args.folder}: {'HNSW' if args.kind == 'hnsw' else 'IVF-PQ'} over {len(index)} documents, recall@10 "
              f"{report['recall_at_10']:.4f} against exact ({report['recall_queries']} stored documents as queries), "
              f"{report['bytes_per_document']:.0f} bytes per document")  # fmt: skip
    elif args.command == "milvus":
        target = Ret2Index.open(args.folder, args.model, args.device).to_milvus(
            args.uri, args.collection, args.index_type, overwrite=args.overwrite)
        print(f"{args.folder}: written to Milvus collection {target['collection']!r} at {target['uri']}")
    else:
        from ret2.training.pairs import train_pairs

        train_pairs(args.pairs, args.model, args.output_dir, args.image_root, num_train_epochs=args.epochs,
                    per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed)  # fmt: skip
        print(f"fine-tuned model saved to {args.output_dir}; rebuild your index with --model {args.output_dir}")



def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-index`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
