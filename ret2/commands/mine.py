"""`ret2-mine`: mine hard negatives for training queries with a model, and write the query file with them.

    ret2-mine --model runs/demo/seed-42/ret2-model --data-root data/synthetic --output data/mined.jsonl \\
        --num-negatives 3 --range-min 2 --margin 0.05

Each training query (M-BEIR or ReT-M2KR, read as `ret2-train` reads them) gets the best-scoring candidates that pass
every filter (never a positive; ranks [range-min, range-max); the margin below its lowest positive; a score ceiling;
the positives' modality): see `ret2.training.mining`. Train on the output with `ret2-train --train-queries OUTPUT
--num-hard-negatives N`. Parts are written atomically to `OUTPUT.parts/`: an interrupted run resumes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ret2.commands._common import ArgumentParser, configure_logging, run_cli
from ret2.commands.flags import add_device, add_encoding, add_image_orientation, add_model
from ret2.options import TRAINING_FORMATS
from ret2.training.arguments import DataArguments, MiningOptions

logger = logging.getLogger("ret2.training.mining")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    add_model(parser, help="the ReT-2 model (folder or Hub id) that scores the pool", required=True)
    parser.add_argument("--output", required=True, type=Path, help="the mined query file (jsonl) to write")
    parser.add_argument("--format", choices=list(TRAINING_FORMATS), default="mbeir", help="training data format")
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
    add_encoding(parser, dtype=False)
    parser.add_argument("--part-size", type=int, default=10_000, help="queries per resumable part")
    parser.add_argument("--cache-dir", type=Path, help="embedding cache (default: OUTPUT.parts/cache)")
    add_device(parser)
    add_image_orientation(parser, default="stored")
    parser.add_argument("--keep-parts", action="store_true", help="keep OUTPUT.parts/ (and its cache) after writing")
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parse, mine, then write the query file with the mined negatives."""
    args = build_parser().parse_args(argv)
    configure_logging()
    options = MiningOptions(args.num_negatives, args.range_min, args.range_max, args.margin, args.max_score,
                            args.same_modality)  # fmt: skip
    from ret2.training.mining import mine_hard_negatives, write_mined
    from ret2.training.train import build_datasets

    data = DataArguments(
        data_root=None if args.data_root is None else str(args.data_root), format=args.format,
        train_queries=args.train_queries, train_pool=args.train_pool, m2kr_queries=args.m2kr_queries,
        m2kr_passages=args.m2kr_passages,
    )  # fmt: skip
    dataset, _ = build_datasets(data, seed=0)
    root = args.image_root or args.data_root
    if root is None:
        raise ValueError("give --data-root or --image-root: image paths in the data are relative to it")
    parts = args.output.with_name(args.output.name + ".parts")
    mined = mine_hard_negatives(
        dataset, args.model, root, parts, options, batch_size=args.batch_size, part_size=args.part_size,
        cache_dir=args.cache_dir, device=args.device, orientation=args.image_orientation,
    )  # fmt: skip
    count = write_mined(data.query_file(), args.output, mined, args.format)
    short = sum(len(negatives) < options.num_negatives for negatives in mined.values())
    logger.info("wrote %s: %d queries, %d with fewer than %d negatives after the filters", args.output, count, short,
                options.num_negatives)  # fmt: skip
    if not args.keep_parts:
        shutil.rmtree(parts)
    return 0


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-mine`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
