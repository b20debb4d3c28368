"""Matryoshka sizes on the demo: ReT-2 trained with `--matryoshka_dims` (the contrastive loss summed over nested,
re-normalised prefixes of the embedding) against the demo's ReT-2 trained without it, both evaluated on the local and
global pools with every embedding truncated to each size (`EncodeOptions.truncate_dim`).

    python -m ret2.demo                                      # first: the demo's data and ReT-2 models, runs/demo
    python -m ret2.demo.matryoshka --reference runs/demo     # seeds 42 1 2, one after the other

For each seed the Matryoshka model is trained on the reference's data (`REFERENCE/seed-N/data`) with the demo's
recipe, towers init seed and budget (the flags below, defaults as `python -m ret2.demo`), and compared with the
reference's `REFERENCE/seed-N/ret2-model`. Prints (and writes to OUTPUT_DIR/matryoshka.md and .json) the average
primary metric of the 16 rows at each size, mean +- sample standard deviation over the seeds.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from transformers import TrainingArguments

from modeling_ret2 import Ret2Model
from ret2.commands._common import ArgumentParser, run_cli
from ret2.commands.demo import add_run_arguments, check_run_args
from ret2.eval.encoder import EncodeOptions
from ret2.eval.mbeir import evaluate_mbeir
from ret2.training.train import train

from .seeds import (
    POOLS, Progress, StepProgress, data_arguments, model_arguments, one_torch_thread,
    start_run, training_kwargs,
)  # fmt: skip

PLAIN, MATRYOSHKA = "ret2", "ret2_matryoshka"
LABELS = {PLAIN: "ReT-2 (demo, full size only)", MATRYOSHKA: "ReT-2 + Matryoshka loss"}


def default_dims(embedding_dim: int) -> list[int]:
    """The full size and its halvings down to an eighth: 32 -> [32, 16, 8, 4]."""
    return [embedding_dim // 2**i for i in range(4) if embedding_dim // 2**i >= 1]


def run_seed(args: argparse.Namespace, seed: int, dims: list[int]) -> dict:
    """Train the Matryoshka model of one seed (unless its folder holds a finished one) and evaluate it and the
    reference's ReT-2 at every size; returns {"seed", "results": {model: {size: {pool: average}}}, "seconds"}."""
    start, progress = time.perf_counter(), Progress(seed)
    reference, out = args.reference / f"seed-{seed}", args.output_dir / f"seed-{seed}"
    data_root = reference / "data"
    models = {PLAIN: reference / "ret2-model", MATRYOSHKA: out / f"{MATRYOSHKA}-model"}
    with one_torch_thread():
        if not (models[MATRYOSHKA] / "model.safetensors").is_file():
            progress(f"fine-tuning {MATRYOSHKA} with sizes {dims}")
            model_args = model_arguments(args, "")
            model_args.matryoshka_dims = dims
            train(model_args, data_arguments(args, data_root),
                  TrainingArguments(**training_kwargs(args, seed, models[MATRYOSHKA])),
                  callbacks=[StepProgress(progress, MATRYOSHKA)])  # fmt: skip
        results: dict = {}
        for name, model_dir in models.items():
            results[name] = {}
            for dim in dims:
                progress(f"evaluating {name} at {dim} dimensions")
                # One cache per model (full embeddings), truncated as loaded: each size reuses one encoding.
                options = EncodeOptions(batch_size=args.batch_size, cache_dir=out / f"cache-{name}",
                                        truncate_dim=None if dim == dims[0] else dim)  # fmt: skip
                scores = evaluate_mbeir(model_dir, data_root, out / f"eval-{name}-{dim}", pool="both", options=options)
                results[name][dim] = {pool: scores[pool]["average"] for pool in POOLS}
    return {"seed": seed, "results": results, "seconds": round(time.perf_counter() - start, 1)}


def size_table(summaries: list[dict], dims: list[int]) -> str:
    """One line per model and size: the average primary metric (x 100) on each pool, mean +- sample std over seeds,
    and its share of the same model's full-size score."""
    lines = ["| model | size | " + " | ".join(f"{pool} (R@k x 100)" for pool in POOLS) + " | "
             + " | ".join(f"{pool}: of full size" for pool in POOLS) + " |",
             "|---|---:|" + "---:|" * 2 * len(POOLS)]  # fmt: skip
    for name in summaries[0]["results"]:
        for dim in dims:
            cells, shares = [], []
            for pool in POOLS:
                values = [s["results"][name][dim][pool] for s in summaries]
                full = [s["results"][name][dims[0]][pool] for s in summaries]
                std = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
                cells.append(f"{100 * statistics.fmean(values):.1f}{std}")
                shares.append(f"{statistics.fmean(v / f for v, f in zip(values, full)):.3f}")
            lines.append(f"| {LABELS[name]} | {dim} | " + " | ".join(cells + shares) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--reference", type=Path, default=Path("runs/demo"),
                        help="a `python -m ret2.demo` output folder: seed-N/data and seed-N/ret2-model")  # fmt: skip
    parser.add_argument("--output-dir", type=Path, default=Path("runs/matryoshka"), help="where models, results go")
    parser.add_argument("--dims", type=int, nargs="+",
                        help="Matryoshka sizes, largest first (default: the embedding size and its halvings to an "
                             "eighth)")  # fmt: skip
    add_run_arguments(parser)
    args = check_run_args(parser, parser.parse_args(argv))
    for seed in args.seeds:
        for part in ("data", "ret2-model"):
            if not (args.reference / f"seed-{seed}" / part).is_dir():
                parser.error(f"--reference {args.reference} has no seed-{seed}/{part}: run `python -m ret2.demo "
                             f"--output-dir {args.reference} --seeds {' '.join(map(str, args.seeds))}` first")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out, start, load = start_run(args)
    full = Ret2Model.config_class.from_pretrained(args.reference / f"seed-{args.seeds[0]}" / "ret2-model").embedding_dim
    dims = args.dims or default_dims(full)
    if dims[0] != full or sorted(dims, reverse=True) != dims:
        raise ValueError(f"--dims {dims} must start with the embedding size {full} and decrease")
    summaries = [run_seed(args, seed, dims) for seed in args.seeds]
    seconds = round(time.perf_counter() - start, 1)
    report = (f"Average primary metric of the 16 rows, mean ± sample std over seeds {', '.join(map(str, args.seeds))}; "
              f"{seconds:.0f} s (1-min load average at start {load:.1f}).\n\n{size_table(summaries, dims)}\n")  # fmt: skip
    (out / "matryoshka.md").write_text(report)
    summary = {"dims": dims, "seeds": summaries, "seconds": seconds, "load_average_1min_at_start": load}
    (out / "matryoshka.json").write_text(json.dumps(summary, indent=2))
    print(report)
    return summary


if __name__ == "__main__":
    run_cli(main)
