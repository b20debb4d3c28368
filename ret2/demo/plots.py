"""The demo's two pictures: per-task scores, and queries with their top-5 retrieved candidates."""

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from ret2.data.mbeir import EVAL_ROWS, read_qrels  # noqa: E402

GRID_ROWS = ("mbeir_mscoco_task0_test", "mbeir_visualnews_task3_test", "mbeir_cirr_task7_test", "mbeir_oven_task8_test")


def task_bars(ret2: dict, baseline: dict | None, path: Path, pool: str = "local", note: str = "") -> None:
    """Grouped bars: the primary metric of each of the 16 rows, ReT-2 next to the score-fusion baseline; `note`
    (e.g. the seed) goes into the title."""
    labels = [row.label for row in EVAL_ROWS]
    scores = {"ReT-2": [100 * ret2[pool][row.query_stem][f"recall@{row.primary_k}"] for row in EVAL_ROWS]}
    if baseline:
        scores["Score fusion (CLIP_SF style)"] = [
            100 * baseline[pool][row.query_stem][f"recall@{row.primary_k}"] for row in EVAL_ROWS
        ]
    fig, ax = plt.subplots(figsize=(13, 4.8))
    width = 0.8 / len(scores)
    for i, (name, values) in enumerate(scores.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(scores) - 1) / 2 for x in range(len(labels))], labels, rotation=40, ha="right")
    ax.set_ylabel("primary metric (R@5, or R@10 for Fashion rows), %")
    ax.set_ylim(0, 100)
    averages = ", ".join(f"{name} {100 * res[pool]['average']:.1f}" for name, res in
                         (("ReT-2", ret2), ("SF", baseline)) if res)  # fmt: skip
    ax.set_title(f"M-BEIR-format generated data, {pool} pools{', ' + note if note else ''} (average: {averages})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _records(path: Path, key: str) -> dict[str, dict]:
    with open(path, encoding="utf-8") as f:
        return {record[key]: record for record in map(json.loads, f)}


def _top(run_file: Path, k: int) -> dict[str, list[str]]:
    ranked: dict[str, list[str]] = {}
    for line in open(run_file, encoding="utf-8"):
        qid, _, did, rank, *_ = line.split()
        if int(rank) <= k:
            ranked.setdefault(qid, []).append(did)
    return ranked


def _cell(ax, root: Path, text: str | None, image: str | None, title: str, color: str | None = None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if image:
        ax.imshow(Image.open(root / image).convert("RGB"))
    else:
        ax.set_facecolor("#f4f4f4")
    if text:
        ax.text(0.5, -0.04, "\n".join(textwrap.wrap(text, 28)[:4]), transform=ax.transAxes, ha="center", va="top",
                fontsize=7)  # fmt: skip
    ax.set_title(title, fontsize=8)
    for spine in ax.spines.values():
        spine.set_edgecolor(color or "#999999")
        spine.set_linewidth(4 if color else 1)


def retrieval_grid(
    root: Path, runs: Path, path: Path, stems: tuple[str, ...] = GRID_ROWS, k: int = 5, note: str = ""
) -> None:
    """One line per query (the first query of each chosen row): the query, then its top-k candidates in the local
    pool, framed green when relevant and red otherwise; `note` (e.g. the seed) goes into the title."""
    rows = [row for row in EVAL_ROWS if row.query_stem in stems]
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.9 * (k + 1), 2.6 * len(rows)), squeeze=False)
    for line, row in zip(axes, rows):
        query = next(iter(_records(row.query_path(root), "qid").values()))
        pool = _records(row.pool_path(root), "did")
        positives = read_qrels(row.qrels_path(root))[query["qid"]]
        _cell(line[0], root, query["query_txt"], query["query_img_path"], f"query: {row.label}")
        for rank, (ax, did) in enumerate(zip(line[1:], _top(runs / f"{row.query_stem}.trec", k)[query["qid"]]), 1):
            cand = pool[did]
            hit = did in positives
            _cell(ax, root, cand["txt"], cand["img_path"], f"#{rank} {'hit' if hit else ''}", "green" if hit else "red")
    fig.suptitle(f"ReT-2 on generated M-BEIR-format data{', ' + note if note else ''}: each query and its top-{k} "
                 "(green = relevant)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
