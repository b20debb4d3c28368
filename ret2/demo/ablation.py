"""What ReT-2's parts buy on the demo's embedded default: ReT-2 as configured against (a) one tap (each tower's last
layer only), (b) no gates (`gated=False`: input gates = the modality's presence, forget gate = 1), (c) no recurrence
(`recurrent=False`: the cell applied to each tap from the initial state, the states averaged), and the score-fusion
baseline; every model on the same data, towers init seed, budget and recipe as `python -m ret2.demo`, at each seed.

    python -m ret2.demo.ablation                    # seeds 42 1 2, two at a time on 2 cores
    python -m ret2.demo.ablation --seeds 42 --num-train-epochs 1
    python -m ret2.demo.ablation --study negatives  # given vs mined (filtered, unfiltered) vs no hard negatives

Prints (and writes to OUTPUT_DIR/ablation.md) the mean +- sample standard deviation over the seeds of the average of
all 16 rows, of the composed rows (FashionIQ, CIRR, OVEN / InfoSeek (i,t)->(i,t)) and of the other 12, on the local
and global pools, the per-row tables, and draws OUTPUT_DIR/ablation.png.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from ret2.commands._common import ArgumentParser, run_cli  # noqa: E402
from ret2.commands.demo import add_run_arguments, check_run_args  # noqa: E402
from ret2.data.mbeir import EVAL_ROWS  # noqa: E402
from ret2.tiny import tiny_config, tiny_processor  # noqa: E402

from ret2.training.arguments import MiningOptions  # noqa: E402

from .seeds import (  # noqa: E402
    BASELINE, NegativesVariant, aggregate, cell, mean_chance, row_table, run_seeds, seed_table,
    start_run,
)  # fmt: skip

LABELS = {"ret2": "ReT-2", "one_tap": "one tap", "no_gates": "no gates", "no_recurrence": "no recurrence",
          BASELINE: "score fusion", "mined_filtered": "mined, filtered", "mined_unfiltered": "mined, unfiltered",
          "no_negatives": "no hard negatives"}  # fmt: skip
STUDIES = ("parts", "negatives")
# The negatives study's mining (by the seed's ReT-2 trained on the given negatives): the filtered row keeps candidates
# scoring at least 0.05 below the query's lowest positive, of a positive's modality, down to rank 500 (with the default
# depth of 50 the margin left half of seed 42's 2,560 queries without any negative: their top 50 all score within 0.05
# of the positive; at 500, 65); the unfiltered row takes the top of the ranking as it is.
FILTERED = MiningOptions(num_negatives=3, range_max=500, margin=0.05, same_modality=True)
UNFILTERED = MiningOptions(num_negatives=3)
COMPOSED = tuple(row.query_stem for row in EVAL_ROWS if row.task_id in (7, 8))  # (i,t)->i and (i,t)->(i,t)
GROUPS = {"all 16 rows": tuple(row.query_stem for row in EVAL_ROWS), "composed (4)": COMPOSED,
          "other (12)": tuple(row.query_stem for row in EVAL_ROWS if row.query_stem not in COMPOSED)}  # fmt: skip


def tower_depths(model: str) -> tuple[int, int]:
    """Blocks of the text and vision towers a new ReT-2 on `model` ('tiny' or a CLIP / SigLIP checkpoint) gets."""
    config = tiny_config(tiny_processor()) if model == "tiny" else AutoConfig.from_pretrained(model)
    return config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers


def variants(model: str) -> dict[str, str]:
    """Name -> `ModelArguments.config_overrides` of ReT-2 as configured and its three ablations."""
    text_depth, vision_depth = tower_depths(model)
    return {
        "ret2": "", "one_tap": f"text_layer_ids=[{text_depth - 1}],vision_layer_ids=[{vision_depth - 1}]",
        "no_gates": "gated=false", "no_recurrence": "recurrent=false",
    }  # fmt: skip


def negatives_variants() -> dict[str, str | NegativesVariant]:
    """The negatives study: ReT-2 as configured on the data's given hard negatives (`neg_cand_list` topped up with
    random candidates, the demo's default), on negatives it mined filtered and unfiltered, and on none."""
    return {"ret2": "", "mined_filtered": NegativesVariant(FILTERED), "mined_unfiltered": NegativesVariant(UNFILTERED),
            "no_negatives": NegativesVariant(None)}  # fmt: skip


