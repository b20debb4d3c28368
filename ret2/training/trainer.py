"""`ContrastiveTrainer`: the Hugging Face Trainer with ReT-2's contrastive loss."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset
from transformers import EvalPrediction, Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .collator import model_inputs
from .loss import ContrastiveLoss, in_batch_recall_at_1
from .lora import LORA_STATE_NAME, load_trainable_state_dict, merged_state_dict, trainable_state_dict

logger = logging.getLogger(__name__)

TRAINABLE_NAME = "trainable_parameters.json"  # in each checkpoint: {name: shape} of what trained, checked on resume


def _describe(names: set[str]) -> str:
    """Parameter names grouped by top-level module (LoRA adapters apart), e.g. "text_model (36 tensors)"."""
    groups = Counter()
    for name in names:
        groups[name.split(".")[0] + (" LoRA adapters" if ".lora_" in name else "")] += 1
    return ", ".join(f"{group} ({count} tensors)" for group, count in sorted(groups.items())) or "none"


def trainable_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """{name: shape} of the trainable parameters, named as in the plain model (without peft's prefix)."""
    return {name.removeprefix("base_model.model."): list(p.shape)
            for name, p in model.named_parameters() if p.requires_grad}  # fmt: skip


def in_batch_recall(prediction: EvalPrediction) -> dict[str, float]:
    """The evaluation's `recall@1`: the mean over evaluated queries of their global batch's in-batch recall@1 (what
    `ContrastiveTrainer.prediction_step` returns as predictions)."""
    return {"recall@1": float(np.mean(prediction.predictions))}

class _SetEpoch(TrainerCallback):
    """Tells a map-style training set the epoch it serves: its draws (positives, negatives, instructions) depend on
    it. The epoch is read from the state, which a resumed run restores. (accelerate gives `set_epoch` to the sampler
    of a map-style set, and to the set itself only when it is a stream, whose sampler has none.)"""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch") and not isinstance(dataset, IterableDataset):
            dataset.set_epoch(int(state.epoch or 0))


class _RecordTrainable(TrainerCallback):
    """Writes `TRAINABLE_NAME` (the trained parameters and their shapes) into each checkpoint the Trainer saves."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            with open(os.path.join(folder, TRAINABLE_NAME), "w", encoding="utf-8") as f:
                json.dump(trainable_shapes(self.trainer.model), f, indent=0)


class ContrastiveTrainer(Trainer):
    """Trainer for ReT-2 on batches from `ContrastiveCollator`.

    One step encodes queries, positives and hard negatives in a single `model(...)` call (the collator stacks the
    hard negatives under the documents; a single forward keeps DDP's gradient hooks right), then applies
    `ContrastiveLoss` with the model's `logit_scale`. Evaluation reports `eval_loss` and `eval_recall@1`, the in-batch
    recall@1 over global batches (the same under any number of processes, for a given global batch size), through
    `prediction_step` and `compute_metrics` (default `in_batch_recall`). Only the Trainer's public hooks are
    overridden, and one private one that LoRA resuming needs (`_load_from_checkpoint`, see there).

    A peft LoRA model (`ret2.training.lora.apply_lora`) is saved as the plain model with its adapters merged, loadable
    with `AutoModel`, plus the unmerged trainable state, from which `resume_from_checkpoint` restarts.

    Every checkpoint records its trainable parameters and their shapes (`trainable_parameters.json`); resuming with
    other freeze / LoRA settings raises a ValueError saying what differs (not PyTorch's optimizer-group mismatch).

    Args:
        loss: the loss (default `ContrastiveLoss()`); other arguments are the Trainer's. `args.remove_unused_columns`
            must be False: the collator builds its tensors from fields the model does not take.
    """

    def __init__(self, *args, loss: ContrastiveLoss | None = None, **kwargs):
        kwargs.setdefault("compute_metrics", in_batch_recall)
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError("ContrastiveTrainer needs TrainingArguments(remove_unused_columns=False)")
        if isinstance(self.model, PeftModel) and self.args.load_best_model_at_end:
            raise ValueError("load_best_model_at_end is not supported with LoRA: load the best checkpoint's folder")
        self.loss = loss if loss is not None else ContrastiveLoss()
        self.truncated_texts = 0  # training texts cut to the token limit since this process started training
        self.add_callback(_SetEpoch(self))
        self.add_callback(_RecordTrainable(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch_size = len(inputs["doc_ids"])  # the doc_ inputs hold the positives, then the hard negatives
        if model.training and "truncated_texts" in inputs:
            self.truncated_texts += int(inputs["truncated_texts"])
        outputs = model(**model_inputs(inputs))
        doc_embeds, negative_embeds = outputs.doc_embeds[:batch_size], outputs.doc_embeds[batch_size:]
        loss = self.loss(
            outputs.query_embeds,
            doc_embeds,
            outputs.logit_scale,
            doc_ids=inputs["doc_ids"],
            neg_doc_embeds=negative_embeds if "neg_doc_ids" in inputs else None,
            neg_doc_ids=inputs.get("neg_doc_ids"),
            positive_ids=inputs.get("positive_ids"),
        )
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """The Trainer's log, with `truncated_texts` (the running count of training texts cut to the token limit)
        beside the training loss: a truncation is never silent."""
        if "loss" in logs:
            logs["truncated_texts"] = self.truncated_texts
        super().log(logs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss, and as predictions each query's global-batch in-batch recall@1 (B,), with the doc ids as labels
        (`in_batch_recall` averages them into `eval_recall@1`)."""
        inputs = {name: value.to(self.args.device) for name, value in inputs.items()}
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        batch_size = len(inputs["doc_ids"])
        recall = in_batch_recall_at_1(outputs.query_embeds, outputs.doc_embeds[:batch_size], inputs["doc_ids"])
        return loss.detach(), recall.expand(batch_size), inputs["doc_ids"]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """A LoRA run saves the plain model with its adapters merged, the unmerged trainable state beside it
        (`LORA_STATE_NAME`), the processor and the training arguments; other runs save as the Trainer does."""
        if not isinstance(self.model, PeftModel):
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.model.get_base_model().save_pretrained(output_dir, state_dict=merged_state_dict(self.model))
        save_file(trainable_state_dict(self.model), os.path.join(output_dir, LORA_STATE_NAME))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; a checkpoint to resume from must have trained the parameters this run trains (a
        ValueError saying what differs, instead of PyTorch's optimizer-group mismatch)."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, (str, os.PathLike)):
            self._check_trainable(str(checkpoint))
        result = super().train(resume_from_checkpoint, *args, **kwargs)
        if self.truncated_texts:
            logger.warning("%d training texts (queries, positives, negatives) were longer than the token limit and "
                           "were truncated (max_length, docs/fine-tuning.md)", self.truncated_texts)  # fmt: skip
        return result

    def _check_trainable(self, checkpoint: str) -> None:
        """ValueError unless this run trains the parameters (names and shapes) the checkpoint's run trained."""
        path = os.path.join(checkpoint, TRAINABLE_NAME)
        if not os.path.isfile(path):  # a checkpoint written before ret2 recorded them: nothing to compare
            return
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        now = trainable_shapes(self.model)
        if saved == now:
            return
        reshaped = sorted(n for n in set(saved) & set(now) if saved[n] != now[n])
        raise ValueError(
            f"cannot resume from {checkpoint}: it trained other parameters than this run (other freeze / LoRA "
            f"settings). Trained only in the checkpoint: {_describe(set(saved) - set(now))}; only in this run: "
            f"{_describe(set(now) - set(saved))}"
            + (f"; other shapes: {reshaped[0]} {saved[reshaped[0]]} -> {now[reshaped[0]]} and {len(reshaped) - 1} more"
               if reshaped else "")
            + ". Resume with the --freeze_text_tower / --freeze_vision_tower / --lora_* flags of the run that wrote it."
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        # The one private hook left: a LoRA checkpoint's model.safetensors holds the merged plain model (what
        # AutoModel loads), which the Trainer would load into the peft model key by key and match nothing; the run
        # restarts from the unmerged trainable state instead. Pinned by tests/ret2/training/test_trainer.py's LoRA resume test.
        model = model if model is not None else self.model
        if not isinstance(model, PeftModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, LORA_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{resume_from_checkpoint} has no {LORA_STATE_NAME}: it is not a checkpoint of a LoRA run")
        load_trainable_state_dict(model, load_file(path))
