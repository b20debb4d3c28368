"""`ret2-eval-m2kr`: M2KR evaluation (PreFLMR's benchmark, ReT-M2KR or original layout), each sub-dataset's test
queries against its own test passages, scored by Recall@K and Pseudo Recall@K; prints the table.

    ret2-eval-m2kr --model M --data-root R --layout ret --output-dir out
    torchrun --nproc_per_node 8 -m ret2.eval.m2kr --model M --data-root R --layout ret --output-dir out --dtype bfloat16

(from a checkout: `python -m eval.m2kr ...`; from Python: `ret2.eval.m2kr.evaluate_m2kr(model, data_root,
output_dir, ...)`.) Writes `runs/<dataset>.trec`, `results.json` and `results.md` to `--output-dir`; passage
embeddings are cached as in `ret2-eval-mbeir`. Guide: docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

from ret2.commands._common import ArgumentParser, configure_logging, run_cli
from ret2.commands.flags import add_encode_options, add_evaluation, encode_options
from ret2.data.m2kr import LAYOUTS, M2KR_DATASETS


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    add_evaluation(parser, "folder of the ReT-M2KR jsonl files or M2KR parquet configs (or the folder above, as "
                           "ret2-synthetic writes it: ROOT/m2kr)")  # fmt: skip
    parser.add_argument("--layout", choices=list(LAYOUTS), default="ret", help="ret: ReT-M2KR jsonl; parquet: M2KR")
    parser.add_argument("--image-root", type=Path,
                        help="root of the image paths in the records (default: DATA_ROOT; ReT-M2KR's paths are "
                             "relative to its root)")  # fmt: skip
    parser.add_argument("--datasets", nargs="+", help=f"sub-datasets (default: all found), of {list(M2KR_DATASETS)}")
    add_encode_options(parser)
    return parser


def run(argv: list[str] | None = None) -> dict | None:
    """Parse, evaluate, print the table (rank 0; the other ranks of a torchrun job return None)."""
    args = build_parser().parse_args(argv)
    configure_logging()
    from ret2.eval.m2kr import evaluate_m2kr

    results = evaluate_m2kr(
        args.model, args.data_root, args.output_dir, layout=args.layout, image_root=args.image_root,
        datasets=args.datasets, options=encode_options(args),
    )  # fmt: skip
    if results is not None:
        print((args.output_dir / "results.md").read_text(encoding="utf-8"))
    return results


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-eval-m2kr`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
