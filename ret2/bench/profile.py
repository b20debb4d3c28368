"""Where the encode time goes: torch.profiler over a few calls, by op, with the towers / cell split.

    python -m ret2.bench.profile --size b32 --variant ret2 --modality image+text --batch 8
    python -m ret2.bench.profile --cell-only     # the adapters + recurrent cell alone, on precomputed tower states
"""

from __future__ import annotations


import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ret2.commands._common import ArgumentParser, run_cli

from .common import SIZES, build_model, make_inputs

MATRIX_PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::mkldnn_convolution")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="b32", choices=sorted(SIZES), help="backbone size of the random model")
    parser.add_argument("--variant", default="ret2", choices=["ret2", "ret1"], help="ReT-2 or the ReT-1 layout")
    parser.add_argument("--modality", default="image+text", choices=["text", "image", "image+text"],
                        help="what the profiled documents hold")
    parser.add_argument("--batch-size", type=int, default=8, help="documents per encode call")
    parser.add_argument("--calls", type=int, default=3, help="profiled encode calls (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rows", type=int, default=20, help="rows of the profiler table")
    parser.add_argument("--cell-only", action="store_true", help="profile the adapters + cell on cached tower states")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model = build_model(args.size, args.variant, device)
    inputs = make_inputs(model.config, args.batch_size, args.modality, False, SIZES[args.size].text_lengths, device)

    with torch.inference_mode():
        if args.cell_only:
            fn = _cell_call(model, inputs)
        else:
            fn = lambda: model.encode_documents(**inputs)  # noqa: E731
            for name, module in (("towers", model.text_model), ("towers", model.vision_model),
                                 ("cell", model.query_encoder)):  # fmt: skip
                _label(module, f"stage:{name}")
        fn()  # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.calls):
                fn()
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in averages)
    products = sum(e.self_cpu_time_total for e in averages if e.key in MATRIX_PRODUCTS)
    print(f"matrix products: {100 * products / total:.1f}% of the self CPU time")
    for e in averages:
        if e.key.startswith("stage:"):
            print(f"{e.key}: {e.cpu_time_total / 1e3 / args.calls:.1f} ms per call")


def _cell_call(model, inputs):
    """The document encoder (adapters + cell + projection) on tower states computed once."""
    config = model.config
    present = {name: inputs[f"{name}_mask"].bool() for name in ("text", "vision")}
    text = vision = None
    if present["text"].any():
        text = model._tower_states(model.text_model, config.text_layer_ids, present["text"],
                                   input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])  # fmt: skip
    if "pixel_values" in inputs:
        vision = model._tower_states(model.vision_model, config.vision_layer_ids, present["vision"],
                                     pixel_values=inputs["pixel_values"])  # fmt: skip
    padding = inputs["attention_mask"].bool() | ~present["text"][:, None]
    encoder = model.document_encoder or model.query_encoder
    masks = inputs["text_mask"].float(), inputs["vision_mask"].float()
    return lambda: encoder(text, padding, masks[0], vision, masks[1])


def _label(module: torch.nn.Module, name: str) -> None:
    """Record every call of `module` as a profiler range named `name`."""
    ranges = []
    module.register_forward_pre_hook(lambda m, a: ranges.append(record_function(name).__enter__()))
    module.register_forward_hook(lambda m, a, o: ranges.pop().__exit__(None, None, None))


if __name__ == "__main__":
    run_cli(main)
