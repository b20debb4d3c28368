"""Fine-tune ReT-2 with the contrastive loss on M-BEIR or ReT-M2KR training data through the Hugging Face Trainer:
`train(model_args, data_args, training_args)` (the command is `ret2-train`, `ret2.commands.train`).

The arguments are `ret2.training.arguments.ModelArguments` / `DataArguments` and transformers' `TrainingArguments`.
`model_args.model` is a ReT-2 folder or Hub id (continue training), a CLIP or SigLIP checkpoint (a new ReT-2 on its
towers), or `tiny` (a small random model over the words of the training data, for tests and demos). Checkpoints and the
output folder load with `AutoModel.from_pretrained(folder, trust_remote_code=True)` and
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from peft import PeftModel
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    PreTrainedConfig,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.training_args import ParallelMode

from ret2.model import check_model_source
from ret2.options import TRAINING_FORMATS as FORMATS
from ret2.data.mbeir import DEFAULT_INSTRUCTIONS, INSTRUCTIONS, TRAIN_POOL, load_instructions
from configuration_ret2.configuration_ret2 import FIELD_RULES
from modeling_ret2 import Ret2Model, Ret2Processor

from .collator import ContrastiveCollator
from .dataset import (
    ContrastiveDataset, StreamingContrastiveDataset, m2kr_training_sets, mbeir_training_sets,
)  # fmt: skip
from .arguments import DataArguments, ModelArguments, RecipeArguments, data_path
from .lora import apply_lora
from .recipes import get_recipe, record
from .loss import ContrastiveLoss, MatryoshkaLoss
from ret2.tiny import tiny_model_and_processor, words_of

if TYPE_CHECKING:
    from .trainer import ContrastiveTrainer


# Fields a flag of their own sets, and sub-configs, which a `key=value` string cannot spell.
_NOT_OVERRIDABLE = {"freeze_text_tower": "--freeze_text_tower", "freeze_vision_tower": "--freeze_vision_tower",
                    "matryoshka_dims": "--matryoshka_dims"}  # fmt: skip
_OVERRIDABLE = sorted(name for name, rule in FIELD_RULES.items() if rule.kind != "config" and name not in
                      _NOT_OVERRIDABLE)  # fmt: skip
_BOOLS = {"true": True, "false": False}


def _override_value(key: str, text: str) -> object:
    """`text` read as the kind of Ret2Config field `key`, then checked by the field's rule."""
    rule = FIELD_RULES[key]
    value: object = text
    try:
        if rule.optional and text.lower() == "none":
            value = None
        elif rule.kind == "int":
            value = int(text)
        elif rule.kind == "float":
            value = float(text)
        elif rule.kind == "bool":
            value = _BOOLS[text.lower()]
        elif rule.kind == "layer_ids":
            value = json.loads(text)
    except (ValueError, KeyError):
        kinds = {"int": "an int", "float": "a number", "bool": "true or false", "layer_ids": "a list like [1,3]"}
        raise ValueError(f"config override {key}={text!r} must be {kinds[rule.kind]}") from None
    return rule.apply(key, value)


def parse_config_overrides(text: str) -> dict[str, object]:
    """`"gated=false,text_layer_ids=[1,3],hidden_size=64"` -> `{"gated": False, "text_layer_ids": [1, 3], ...}`:
    each value typed and checked by its Ret2Config field rule (`FIELD_RULES`); an unknown or repeated key, a
    malformed item or a bad value raises ValueError naming it and the valid keys."""
    overrides: dict[str, object] = {}
    if not text.strip():
        return overrides
    for item in re.split(r",(?![^\[]*\])", text):  # commas outside [...]
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"config override {item!r} is not key=value (in {text!r})")
        if key in _NOT_OVERRIDABLE:
            raise ValueError(f"config override {key!r}: set it with {_NOT_OVERRIDABLE[key]}")
        if key not in _OVERRIDABLE:
            raise ValueError(f"config override {key!r} is not a Ret2Config field; valid: {_OVERRIDABLE}")
        if key in overrides:
            raise ValueError(f"config override {key!r} is given twice in {text!r}")
        overrides[key] = _override_value(key, value)
    return overrides


