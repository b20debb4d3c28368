"""`ret2-eval-mbeir`: M-BEIR evaluation with UniIR's protocol, the 16 test query files against their local pools
and/or the global pool; prints UniIR's table.

    ret2-eval-mbeir --model M --data-root R --pool both --output-dir out
    torchrun --nproc_per_node 8 -m ret2.eval.mbeir --model M --data-root R --pool both --output-dir out --dtype bfloat16

(from a checkout: `python -m eval.mbeir ...`; from Python: `ret2.eval.mbeir.evaluate_mbeir(model, data_root,
output_dir, ...)`, whose docstring has the protocol.) Writes `runs/<pool>/<query file>.trec`, `results.json` and
`results.md` to `--output-dir`; pool embeddings are cached (resumable) under `--cache-dir`. Guide:
docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

from ret2.commands._common import ArgumentParser, configure_logging, run_cli
from ret2.commands.flags import add_encode_options, add_evaluation, encode_options
from ret2.data.mbeir import EVAL_POOLS


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    add_evaluation(parser, "M-BEIR root (query/, cand_pool/, qrels/, mbeir_images/)")
    parser.add_argument("--split", default="test", choices=["test"], help="M-BEIR's evaluation table is on test")
    parser.add_argument("--pool", default="both", choices=list(EVAL_POOLS), help="local pools, the global pool, or both")
    parser.add_argument("--tasks", nargs="+", help="rows to evaluate, e.g. webqa_task1 cirr_task7 (default: all 16)")
    parser.add_argument("--instructions", type=Path,
                        help="query_instructions.tsv (default: DATA_ROOT/instructions/query_instructions.tsv if it "
                             "exists, else the built-in prompt_1 table)")  # fmt: skip
    parser.add_argument("--random-instruction", action="store_true", help="draw one prompt per query (seeded), as UniIR")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-instruction")
    parser.add_argument("--k", type=int, help="results per query (default: the row's largest reported K, 10 or 50)")
    add_encode_options(parser)
    return parser


def run(argv: list[str] | None = None) -> dict | None:
    """Parse, evaluate, print the table (rank 0; the other ranks of a torchrun job return None)."""
    args = build_parser().parse_args(argv)
    configure_logging()
    from ret2.eval.mbeir import evaluate_mbeir

    results = evaluate_mbeir(
        args.model, args.data_root, args.output_dir, pool=args.pool, tasks=args.tasks, instructions=args.instructions,
        random_instruction=args.random_instruction, seed=args.seed, k=args.k, options=encode_options(args),
    )  # fmt: skip
    if results is not None:
        print((args.output_dir / "results.md").read_text(encoding="utf-8"))
    return results


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-eval-mbeir`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
