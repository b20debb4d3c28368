"""Fine-tuning benchmark on CPU: a tiny ReT-2 trained on synthetic M-BEIR through the training CLI's code path,
scored before and after on the generated test queries of all 16 rows against their local pools.

    python -m ret2.bench.train_tiny [--json bench-train-tiny.json] [--epochs 4] [--batch-size 32] [--lr 3e-4]

Reports hit@5 (UniIR's "recall@5": a positive among the top 5) per row and averaged, the chance level (random
ranking: 1 - C(N - p, 5) / C(N, 5) for p positives in a pool of N), and the training throughput (samples/s, one
sample = a query, its positive and its hard negatives). Search is exact: every query against every document
embedding of its row's pool, in torch. Training uses one thread for the model and one data-loading worker (two
threads on a tiny model mostly contend); the whole run takes about two minutes on 2 cores.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from ret2.data.images import ImageLoader
from ret2.data.mbeir import (
    EVAL_ROWS, INSTRUCTIONS, candidate_text, load_instructions, query_instruction, query_text,
    read_candidates, read_qrels, read_queries,
)  # fmt: skip
from ret2.eval.mbeir import chance_per_row
from ret2.metrics import compute_retrieval_metrics
from ret2.data.synthetic import generate_mbeir
from transformers import TrainingArguments

from ret2.commands._common import ArgumentParser, run_cli
from ret2.training.arguments import DataArguments, ModelArguments
from ret2.training.train import build_datasets, load_training_model, train

from .common import machine_info

K = 5
TRAIN_PER_TASK = 240  # training queries per M-BEIR row: 3840 in all
HARD_NEGATIVES = 3  # per query: the generator's one-attribute-away scene, topped up with random candidates


def _encode(encode, processor, images: ImageLoader, items: list[tuple[str, str | None, str]], batch: int = 64):
    """Embeddings (N, D) of (text, image path or None, record id) items."""
    out = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        inputs = processor(
            text=[text or None for text, _, _ in chunk],
            images=[images(path, rid) if path else None for _, path, rid in chunk],
            return_tensors="pt",
        )
        out.append(encode(**inputs))
    return torch.cat(out)


@torch.no_grad()
def hit_rate_per_row(model, processor, root: Path, cache_dir: str) -> dict[str, float]:
    """hit@5 of every M-BEIR row: its test queries (instruction prompt_1) against its local pool."""
    model.eval()
    table, images, scores = load_instructions(root / INSTRUCTIONS), ImageLoader(root), {}
    for row in EVAL_ROWS:
        queries = list(read_queries(row.query_path(root), cache_dir=cache_dir))
        pool = list(read_candidates(row.pool_path(root), cache_dir=cache_dir))
        q = _encode(model.encode_queries, processor, images,
                    [(query_text(r, query_instruction(r, table)), r["query_img_path"], r["qid"]) for r in queries])
        d = _encode(model.encode_documents, processor, images,
                    [(candidate_text(r), r["img_path"], r["did"]) for r in pool])
        top = model.similarity(q, d).topk(K, dim=1).indices  # (Nq, K)
        qrels = read_qrels(row.qrels_path(root))
        ranked = [[pool[j]["did"] for j in row_top] for row_top in top.tolist()]
        metrics = compute_retrieval_metrics(ranked, [qrels[r["qid"]] for r in queries], ks=(K,))
        scores[row.label] = metrics[f"recall@{K}"]
    return scores


def run(work: Path, epochs: float, batch_size: int, learning_rate: float, seed: int) -> dict:
    root = generate_mbeir(work / "data", seed=seed, n_train_per_task=TRAIN_PER_TASK, m2kr=False)
    cache = str(work / "datasets_cache")
    data_args = DataArguments(data_root=str(root), num_hard_negatives=HARD_NEGATIVES, dataset_cache_dir=cache)
    train_set, _ = build_datasets(data_args, seed)
    before_model, processor = load_training_model(ModelArguments(model="tiny"), train_set, seed)
    before = hit_rate_per_row(before_model, processor, root, cache)
    training_args = dict(
        output_dir=str(work / "run"), per_device_train_batch_size=batch_size, num_train_epochs=epochs,
        learning_rate=learning_rate, warmup_steps=0.1, dataloader_drop_last=True, dataloader_num_workers=1,
        save_strategy="no", logging_steps=40, seed=seed, dataloader_pin_memory=False, disable_tqdm=True,
        report_to="none", use_cpu=True,
    )  # fmt: skip
    start = time.perf_counter()
    trainer = train(ModelArguments(model="tiny"), data_args, TrainingArguments(**training_args))
    wall = time.perf_counter() - start
    after = hit_rate_per_row(trainer.model, trainer.processing_class, root, cache)
    by_stem = chance_per_row(root, K, cache)
    chance = {row.label: by_stem[row.query_stem] for row in EVAL_ROWS}
    history = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    mean = lambda scores: sum(scores.values()) / len(scores)  # noqa: E731
    return {
        "command": "python -m ret2.bench.train_tiny " + f"--num-train-epochs {epochs} "
                   f"--per-device-train-batch-size {batch_size} --learning-rate {learning_rate} --seed {seed}",
        "training_args": training_args,
        "train_queries": len(train_set),
        "steps": trainer.state.global_step,
        "train_samples_per_s": trainer.state.log_history[-1]["train_samples_per_second"],
        "train_wall_s": wall,
        "first_logged_loss": history[0],
        "last_logged_loss": history[-1],
        f"hit@{K}": {"before": mean(before), "after": mean(after), "chance": mean(chance)},
        "rows": {label: {"before": before[label], "after": after[label], "chance": chance[label]} for label in chance},
        "machine": machine_info(torch.device("cpu")),
    }


def table(result: dict) -> str:
    lines = [f"| row | hit@{K} before | hit@{K} after | chance |", "|---|---|---|---|"]
    for label, row in [*result["rows"].items(), ("**mean**", result[f"hit@{K}"])]:
        lines.append(f"| {label} | {row['before']:.3f} | {row['after']:.3f} | {row['chance']:.3f} |")
    lines.append(f"\n{result['steps']} steps on {result['train_queries']} training queries, "
                 f"{result['train_samples_per_s']:.0f} samples/s ({result['train_wall_s']:.0f} s), "
                 f"logged loss {result['first_logged_loss']:.2f} -> {result['last_logged_loss']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=Path("bench-train-tiny.json"), help="where to write the report")
    parser.add_argument("--num-train-epochs", type=float, default=4.0, help="training epochs")
    parser.add_argument("--per-device-train-batch-size", type=int, default=32, help="training batch")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the init and the training")
    parser.add_argument("--output-dir", type=Path, default=None, help="keep data and model here (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.output_dir or Path(tmp), args.num_train_epochs, args.per_device_train_batch_size,
                     args.learning_rate, args.seed)
    print(table(result))
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    run_cli(main)