def build_datasets(
    args: DataArguments, seed: int
) -> tuple[ContrastiveDataset | StreamingContrastiveDataset, ContrastiveDataset | None]:
    """(train, eval) datasets from the data arguments."""
    if args.format not in FORMATS:
        raise ValueError(f"--format {args.format!r} is not one of {list(FORMATS)}")
    root = Path(args.data_root) if args.data_root else None
    common = dict(eval_fraction=args.eval_fraction, num_hard_negatives=args.num_hard_negatives, seed=seed,
                  num_positives=args.num_positives)  # fmt: skip
    if args.format == "m2kr":
        queries, passages = data_path(root, args.m2kr_queries), data_path(root, args.m2kr_passages)
        if queries is None or passages is None:
            raise ValueError("--format m2kr needs --m2kr_queries and --m2kr_passages")
        if args.streaming:
            raise ValueError("--streaming reads M-BEIR query files only; ReT-M2KR files are read whole")
        return m2kr_training_sets(queries, passages, data_path(root, args.eval_queries), **common)
    queries, pool = args.query_file(), data_path(root, args.train_pool, TRAIN_POOL)
    if queries is None or pool is None:
        raise ValueError("give --data_root, or both --train_queries and --train_pool")
    instructions = data_path(root, args.instructions, INSTRUCTIONS)
    if args.instructions is None and (instructions is None or not instructions.is_file()):
        instructions = None
    return mbeir_training_sets(
        queries,
        pool,
        load_instructions(instructions) if instructions is not None else DEFAULT_INSTRUCTIONS,
        eval_queries=data_path(root, args.eval_queries),
        streaming=args.streaming,
        cache_dir=args.dataset_cache_dir,
        shuffle_buffer=args.shuffle_buffer if args.streaming else 0,
        **common,
    )


def load_training_model(
    args: ModelArguments, train_set: ContrastiveDataset | StreamingContrastiveDataset, seed: int
) -> tuple[Ret2Model | PeftModel, Ret2Processor]:
    """The model to train (a peft model with `--lora_r`) and its processor."""
    overrides = parse_config_overrides(args.config_overrides)
    config_kwargs = dict(freeze_text_tower=args.freeze_text_tower, freeze_vision_tower=args.freeze_vision_tower)
    name = args.model
    is_ret2 = name != "tiny" and (
        PreTrainedConfig.get_config_dict(name)[0].get("model_type") == Ret2Model.config_class.model_type
    )
    if is_ret2:
        saved = Ret2Model.config_class.from_pretrained(name)
        differ = {key: (getattr(saved, key), value) for key, value in overrides.items() if getattr(saved, key) != value}
        if differ:
            raise ValueError(
                f"--config_overrides cannot change the trained ReT-2 model {name!r}: "
                + ", ".join(f"{key} is {old!r} there, not {new!r}" for key, (old, new) in differ.items())
            )
    else:
        config_kwargs |= overrides
    if name == "tiny":
        if not isinstance(train_set, ContrastiveDataset):
            raise ValueError("--model tiny builds its vocabulary from the data: it needs no --streaming")
        model, processor = tiny_model_and_processor(words_of(list(train_set.texts())), seed=seed, **config_kwargs)
    elif is_ret2:
        processor = Ret2Processor.from_pretrained(name, trust_remote_code=True)
        model = Ret2Model.from_pretrained(name, **config_kwargs)
    else:
        model = Ret2Model.from_backbone(name, **config_kwargs)
        processor = Ret2Processor(
            image_processor=AutoImageProcessor.from_pretrained(name), tokenizer=AutoTokenizer.from_pretrained(name)
        )
    if args.matryoshka_dims:
        model.config.matryoshka_dims = args.matryoshka_dims  # checked against embedding_dim below
        model.config._validate()
    if args.lora_r:
        model = apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    return model, processor


