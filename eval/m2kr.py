"""M2KR evaluation (PreFLMR's benchmark, ReT-M2KR or original layout): each sub-dataset's test queries against its
own test passages, scored by Recall@K and, where the dataset has answers, Pseudo Recall@K.

    python -m eval.m2kr --model M --data-root R --layout ret --image-root IMAGES --output-dir out
    torchrun --nproc_per_node 8 -m eval.m2kr --model M --data-root R --layout ret --output-dir out --dtype bfloat16

Recall@K: a query scores 1 if any gold passage id is in its top K. Pseudo Recall@K: 1 if any of the top K passage
texts contains any gold answer (lower-cased substring). K per dataset as PreFLMR / ReT report it (`M2KR_DATASETS`).
Writes `runs/<dataset>.trec`, `results.json` (fractions in [0, 1]) and `results.md` (also printed) to
`--output-dir`; passage embeddings are cached as in `eval.mbeir`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from .encode import Encoder, Item, ItemList, Pool, add_common_arguments, configure_logging, finish
from .m2kr_format import M2KR_DATASETS, M2KRDataset, load_m2kr, m2kr_dataset
from .metrics import compute_retrieval_metrics
from .search import search, write_report, write_trec

logger = logging.getLogger(__name__)

LAYOUTS = ("ret", "parquet")


def _sources(dataset: M2KRDataset, root: Path, layout: str) -> tuple[Path, Path, list[Path]]:
    """(queries file or folder, passages file or folder, passage files) of a sub-dataset under `root`."""
    if layout == "ret":
        queries, passages = dataset.ret_paths(root)
        return queries, passages, [passages]
    return root / f"{dataset.config}_data", root / f"{dataset.config}_passages", dataset.parquet_paths(root)[1]


def select_datasets(names: Sequence[str] | None, root: Path, layout: str) -> list[M2KRDataset]:
    """The named sub-datasets, or (None) every sub-dataset whose files are under `root`."""
    if names:
        return [m2kr_dataset(name) for name in names]
    if layout == "ret":
        found = [d for d in M2KR_DATASETS.values() if all(p.is_file() for p in d.ret_paths(root))]
    else:
        found = [d for d in M2KR_DATASETS.values() if all(d.parquet_paths(root))]
    if not found:
        raise FileNotFoundError(f"no M2KR sub-dataset in the {layout!r} layout under {root}")
    logger.info("evaluating the sub-datasets found under %s: %s", root, [d.name for d in found])
    return found


def results_table(results: dict[str, dict[str, float]]) -> str:
    """One line per sub-dataset: Recall@K and Pseudo Recall@K (where reported), scores x 100."""
    lines = ["| Dataset | Recall@K | Pseudo Recall@K |", "|---|---:|---:|"]
    for name, metrics in results.items():
        cells = [f"{100 * value:.1f} (K={metric.rsplit('@', 1)[1]})" for metric, value in metrics.items()]
        lines.append(f"| {name} | " + " | ".join(cells + [""] * (2 - len(cells))) + " |")
    return "\n".join(lines) + (
        "\n\nRecall@K: a query scores 1 if any gold passage is in its top K. Pseudo Recall@K: 1 if any of the top K "
        "passages contains a gold answer (lower-cased substring). Scores x 100.\n"
    )


def evaluate(args: argparse.Namespace) -> dict | None:
    """Run the evaluation described by the parsed CLI arguments; the results on rank 0, None on the other ranks."""
    root = Path(args.data_root)
    image_root = Path(args.image_root or root)
    chosen = select_datasets(args.datasets, root, args.layout)
    encoder = Encoder.from_args(args)
    try:
        data, pools = {}, []
        for dataset in chosen:
            queries, passages = load_m2kr(dataset.name, root, args.layout)
            queries_at, passages_at, passage_files = _sources(dataset, root, args.layout)
            items = [Item(p["pid"], p["text"] or None, p["img_path"], str(passages_at), i) for i, p in enumerate(passages)]
            pools.append(Pool(f"m2kr_{args.layout}_{dataset.stem}_passages", [p["pid"] for p in passages],
                              ItemList(items), tuple(passage_files)))
            data[dataset.name] = (queries, passages, str(queries_at))
        embeddings = encoder.pools(pools, image_root)
        if embeddings is None:
            return None

        run_name = Path(str(args.model).rstrip("/")).name
        results = {}
        for dataset, pool in zip(chosen, pools):
            queries, passages, queries_at = data[dataset.name]
            positives = [set(q["pos_ids"]) for q in queries]
            known = set(pool.ids)
            absent = sum(not p & known for p in positives)
            if absent:
                logger.warning("%s: %d of %d queries have no gold passage among the %d test passages",
                               dataset.name, absent, len(queries), len(passages))
            items = [Item(q["qid"], q["text"] or None, q["img_path"], queries_at, i) for i, q in enumerate(queries)]
            query_embeddings = encoder.queries(items, image_root, f"queries {dataset.name}")
            ks = sorted({dataset.recall_k, dataset.pseudo_k or dataset.recall_k})
            scores, indices = search(query_embeddings, embeddings[pool.name].shards, ks[-1], args.search_backend,
                                     encoder.device)
            ranked = indices.tolist()
            texts = [[passages[i]["text"] for i in ranking] for ranking in ranked] if dataset.pseudo_k else None
            answers = [q["answers"] for q in queries] if dataset.pseudo_k else None
            metrics = compute_retrieval_metrics([[pool.ids[i] for i in ranking] for ranking in ranked], positives, ks,
                                                texts, answers)
            results[dataset.name] = {name: metrics[name] for name in dataset.metric_names}
            write_trec(args.output_dir / "runs" / f"{dataset.stem}.trec", [q["qid"] for q in queries], pool.ids,
                       indices, scores, run_name)
        table = results_table(results)
        write_report(args.output_dir, results, table)
        print(table)
        return results
    finally:
        finish(encoder.job)


def main(argv: list[str] | None = None) -> dict | None:
    """CLI entry point; see the module docstring and `python -m eval.m2kr --help`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--data-root", required=True, help="folder of the ReT-M2KR jsonl files or M2KR parquet configs")
    parser.add_argument("--layout", choices=list(LAYOUTS), default="ret", help="ret: ReT-M2KR jsonl; parquet: M2KR")
    parser.add_argument("--image-root", help="root of the image paths in the records (default: DATA_ROOT)")
    parser.add_argument("--datasets", nargs="+", help=f"sub-datasets (default: all found), of {list(M2KR_DATASETS)}")
    args = parser.parse_args(argv)
    configure_logging()
    return evaluate(args)


if __name__ == "__main__":
    main()