def collect(folders: list[Path], seeds: list[int]) -> list[dict]:
    """Per seed, the results of every run folder (`FOLDER/seed-N/results.json`, as `run_seed` writes them) merged
    into one summary: models in folder order, the seconds summed. A model found twice for a seed is refused."""
    summaries = []
    for seed in seeds:
        merged = {"seed": seed, "results": {}, "chance_local": None, "seconds": 0.0}
        for folder in folders:
            path = folder / f"seed-{seed}" / "results.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: run seed {seed} into {folder} first")
            summary = json.loads(path.read_text())
            twice = sorted(set(summary["results"]) & set(merged["results"]))
            if twice:
                raise ValueError(f"{path}: model(s) {twice} already come from an earlier folder")
            merged["results"].update(summary["results"])
            merged["chance_local"] = merged["chance_local"] or summary["chance_local"]
            merged["seconds"] += summary["seconds"]
        summaries.append(merged)
    return summaries


def _primary(run: dict, stem: str) -> float:
    row = next(row for row in EVAL_ROWS if row.query_stem == stem)
    return run[stem][f"recall@{row.primary_k}"]


def group_stats(summaries: list[dict]) -> dict:
    """{model: {pool: {group: stats}}}: each seed's mean primary metric over a group of rows (`GROUPS`), then the
    mean, sample std, min and max of that over the seeds."""
    out: dict = {}
    for name, pools in summaries[0]["results"].items():
        out[name] = {}
        for pool in pools:
            runs = [summary["results"][name][pool] for summary in summaries]
            values = {group: [statistics.fmean(_primary(run, stem) for stem in stems) for run in runs]
                      for group, stems in GROUPS.items()}  # fmt: skip
            out[name][pool] = {
                group: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                        "min": min(v), "max": max(v), "n": len(v)}
                for group, v in values.items()
            }  # fmt: skip
    return out


def group_table(groups: dict, pools: tuple[str, ...] = ("local", "global")) -> str:
    """One line per model: the group averages (mean +- std over seeds, x 100) on each pool."""
    columns = [(pool, group) for pool in pools for group in GROUPS]
    lines = ["| model | " + " | ".join(f"{pool}: {group}" for pool, group in columns) + " |",
             "|---|" + "---:|" * len(columns)]  # fmt: skip
    for name, by_pool in groups.items():
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cell(by_pool[p][g]) for p, g in columns) + " |")
    return "\n".join(lines)


