"""What each `ret2-train --recipe` costs on the published launch (one node, 4 GPUs), projected from a measured step.

    python -m ret2.bench.recipe_cost                          # from the GPU report's ViT-B/32 bf16 training steps
    python -m ret2.bench.recipe_cost --measure cuda           # measure the step here, at each recipe's batch
    python -m ret2.bench.recipe_cost --measure cpu --batch 8  # measure on the CPU at a reduced batch (scaled)

The step is `ret2.bench.train.TrainingStep`: ViT-B/32, image+text on both sides of every pair, one forward, the
contrastive loss, backward and AdamW, under bf16 autocast; the recipe's towers (frozen or trained). Projected, per
recipe:
- wall time: the recipe's steps (`--stop-at-step`) times the measured step at the recipe's per-GPU batch, each GPU
  stepping on its own share of the global batch (DDP), or, when slower, the time `--cores` CPU cores (default 32, what
  the authors' script asks for) take to decode and preprocess two images per pair (JPEG decode + CLIP preprocessing,
  measured here on one core); the gradient all-reduce (its size is listed) and the gathered logits are left out;
- GPU memory per GPU: fp32 weights + AdamW's two fp32 moments of the trainable parameters + the step's measured peak
  above them (activations, gradients, temporaries).
A step measured at another batch than the recipe's is scaled linearly in the batch (time and peak), which a CPU
measurement at a reduced batch needs. Every pair of the step has images and texts on both sides, more than M-BEIR's
mix of text-only and image sides asks. A projection is unverified until a 4-GPU run is timed.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from ret2.commands._common import ArgumentParser, run_cli
from ret2.training.recipes import GPUS, RECIPES

REPORT = Path(__file__).resolve().parents[2] / "docs" / "bench-gpu-h200.json"


def _setting(recipe, flag: str):
    return next(s.value for s in recipe.settings if s.flag == flag)


def reported_steps(report: Path) -> tuple[dict[str, dict], str]:
    """Train rows of a `ret2-bench` report (ViT-B/32, bf16 autocast, no checkpointing) by towers mode, and its
    device."""
    data = json.loads(report.read_text())
    rows = {row["mode"]: row for row in data["rows"] if row.get("section") == "train" and row.get("size") == "b32"
            and row.get("autocast") == "bf16" and not row.get("checkpointing") and "median_s" in row}  # fmt: skip
    return rows, data["machine"].get("gpu") or data["machine"].get("cpu", "?")


def measured_steps(device_name: str, batch: int | None, repeats: int, size: str = "b32") -> tuple[dict[str, dict], str]:
    """Train rows measured here: each recipe's towers mode at `batch` (default: the recipe's per-GPU batch), on the
    backbone `size` of `ret2.bench.common.SIZES` (the recipes' ViT-B/32 unless a test asks for `tiny`)."""
    import torch

    from .common import machine_info, peak_memory_bytes, time_calls
    from .train import TrainCase, TrainingStep

    device, rows = torch.device(device_name), {}
    for mode in ("frozen", "full"):
        pairs = batch or _setting(next(iter(RECIPES.values())), "per_device_train_batch_size")
        step = TrainingStep(TrainCase(size, mode, pairs, autocast="bf16"), device)
        seconds = sorted(time_calls(step, device, warmup=1, repeats=repeats))
        rows[mode] = {"mode": mode, "batch": pairs, "median_s": seconds[len(seconds) // 2],
                      "peak_mem_mb": peak_memory_bytes(step, device) / 2**20,
                      "trainable_params_m": sum(p.numel() for p in step.params) / 1e6,
                      "total_params_m": sum(p.numel() for p in step.model.parameters()) / 1e6}  # fmt: skip
        del step
    info = machine_info(device)
    return rows, info.get("gpu") or f"{info['cpu']}, {torch.get_num_threads()} threads"


def images_per_second(seconds: float = 3.0, width: int = 500, height: int = 375) -> float:
    """JPEG decode + CLIP ViT-B/32 preprocessing (resize, centre crop 224, normalise) of one image, per second on one
    core: a quality-90 JPEG of `width` x `height` random-textured pixels (M-BEIR's images are mostly about this
    size)."""
    import numpy as np
    from PIL import Image
    try:  # transformers 5.x: the PIL backend by name (the default one needs torchvision)
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    pixels = np.random.default_rng(0).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((width, height), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    data, processor = buffer.getvalue(), CLIPImageProcessor()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        processor(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="np")
        count += 1
    return count / (time.perf_counter() - start)


def project(steps: dict[str, dict], images_per_s: float, cores: int = 32) -> list[dict]:
    """One row per recipe: its step, scaled to the recipe's per-GPU batch, projected over its steps on 4 GPUs fed by
    `cores` CPU cores."""
    out = []
    for recipe in RECIPES.values():
        mode = "frozen" if _setting(recipe, "freeze_vision_tower") else "full"
        row = steps[mode]
        batch, stop = _setting(recipe, "per_device_train_batch_size"), _setting(recipe, "stop_at_step")
        scale = batch / row["batch"]
        step_s = row["median_s"] * scale
        weights_gb = row["total_params_m"] * 1e6 * 4 / 1e9
        adam_gb = row["trainable_params_m"] * 1e6 * 8 / 1e9
        pairs_per_s = GPUS * batch / step_s  # what the GPUs can take
        fed_pairs_per_s = cores * images_per_s / 2  # what the cores can give, two images a pair
        out.append({
            "recipe": recipe.name, "towers": mode, "per_gpu_batch": batch, "global_batch": GPUS * batch,
            "measured_batch": row["batch"], "step_s": step_s, "steps": stop, "gpu_hours": stop * step_s / 3600,
            "hours": stop * GPUS * batch / min(pairs_per_s, fed_pairs_per_s) / 3600, "cores": cores,
            "gpu_gb": weights_gb + adam_gb + row["peak_mem_mb"] * scale * 2**20 / 1e9,
            "allreduce_mb": row["trainable_params_m"] * 4, "pairs_per_s": pairs_per_s,
            "cores_to_feed": 2 * pairs_per_s / images_per_s,
        })  # fmt: skip
    return out


def markdown(rows: list[dict], source: str, images_per_s: float) -> str:
    cores = rows[0]["cores"]
    lines = [
        f"Step measured on: {source}. Data loading: {images_per_s:.0f} images/s on one core of this machine.",
        "",
        "| recipe | towers | batch / GPU (global) | step measured at | s/step | steps | hours, GPU-bound | "
        f"hours with {cores} cores | GPU GB each | grad all-reduce MB/step | cores to feed 4 GPUs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['towers']} | {r['per_gpu_batch']} ({r['global_batch']}) | {r['measured_batch']} | "
            f"{r['step_s']:.3f} | {r['steps']:,} | {r['gpu_hours']:.1f} | {r['hours']:.1f} | {r['gpu_gb']:.1f} | "
            f"{r['allreduce_mb']:.0f} | "
            f"{r['cores_to_feed']:.0f} |"
        )
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--report", type=Path, default=REPORT, help="a ret2-bench report holding ViT-B/32 bf16 train rows")
    parser.add_argument("--measure", default=None, help="measure the step on this device (cpu, cuda) instead")
    parser.add_argument("--batch", type=int, default=None, help="with --measure: pairs per step (default: the recipe's)")
    parser.add_argument("--repeats", type=int, default=3, help="with --measure: timed steps per mode")
    parser.add_argument("--size", default="b32", help="with --measure: the backbone (b32; tiny for a quick check)")
    parser.add_argument("--cores", type=int, default=32, help="CPU cores loading data for the 4 GPUs")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.measure:
        steps, source = measured_steps(args.measure, args.batch, args.repeats, args.size)
    else:
        steps, source = reported_steps(args.report)
        missing = {"frozen", "full"} - set(steps)
        if missing:
            parser.error(f"--report {args.report} has no ViT-B/32 bf16 train row for {sorted(missing)}")
        source = f"{source} ({args.report.name})"
    rate = images_per_second()
    rows = project(steps, rate, args.cores)
    print(markdown(rows, source, rate))
    if args.json:
        args.json.write_text(json.dumps({"source": source, "images_per_s": rate, "rows": rows}, indent=1) + "\n")
    return rows


def main(argv: list[str] | None = None) -> None:
    run_cli(run, argv)


if __name__ == "__main__":
    main()
