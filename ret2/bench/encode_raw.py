"""The one-call encode from image files against encode_documents on preprocessed tensors; bf16 against fp32.

    python -m ret2.bench.encode_raw                      # ViT-B/32-sized random model, 256 JPEG files, batch 32
    python -m ret2.bench.encode_raw --quick              # the tiny model, seconds: checks that everything runs

Rows, all at the same batch size and with the model on `--threads` threads (default 1):
- `tensors`: `encode_documents` on pixel values preprocessed beforehand (the model's cost alone);
- `files, N workers`: `model.encode(paths, kind="document", num_workers=N)`: read, decode, preprocess and encode, the
  DataLoader workers preparing the next batches while the model encodes the current one;
- `fp32` / `bf16` from `from_pretrained(dtype=...)`: `encode_documents` on preprocessed image+text documents.
Each timing is the best of `--repeats` runs (other processes only ever add time).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModel, CLIPImageProcessorPil

from modeling_ret2 import Ret2Processor
from ret2.commands._common import ArgumentParser, run_cli
from ret2.tiny import word_tokenizer

from .common import build_model, machine_info

CAPTION_WORDS = "a photo of red green blue small big dog cat car tree house on the left right".split()


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """`count` random-noise JPEGs (noise compresses badly: the decode cost of a real photo of that size or more)."""
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(count):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels.numpy()).save(path, quality=90)
        paths.append(path)
    return paths


def best_seconds(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The best of `repeats` timed runs of each call, after one warm-up run each. The calls take turns, so a change
    in the machine's load (it is shared) hits them all alike rather than whichever happens to run then."""
    seconds = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_:
                seconds[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in seconds.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model and 64 small images")
    parser.add_argument("--images", type=int, default=256, help="image files to encode")
    parser.add_argument("--batch-size", type=int, default=32, help="items per model call")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader workers to try")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the model")
    parser.add_argument("--repeats", type=int, default=2, help="timing rounds; the best round counts")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, count, image_size = ("tiny", 64, 32) if args.quick else ("b32", args.images, 224)

    model = build_model(size, "ret2", torch.device("cpu"))
    crop = model.config.vision_config.image_size
    processor = Ret2Processor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}),
        tokenizer=word_tokenizer(CAPTION_WORDS, model_max_length=77),
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), count, (max(image_size, 320), max(image_size, 240)))
        pixels = processor(images=[Image.open(p) for p in paths], return_tensors="pt")
        batches = [{k: v[i : i + args.batch_size] for k, v in pixels.items()} for i in range(0, count, args.batch_size)]

        def tensors():
            with torch.inference_mode():
                for batch in batches:
                    model.encode_documents(**batch)

        calls = {"tensors (encode_documents, preprocessed)": tensors}
        for workers in args.workers:
            calls[f"files (encode, {workers} loader workers)"] = lambda workers=workers: model.encode(
                paths, kind="document", processor=processor, batch_size=args.batch_size, num_workers=workers,
                show_progress_bar=False,
            )  # fmt: skip
        seconds = best_seconds(calls, args.repeats)
        tensor_s = seconds["tensors (encode_documents, preprocessed)"]
        rows += [{"path": name, "docs_per_s": count / s, "ratio": tensor_s / s} for name, s in seconds.items()]

        folder = Path(tmp) / "model"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        captions = [" ".join(CAPTION_WORDS[(i * 7 + j) % len(CAPTION_WORDS)] for j in range(12)) for i in range(count)]
        documents = processor(text=captions, images=[Image.open(p) for p in paths], return_tensors="pt")
        doc_batches = [{k: v[i : i + args.batch_size] for k, v in documents.items()} for i in range(0, count, args.batch_size)]
        calls = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            loaded = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=dtype).eval()

            def run(loaded=loaded):
                with torch.inference_mode():
                    for batch in doc_batches:
                        loaded.encode_documents(**batch)

            calls[f"{name} image+text documents (from_pretrained(dtype=...))"] = run
        seconds = best_seconds(calls, args.repeats)
        fp32_s = next(iter(seconds.values()))
        rows += [{"path": name, "docs_per_s": count / s, "ratio": fp32_s / s} for name, s in seconds.items()]

    info = machine_info(torch.device("cpu"))
    print(f"model {size}, {count} images, batch {args.batch_size}, {args.threads} model thread(s); {info['cpu']}, "
          f"{info['cpu_cores']} cores, torch {info['torch']}")  # fmt: skip
    print("| path | docs/s | ratio |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['path']} | {row['docs_per_s']:.1f} | {row['ratio']:.2f} |")
    return rows


if __name__ == "__main__":
    run_cli(main)
