"""`ret2-demo` (`python -m ret2.demo`), the main job: train ReT-2 and a score-fusion baseline at several seeds, evaluate both on M-BEIR, report the mean
and spread over the seeds, and show what ReT-2 retrieves.

    ret2-demo                # (or python -m ret2.demo) seeds 42 1 2, generated M-BEIR-format data, tiny towers, CPU
    ret2-demo --seeds 42     # one seed
    ret2-demo --model openai/clip-vit-base-patch32 --data-root /path/to/M-BEIR --num-train-epochs 1 \\
        --per-device-train-batch-size 128 --seeds 42

For each seed, independently: (1) write a small dataset in the exact M-BEIR layout (`ret2.data.synthetic`, drawn
from that seed) unless `--data-root` is given; (2) fine-tune ReT-2 with `ret2.training.train.train` (Trainer +
contrastive loss); (3) fine-tune a UniIR CLIP_SF-style score-fusion baseline on the same towers, data and budget;
(4) evaluate both with `ret2.eval.mbeir.evaluate_mbeir` on the local and global pools. Each seed runs in its own
process with one torch thread (`--jobs` of them at a time), so its numbers do not depend on `--jobs`. Then (5) print
the per-row table (mean +- sample standard deviation over the seeds), and, from the first seed, save the ReT-2 folder
(loads with `AutoModel` / `AutoProcessor` and `trust_remote_code=True`) and draw a bar chart of the per-row scores
and a grid of queries with their top-5 candidates. Per-seed tables and logs are in `OUTPUT_DIR/seed-N/`; while the
seeds run, each prints its stage and every quarter of a training on the terminal.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ret2.commands._common import ArgumentParser, run_cli
from ret2.commands.flags import add_encoding, add_model
from ret2.options import available_cores


def add_run_arguments(parser: ArgumentParser) -> None:
    """The flags of one multi-seed run, shared by the demo and the ablation (`ret2.demo.ablation`)."""
    parser.add_argument("--data-root", type=Path, help="an M-BEIR checkout (default: generate one per seed)")
    add_model(parser, help="'tiny' (random init) or a CLIP/SigLIP checkpoint to start from", default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2],
                        help="seeds of the data, the init and the training; the pictures come from the first")
    parser.add_argument("--jobs", type=int, help="seeds run at once, one process and one torch thread each "
                        "(default: min(number of seeds, CPU cores))")  # fmt: skip
    parser.add_argument("--num-train-epochs", type=float, default=4.0, help="training epochs (every model)")
    parser.add_argument("--per-device-train-batch-size", type=int, default=32, help="training batch (every model)")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="peak learning rate (every model)")
    parser.add_argument("--num-hard-negatives", type=int, default=3, help="hard negatives per query (neg_cand_list)")
    add_encoding(parser, dtype=False)
    parser.add_argument("--n-per-task", type=int, default=96,
                        help="generated test queries per row (one query = 100/N points of a row's score)")
    parser.add_argument("--pool-size", type=int, default=320, help="generated candidates per local test pool")
    parser.add_argument("--n-train-per-task", type=int, default=160, help="generated training queries per row")


def check_run_args(parser: ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Refuse repeated seeds and a non-positive `--jobs`; fill in the default `--jobs`."""
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed; give each once")
    if args.jobs is None:
        args.jobs = min(len(args.seeds), available_cores())
    if args.jobs < 1:
        parser.error(f"--jobs must be a positive integer, got {args.jobs}")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/demo"), help="where data, models and results go")
    add_run_arguments(parser)
    parser.add_argument("--no-baseline", action="store_true", help="skip the score-fusion comparison")
    return check_run_args(parser, parser.parse_args(argv))


def run(argv: list[str] | None = None) -> dict:
    """Parse, run every seed, print and write the tables, draw the pictures; returns the summary."""
    args = parse_args(argv)
    from ret2.demo.plots import retrieval_grid, task_bars
    from ret2.demo.seeds import BASELINE, aggregate, mean_chance, row_table, run_seeds, seed_table, start_run

    out, start, load = start_run(args)
    print(f"seeds {args.seeds}, {args.jobs} at a time; each: data, ReT-2"
          + ("" if args.no_baseline else ", score-fusion baseline") + ", evaluation (local and global pools)")
    summaries = run_seeds(args, out, {"ret2": ""}, baseline=not args.no_baseline)
    stats, chance = aggregate(summaries), mean_chance(summaries)
    table, per_seed = row_table(stats, chance), seed_table(summaries)
    seeds = ", ".join(map(str, args.seeds))
    spread = f"mean ± sample std over seeds {seeds}" if len(args.seeds) > 1 else f"seed {seeds}"
    summary = {
        "seeds": summaries, "aggregate": stats, "chance_local": chance, "jobs": args.jobs,
        "seconds": round(time.perf_counter() - start, 1), "load_average_1min_at_start": load,
    }  # fmt: skip
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    (out / "demo.md").write_text(f"R@k x 100, {spread}\n\n{table}\n\nPer seed (average of the 16 rows):\n\n"
                                 f"{per_seed}\n")  # fmt: skip
    print(f"results (R@k = UniIR's hit rate, x 100; {spread})\n{table}\n\nper seed:\n{per_seed}")
    first, first_dir = summaries[0], out / f"seed-{args.seeds[0]}"
    data_root = args.data_root or first_dir / "data"
    label = f"seed {first['seed']}"
    task_bars(first["results"]["ret2"], first["results"].get(BASELINE), out / "task_scores.png", note=label)
    retrieval_grid(data_root, first_dir / "eval-ret2" / "runs" / "local", out / "retrievals.png", note=label)
    print(f"\nReT-2 model ({label}): {first_dir / 'ret2-model'} (AutoModel/AutoProcessor with trust_remote_code=True)")
    print(f"pictures ({label}): {out / 'task_scores.png'}, {out / 'retrievals.png'}; took {summary['seconds']:.0f} s "
          f"with {args.jobs} job(s) (1-min load average at start: {load:.1f})")  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-demo`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
