"""`ret2-synthetic`: write synthetic benchmark data in the exact M-BEIR layout (plus a ReT-M2KR copy under
OUTPUT_DIR/m2kr), for tests, demos and benchmarks; prints the dataset root.

    ret2-synthetic --output-dir DIR --seed 0
    ret2-synthetic --output-dir DIR --row-pool-size mbeir_webqa_task1_test=100000   # benchmark pool

Every image is one drawn shape and every text describes its scene, so each of the 16 rows is learnable; the same seed
gives byte-identical files (from Python: `ret2.data.synthetic.generate_mbeir`, whose docstring says what is drawn).
"""

from __future__ import annotations

from ret2.commands._common import ArgumentParser, run_cli


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", required=True, help="dataset root to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of every drawn scene, query and pool")
    parser.add_argument("--n-per-task", type=int, default=24, help="test queries per row")
    parser.add_argument("--pool-size", type=int, default=80, help="candidates per local pool")
    parser.add_argument("--n-train-per-task", type=int, default=48, help="training queries per row")
    parser.add_argument("--row-pool-size", action="append", default=[], metavar="STEM=N",
                        help="pool size of one test row, e.g. mbeir_webqa_task1_test=100000 (repeatable)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the drawn images, in pixels")
    parser.add_argument("--no-m2kr", action="store_true", help="skip the ReT-M2KR copy under OUTPUT_DIR/m2kr")
    return parser


def run(argv: list[str] | None = None):
    """Parse, generate, print the dataset root and return it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    row_pool_sizes = {}
    for spec in args.row_pool_size:
        stem, _, size = spec.partition("=")
        if not size.isdigit():
            parser.error(f"--row-pool-size expects STEM=N, got {spec!r}")
        row_pool_sizes[stem] = int(size)
    from ret2.data.synthetic import generate_mbeir

    root = generate_mbeir(args.output_dir, args.seed, args.n_per_task, args.pool_size, args.n_train_per_task,
                          row_pool_sizes, args.image_size, not args.no_m2kr, progress=True)  # fmt: skip
    print(root)
    return root


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-synthetic`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