def draw(stats: dict, groups: dict, path: Path, seeds: list[int]) -> None:
    """Left: every row's local primary metric per model (mean, error bar = sample std over seeds); right: the group
    averages."""
    names = list(stats)
    fig, (rows_ax, groups_ax) = plt.subplots(1, 2, figsize=(17, 5), gridspec_kw={"width_ratios": [4, 1.2]})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        per_row = [stats[name]["local"][row.query_stem] for row in EVAL_ROWS]
        rows_ax.bar([x + i * width for x in range(len(EVAL_ROWS))], [100 * s["mean"] for s in per_row], width,
                    yerr=[100 * s["std"] for s in per_row], capsize=1.5, label=LABELS.get(name, name))  # fmt: skip
        per_group = [groups[name]["local"][group] for group in GROUPS]
        groups_ax.bar([x + i * width for x in range(len(GROUPS))], [100 * s["mean"] for s in per_group], width,
                      yerr=[100 * s["std"] for s in per_group], capsize=2, label=LABELS.get(name, name))  # fmt: skip
    centre = width * (len(names) - 1) / 2
    rows_ax.set_xticks([x + centre for x in range(len(EVAL_ROWS))], [row.label for row in EVAL_ROWS], rotation=40,
                       ha="right")  # fmt: skip
    groups_ax.set_xticks([x + centre for x in range(len(GROUPS))], list(GROUPS), rotation=20, ha="right")
    for ax in (rows_ax, groups_ax):
        ax.set_ylim(0, 100)
        ax.set_ylabel("primary metric (R@5, R@10 for Fashion rows), %")
    rows_ax.set_title(f"Ablation on generated M-BEIR-format data, local pools: mean and sample std over seeds "
                      f"{', '.join(map(str, seeds))}")  # fmt: skip
    groups_ax.set_title("row groups")
    rows_ax.legend(fontsize=8, ncol=len(names))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/ablation"), help="where data, models, results go")
    parser.add_argument("--study", choices=list(STUDIES), default="parts",
                        help="parts: taps, gates, recurrence and score fusion; negatives: given vs mined (filtered, "
                             "unfiltered) vs no hard negatives")  # fmt: skip
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="train and evaluate only these models of the negatives study (default: all; the mined "
                             "ones need OUTPUT_DIR/seed-N/ret2-model, trained or linked there)")  # fmt: skip
    parser.add_argument("--collect", nargs="+", type=Path, metavar="DIR",
                        help="train nothing: tabulate the seeds' results.json of earlier runs' output folders (one "
                             "model set per folder, e.g. the demo's and --variants runs), merged per seed")  # fmt: skip
    add_run_arguments(parser)
    return check_run_args(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out, start, load = start_run(args)
    baseline = args.study == "parts"
    models = variants(args.model) if baseline else negatives_variants()
    if args.variants:
        unknown = sorted(set(args.variants) - set(models))
        if baseline or unknown:
            raise ValueError(f"--variants {' '.join(unknown or args.variants)}: the negatives study's models are "
                             f"{list(negatives_variants())}")  # fmt: skip
        models = {name: variant for name, variant in models.items() if name in args.variants}
    names = [*models, *([BASELINE] if baseline else [])]
    if args.collect:
        summaries = collect(args.collect, args.seeds)
        models = {name: models.get(name, "") for name in summaries[0]["results"]}
    else:
        print(f"seeds {args.seeds}, {args.jobs} at a time; models: {', '.join(LABELS[n] for n in names)}")
        summaries = run_seeds(args, out, models, baseline=baseline)
    stats, groups, chance = aggregate(summaries), group_stats(summaries), mean_chance(summaries)
    seconds = round(time.perf_counter() - start, 1)
    seeds = ", ".join(map(str, args.seeds))
    run = (f"tabulated from {', '.join(map(str, args.collect))}" if args.collect else
           f"{seconds:.0f} s with {args.jobs} job(s) (1-min load average at start {load:.1f})")  # fmt: skip
    report = (
        f"R@k x 100, mean ± sample std over seeds {seeds}; {run}.\n\n{group_table(groups)}\n\nPer row, local pools:\n\n"
        f"{row_table(stats, chance, ('local',), LABELS)}\n\nPer row, global pools:\n\n"
        f"{row_table(stats, chance, ('global',), LABELS)}\n\nPer seed (average of the 16 rows):\n\n"
        f"{seed_table(summaries, labels=LABELS)}\n"
    )  # fmt: skip
    (out / "ablation.md").write_text(report)
    summary = {"seeds": summaries, "aggregate": stats, "groups": groups, "chance_local": chance, "seconds": seconds,
               "jobs": args.jobs, "load_average_1min_at_start": load, "study": args.study,
               "variants": {name: str(variant) for name, variant in models.items()}}  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    draw(stats, groups, out / "ablation.png", args.seeds)
    print(report + f"\npicture: {out / 'ablation.png'}")
    return summary


if __name__ == "__main__":
    run_cli(main)
