"""M2KR evaluation (PreFLMR's benchmark, ReT-M2KR or original layout): each sub-dataset's test queries against its
own test passages, scored by Recall@K and, where the dataset has answers, Pseudo Recall@K.

    ret2-eval-m2kr --model M --data-root R --layout ret --output-dir out
    torchrun --nproc_per_node 8 -m ret2.eval.m2kr --model M --data-root R --layout ret --output-dir out --dtype bfloat16

(from a checkout: `python -m eval.m2kr ...`; from Python: `evaluate_m2kr(model, data_root, output_dir, ...)`.)

Recall@K: a query scores 1 if any gold passage id is in its top K. Pseudo Recall@K: 1 if any of the top K passage
texts contains any gold answer (lower-cased substring). K per dataset as PreFLMR / ReT report it (`M2KR_DATASETS`).
Writes `runs/<dataset>.trec`, `results.json` (fractions in [0, 1], and the model) and `results.md` (also printed) to
`--output-dir`; passage embeddings are cached as in `ret2.eval.mbeir`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ret2.distributed import finish
from ret2.data.images import ImageLoader
from ret2.cache import Pool
from ret2.encoding import Item, ItemList
from ret2.data.m2kr import LAYOUTS, M2KR_DATASETS, M2KRDataset, load_m2kr, m2kr_dataset
from ret2.metrics import compute_retrieval_metrics
from ret2.search import search

from .encoder import EncodeOptions, Encoder
from .report import trec_order, write_report, write_trec

logger = logging.getLogger(__name__)



def _sources(dataset: M2KRDataset, root: Path, layout: str) -> tuple[Path, Path, list[Path]]:
    """(queries file or folder, passages file or folder, passage files) of a sub-dataset under `root`."""
    if layout == "ret":
        queries, passages = dataset.ret_paths(root)
        return queries, passages, [passages]
    return root / f"{dataset.config}_data", root / f"{dataset.config}_passages", dataset.parquet_paths(root)[1]


def datasets_under(root: Path, layout: str) -> list[M2KRDataset]:
    """The sub-datasets whose files of `layout` are all under `root`."""
    if layout == "ret":
        return [d for d in M2KR_DATASETS.values() if all(p.is_file() for p in d.ret_paths(root))]
    return [d for d in M2KR_DATASETS.values() if all(d.parquet_paths(root))]


def find_data_root(root: Path, layout: str) -> Path:
    """The folder holding the M2KR files: `root`, or else `root/m2kr`, where `ret2-synthetic` writes its ReT-M2KR
    copy beside the M-BEIR data. FileNotFoundError naming both folders and the files looked for when neither has any."""
    for candidate in (root, root / "m2kr"):
        if datasets_under(candidate, layout):
            if candidate != root:
                logger.info("M2KR data found under %s", candidate)
            return candidate
    example = next(iter(M2KR_DATASETS.values()))
    if layout == "ret":
        files = [p.name for p in example.ret_paths(root)]
    else:
        files = [f"{example.config}_data/test-*.parquet", f"{example.config}_passages/test_passages-*.parquet"]
    raise FileNotFoundError(
        f"no M2KR sub-dataset in the {layout!r} layout under {root} or {root / 'm2kr'} (looked for the files of "
        f"each of {list(M2KR_DATASETS)}, e.g. {example.name}: {' and '.join(files)})"
    )


def select_datasets(names: Sequence[str] | None, root: Path, layout: str) -> list[M2KRDataset]:
    """The named sub-datasets, or (None) every sub-dataset whose files are under `root` (see `find_data_root`)."""
    if names:
        return [m2kr_dataset(name) for name in names]
    found = datasets_under(root, layout)
    logger.info("evaluating the sub-datasets found under %s: %s", root, [d.name for d in found])
    return found


def check_image_root(items: Sequence[Item], image_root: Path) -> None:
    """FileNotFoundError naming the record, its image path and `image_root` when the first item with an image has no
    file under `image_root`: a wrong `--image-root` fails before any encoding."""
    first = next((item for item in items if item.image), None)
    if first is not None and not Path(ImageLoader(image_root).path(first.image)).is_file():
        raise FileNotFoundError(
            f"{first.where()}: image {first.image!r} of record {first.id!r} is not under the image root {image_root} "
            "(image paths are relative to --image-root, default: --data-root; ReT-M2KR's are relative to its root)"
        )


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


def evaluate_m2kr(
    model: str | Path,
    data_root: str | Path,
    output_dir: str | Path,
    *,
    layout: str = "ret",
    image_root: str | Path | None = None,
    datasets: Sequence[str] | None = None,
    options: EncodeOptions | None = None,
) -> dict | None:
    """Evaluate a model on M2KR (see the module docstring).

    Args:
        model: saved ReT-2 folder or hub id (loaded with `trust_remote_code`).
        data_root: folder of the ReT-M2KR jsonl files (`layout="ret"`) or of the M2KR parquet configs ("parquet"),
            or the folder above it, as `ret2-synthetic` writes them (M-BEIR under ROOT, M2KR under ROOT/m2kr).
        output_dir: where TREC runs, `results.json`, `results.md` and (by default) the cache go.
        image_root: root of the records' image paths (None: `data_root`, right for ReT-M2KR, whose paths are
            `images/...` relative to its root). A wrong one fails before encoding, naming a record and its path.
        datasets: sub-datasets to evaluate (None: every one found under `data_root`).
        options: batching, device, dtype, cache and search backend.

    Returns:
        `{dataset: {"recall@K": ..., "pseudo_recall@K": ...}}` (fractions) on rank 0; None on the other ranks.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {list(LAYOUTS)}")
    root, output_dir = find_data_root(Path(data_root), layout), Path(output_dir)
    image_root = Path(image_root or root)
    options = options or EncodeOptions()
    if options.cache_dir is None:
        options = replace(options, cache_dir=output_dir / "cache")
    chosen = select_datasets(datasets, root, layout)
    encoder = Encoder.create(model, options)
    try:
        data, pools = {}, []
        for dataset in chosen:
            queries, passages = load_m2kr(dataset.name, root, layout)
            queries_at, passages_at, passage_files = _sources(dataset, root, layout)
            items = [Item(p["pid"], p["text"] or None, p["img_path"], str(passages_at), i) for i, p in enumerate(passages)]
            query_items = [Item(q["qid"], q["text"] or None, q["img_path"], str(queries_at), i)
                           for i, q in enumerate(queries)]  # fmt: skip
            check_image_root(query_items, image_root)
            check_image_root(items, image_root)
            pools.append(Pool(f"m2kr_{layout}_{dataset.stem}_passages", [p["pid"] for p in passages],
                              ItemList(items), tuple(passage_files)))
            data[dataset.name] = (queries, passages, query_items)
        embeddings = encoder.pools(pools, image_root)
        if embeddings is None:
            return None

        run_name = Path(str(model).rstrip("/")).name
        results = {}
        for dataset, pool in zip(chosen, pools):
            queries, passages, items = data[dataset.name]
            positives = [set(q["pos_ids"]) for q in queries]
            known = set(pool.ids)
            absent = sum(not p & known for p in positives)
            if absent:
                logger.warning("%s: %d of %d queries have no gold passage among the %d test passages",
                               dataset.name, absent, len(queries), len(passages))
            query_embeddings = encoder.queries(items, image_root, f"queries {dataset.name}")
            ks = sorted({dataset.recall_k, dataset.pseudo_k or dataset.recall_k})
            scores, indices = search(query_embeddings, embeddings[pool.name].shards, ks[-1], options.search_backend,
                                     encoder.device, options.precision, options.rescore_multiplier)
            indices, scores = trec_order(pool.ids, indices, scores)  # equal scores as trec_eval ranks the run file
            ranked = indices.tolist()
            texts = [[passages[i]["text"] for i in ranking] for ranking in ranked] if dataset.pseudo_k else None
            answers = [q["answers"] for q in queries] if dataset.pseudo_k else None
            metrics = compute_retrieval_metrics([[pool.ids[i] for i in ranking] for ranking in ranked], positives, ks,
                                                texts, answers)
            results[dataset.name] = {name: metrics[name] for name in dataset.metric_names}
            write_trec(output_dir / "runs" / f"{dataset.stem}.trec", [q["qid"] for q in queries], pool.ids,
                       indices, scores, run_name)
        write_report(output_dir, results, results_table(results), model, encoder.fingerprint, root,
                     options.truncate_dim)
        logger.info("results written to %s", output_dir)
        return results
    finally:
        finish(encoder.job)


if __name__ == "__main__":  # `python -m eval.m2kr` / `torchrun -m ret2.eval.m2kr`: the `ret2-eval-m2kr` command
    from ret2.commands.eval_m2kr import main

    main()
