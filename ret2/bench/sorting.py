"""What sorting by modality and text length does to encoding a mixed pool (the one batching engine,
`modeling_ret2.encode_samples`, which `Ret2Model.encode`, the evaluation and the index share).

    python -m ret2.bench.sorting                 # ViT-B/32-sized random model, 384 mixed documents, batch 32
    python -m ret2.bench.sorting --quick         # the tiny model, seconds: checks that everything runs

The pool mixes text-only, image-only and image+text documents (a third each, shuffled) with texts of 4 to 60 words,
as M-BEIR's local pools mix them. Rows, at the same batch size and threads:
- `sorted`: one `encode_samples` call over the pool: batches of one modality mix and similar lengths;
- `input order`: one call per run of `batch_size` consecutive documents, the batches the evaluation encoded before it
  went through the engine (every tower runs on every mixed batch, texts padded to the batch's longest).
Both give the same embeddings (the table says how close); each timing is the best of `--repeats` rounds.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch
from transformers import CLIPImageProcessorPil

from modeling_ret2 import Ret2Processor, encode_samples
from ret2.commands._common import ArgumentParser, run_cli
from ret2.tiny import word_tokenizer

from .common import build_model, machine_info
from .encode_raw import CAPTION_WORDS, best_seconds, write_images


def mixed_pool(images: list[Path], seed: int = 0) -> list[tuple[str | None, Path | None]]:
    """(text, image) documents: a third text-only, a third image-only, a third both, texts of 4-60 words, shuffled."""
    rng = random.Random(seed)
    samples = []
    for i, path in enumerate(images):
        text = " ".join(rng.choice(CAPTION_WORDS) for _ in range(rng.randint(4, 60)))
        samples.append([(text, None), (None, path), (text, path)][i % 3])
    rng.shuffle(samples)
    return samples


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model and 48 small documents")
    parser.add_argument("--documents", type=int, default=384, help="documents in the pool")
    parser.add_argument("--batch-size", type=int, default=32, help="items per model call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the model")
    parser.add_argument("--repeats", type=int, default=2, help="timing rounds; the best round counts")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, count, image_size = ("tiny", 48, 32) if args.quick else ("b32", args.documents, 224)
    device = torch.device("cpu")
    model = build_model(size, "ret2", device)
    crop = model.config.vision_config.image_size
    processor = Ret2Processor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}),
        tokenizer=word_tokenizer(CAPTION_WORDS, model_max_length=77),
    )
    with tempfile.TemporaryDirectory() as tmp:
        samples = mixed_pool(write_images(Path(tmp), count, (max(image_size, 320), max(image_size, 240))))
        bs = args.batch_size
        out = {}

        def run(name, batches):
            out[name] = torch.cat([encode_samples(model.encode_documents, processor, batch, device=device,
                                                  batch_size=bs) for batch in batches])  # fmt: skip

        calls = {
            "sorted (one encode_samples call)": lambda: run("sorted", [samples]),
            "input order (consecutive batches)": lambda: run("input", [samples[i : i + bs] for i in range(0, count, bs)]),
        }
        seconds = best_seconds(calls, args.repeats)
    difference = (out["sorted"] - out["input"]).abs().max().item()
    base = seconds["input order (consecutive batches)"]
    info = machine_info(device)
    print(f"model {size}, {count} mixed documents, batch {bs}, {args.threads} model thread(s); {info['cpu']}, "
          f"{info['cpu_cores']} cores, torch {info['torch']}; largest embedding difference {difference:.1e}")  # fmt: skip
    print("| order | docs/s | speed-up |\n|---|---:|---:|")
    rows = [{"order": name, "docs_per_s": count / s, "speedup": base / s} for name, s in seconds.items()]
    for row in rows:
        print(f"| {row['order']} | {row['docs_per_s']:.1f} | {row['speedup']:.2f} |")
    return rows


if __name__ == "__main__":
    run_cli(main)
