"""`ret2-train`: fine-tune ReT-2 with the contrastive loss on M-BEIR or ReT-M2KR training data (Hugging Face Trainer).

    ret2-train --model openai/clip-vit-base-patch32 --data-root /data/M-BEIR \\
        --output-dir runs/ret2 --per-device-train-batch-size 64 --learning-rate 1e-4 --num-train-epochs 1

(from a checkout: `python -m ret2.commands.train ...`; every flag is accepted with dashes or underscores.)

With `--data_root` alone it trains on M-BEIR's `query/union_train/mbeir_union_up_train.jsonl` against
`cand_pool/global/mbeir_union_train_cand_pool.jsonl`, with the instructions of `instructions/query_instructions.tsv`
when the root has it. `--model` is a ReT-2 folder or Hub id (continue training), a CLIP or SigLIP
checkpoint (a new ReT-2 on its towers), or `tiny` (a small random model over the words of the training data, for
tests and demos). Every TrainingArguments flag applies (`--output-dir`, `--bf16`, `--gradient_checkpointing`,
`--resume_from_checkpoint DIR`, `--eval_strategy steps`, ...; `--help-training` lists them all). The same command runs
under `torchrun --nproc_per_node N -m ret2.commands.train ...` and `accelerate launch -m ret2.commands.train ...`.

`--recipe ret2-mbeir` (`ret2-mbeir-frozen`, `ret2-m2kr`, `ret2-m2kr-frozen`) trains as the paper did, each published
setting set and every other one a marked package default (`--list-recipes` shows them with their sources); flags
given beside it override it.

Checkpoints and the output folder load with `AutoModel.from_pretrained(folder, trust_remote_code=True)` and
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ret2.commands._common import TRACEBACK_FLAG, HelpFormatter, command_name, normalize_flags, run_cli
from ret2.training.arguments import DataArguments, ModelArguments, RecipeArguments

if TYPE_CHECKING:
    from transformers import HfArgumentParser

    from ret2.training.trainer import ContrastiveTrainer

HELP_TRAINING = "--help-training"
LIST_RECIPES = "--list-recipes"


def build_parser(training: bool = True) -> HfArgumentParser:
    """The parser of ModelArguments, DataArguments and (with `training`) transformers' TrainingArguments, which
    loads torch; `--help` shows the parser without it."""
    from transformers import HfArgumentParser

    classes: list = [ModelArguments, DataArguments, RecipeArguments]
    if training:
        from transformers import TrainingArguments

        classes.append(TrainingArguments)
    parser = HfArgumentParser(
        classes, prog=command_name(), description=__doc__, formatter_class=HelpFormatter,
        epilog=None if training else f"Every transformers TrainingArguments flag applies too: {HELP_TRAINING} lists them.",
    )  # fmt: skip
    parser.add_argument(TRACEBACK_FLAG, action="store_true", help="on an error, show the full traceback")
    parser.add_argument(HELP_TRAINING, action="store_true", help="show the help with every TrainingArguments flag")
    parser.add_argument(LIST_RECIPES, action="store_true", help="show each --recipe: its settings and their sources")
    return parser


def _last_value(argv: list[str], flag: str) -> str | None:
    """The value of the last `flag VALUE` / `flag=VALUE` in (dashed) `argv`, or None."""
    value = None
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(flag + "="):
            value = token.split("=", 1)[1]
    return value


def expand_recipe(argv: list[str]) -> list[str]:
    """`argv` (dashed) with the flags of its `--recipe` put first, less those `argv` gives itself (argparse keeps a
    flag's last value, so the run's own win either way)."""
    name = _last_value(argv, "--recipe")
    if name is None:
        return argv
    from ret2.training.recipes import get_recipe

    recipe = get_recipe(name)
    given = {token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")}
    recipe.check_needs(given)
    return normalize_flags(recipe.argv(_last_value(argv, "--data-root"), given)) + argv


def run(argv: list[str] | None = None) -> ContrastiveTrainer:
    """Parse the arguments (see the module docstring and `--help`) and `ret2.training.train.train`."""
    argv = normalize_flags(sys.argv[1:] if argv is None else argv)
    if HELP_TRAINING in argv:
        build_parser().print_help()
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        build_parser(training=False).parse_args(argv)  # prints the help and exits, without loading torch
    if LIST_RECIPES in argv:
        from ret2.training.recipes import describe_recipes

        print(describe_recipes(), end="")
        raise SystemExit(0)
    argv = expand_recipe(argv)
    import torch

    from ret2.training.train import train

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        # Without this (or --use_cpu), accelerate leaves CPU processes undistributed: each trains its own model.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    model_args, data_args, recipe_args, training_args, *_ = build_parser().parse_args_into_dataclasses(args=argv)
    return train(model_args, data_args, training_args, recipe_args=recipe_args)


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-train`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