class StopAtStep(TrainerCallback):
    """Ends training, with a save, once `step` optimizer steps are done, whatever length the learning-rate schedule
    was planned for (`--stop_at_step`)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


def _record_recipe(recipe_args: RecipeArguments, *arguments) -> None:
    """recipe.json in the output folder: the recipe's settings and the values this run used."""
    recipe = get_recipe(recipe_args.recipe)
    used = {}
    for setting in recipe.settings:
        flag = setting.flag
        used[flag] = next(getattr(args, flag) for args in (*arguments, recipe_args) if hasattr(args, flag))
    for flag in recipe.needs:
        used[flag] = next(getattr(args, flag) for args in arguments if hasattr(args, flag))
    record(recipe, used, arguments[-1].output_dir)


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    datasets: tuple[ContrastiveDataset, ContrastiveDataset | None] | None = None,
    callbacks: list[TrainerCallback] | None = None,
    recipe_args: RecipeArguments | None = None,
) -> ContrastiveTrainer:
    """Train, save the final model and processor to `training_args.output_dir`, evaluate when there is an
    evaluation set. Returns the trainer (its `model` is the trained model).

    `datasets`: (train, eval) built elsewhere (e.g. `ret2.training.pairs`) instead of from the data arguments, of
    which only `image_root` / `data_root`, `num_hard_negatives` then apply. `callbacks`: more Trainer callbacks
    (progress reports, ...). `recipe_args`: the recipe the arguments were filled from (recorded in the output
    folder) and `stop_at_step`."""
    recipe_args = recipe_args or RecipeArguments()
    if recipe_args.recipe is not None:
        recipe = get_recipe(recipe_args.recipe)
        recipe.check_needs({flag for flag in recipe.needs if getattr(data_args, flag) is not None})
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and training_args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise ValueError(f"launched as {os.environ['WORLD_SIZE']} processes, but the Trainer is not distributed")
    training_args.remove_unused_columns = False  # the collator reads fields the model does not take
    if training_args.ddp_find_unused_parameters is None:
        # A tower sits out a step when no local sample has its modality (the model skips it).
        training_args.ddp_find_unused_parameters = True
    image_root = data_args.image_root or data_args.data_root
    if image_root is None:
        raise ValueError("give --data-root or --image-root: image paths in the data are relative to it")

    if model_args.model != "tiny":
        check_model_source(model_args.model)  # a mistyped folder fails now, not after the data is read
    set_seed(training_args.seed)
    with training_args.main_process_first(desc="reading the training data"):
        train_set, eval_set = datasets if datasets is not None else build_datasets(data_args, training_args.seed)
    model, processor = load_training_model(model_args, train_set, training_args.seed)
    from .trainer import ContrastiveTrainer  # here: transformers' Trainer imports datasets (--help stays light)

    dims = model.config.matryoshka_dims  # the flag's, or those of the ReT-2 folder this run continues
    loss = MatryoshkaLoss(ContrastiveLoss(), dims) if dims else None

    if recipe_args.recipe is not None and training_args.process_index == 0:
        _record_recipe(recipe_args, model_args, data_args, training_args)
    if recipe_args.stop_at_step is not None:
        callbacks = [*(callbacks or []), StopAtStep(recipe_args.stop_at_step)]
    trainer = ContrastiveTrainer(
        model=model,
        args=training_args,
        data_collator=ContrastiveCollator(processor, image_root, data_args.num_hard_negatives, model_args.max_length,
                                          data_args.image_orientation, data_args.num_positives),  # fmt: skip
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=processor,
        callbacks=callbacks,
        loss=loss,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if eval_set is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if model_args.lora_r and model_args.merge_lora:
        trainer.model = trainer.model.merge_and_unload()
    trainer.save_model()
    trainer.save_state()
    return trainer
