"""`ContrastiveTrainer`: the Hugging Face Trainer with ReT-2's contrastive loss."""

from __future__ import annotations

import json
import os
from collections import Counter

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput

from .loss import ContrastiveLoss, in_batch_recall_at_1
from .lora import LORA_STATE_NAME, load_trainable_state_dict, merged_state_dict, trainable_state_dict

TRAINABLE_NAME = "trainable_parameters.json"  # in each checkpoint: {name: shape} of what trained, checked on resume


def _describe(names: set[str]) -> str:
    """Parameter names grouped by top-level module (LoRA adapters apart), e.g. "text_model (36 tensors)"."""
    groups = Counter()
    for name in names:
        groups[name.split(".")[0] + (" LoRA adapters" if ".lora_" in name else "")] += 1
    return ", ".join(f"{group} ({count} tensors)" for group, count in sorted(groups.items())) or "none"

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "text_mask", "vision_mask")


def side_inputs(batch: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The model inputs of one side of a collated batch, without their prefix (`query_`, `doc_`, `neg_doc_`)."""
    return {name: batch[prefix + name] for name in MODEL_INPUTS if prefix + name in batch}


def concat_inputs(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack two processor outputs along the batch: token ids and masks padded to the longer text (padding is masked
    out), and zero pixels for the side without images (its `vision_mask` is 0 there)."""
    out = {}
    for name in dict.fromkeys([*first, *second]):
        a, b = first.get(name), second.get(name)
        if name == "pixel_values" and (a is None or b is None):
            present = a if a is not None else b
            a = a if a is not None else present.new_zeros((len(first["text_mask"]), *present.shape[1:]))
            b = b if b is not None else present.new_zeros((len(second["text_mask"]), *present.shape[1:]))
        elif a is None or b is None:
            raise ValueError(f"{name!r} is in only one of the two inputs to concatenate")
        if name in ("input_ids", "attention_mask"):
            length = max(a.shape[1], b.shape[1])
            a, b = (torch.nn.functional.pad(t, (0, length - t.shape[1])) for t in (a, b))  # (B, L) -> (B, length)
        out[name] = torch.cat([a, b])
    return out


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


class ContrastiveTrainer(Trainer):
    """Trainer for ReT-2 on batches from `ContrastiveCollator`.

    One step encodes queries, positives and hard negatives in a single `model(...)` call (hard negatives are stacked
    under the documents; a single forward keeps DDP's gradient hooks right), then applies `ContrastiveLoss` with the
    model's `logit_scale`. Evaluation reports `eval_loss` and `eval_recall@1`, the in-batch recall@1 over global
    batches (the same under any number of processes, for a given global batch size).

    A peft LoRA model (`ret2.training.lora.apply_lora`) is saved as the plain model with its adapters merged, loadable
    with `AutoModel`, plus the unmerged trainable state, from which `resume_from_checkpoint` restarts.

    Every checkpoint records its trainable parameters and their shapes (`trainable_parameters.json`); resuming with
    other freeze / LoRA settings raises a ValueError saying what differs (not PyTorch's optimizer-group mismatch).

    Args:
        loss: the loss (default `ContrastiveLoss()`); other arguments are the Trainer's. `args.remove_unused_columns`
            must be False: the collator builds its tensors from fields the model does not take.
    """

    def __init__(self, *args, loss: ContrastiveLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError("ContrastiveTrainer needs TrainingArguments(remove_unused_columns=False)")
        if isinstance(self.model, PeftModel) and self.args.load_best_model_at_end:
            raise ValueError("load_best_model_at_end is not supported with LoRA: load the best checkpoint's folder")
        self.loss = loss if loss is not None else ContrastiveLoss()
        self.add_callback(_SetEpoch(self))
        self._recall_sum, self._recall_count = 0.0, 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch_size = len(inputs["doc_ids"])
        docs, negatives = side_inputs(inputs, "doc_"), side_inputs(inputs, "neg_doc_")
        if negatives:
            docs = concat_inputs(docs, negatives)
        queries = side_inputs(inputs, "query_")
        outputs = model(**{f"query_{k}": v for k, v in queries.items()}, **{f"doc_{k}": v for k, v in docs.items()})
        doc_embeds, negative_embeds = outputs.doc_embeds[:batch_size], outputs.doc_embeds[batch_size:]
        loss = self.loss(
            outputs.query_embeds,
            doc_embeds,
            outputs.logit_scale,
            doc_ids=inputs["doc_ids"],
            neg_doc_embeds=negative_embeds if negatives else None,
            neg_doc_ids=inputs.get("neg_doc_ids"),
        )
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        batch_size = len(inputs["doc_ids"])
        recall = in_batch_recall_at_1(outputs.query_embeds, outputs.doc_embeds[:batch_size], inputs["doc_ids"])
        self._recall_sum += recall.item() * batch_size
        self._recall_count += batch_size
        return loss.detach(), None, None

    def evaluation_loop(
        self,
        dataloader: DataLoader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        self._recall_sum, self._recall_count = 0.0, 0
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self._recall_count:
            output.metrics[f"{metric_key_prefix}_recall@1"] = self._recall_sum / self._recall_count
        return output

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not isinstance(self.model, PeftModel):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.model.get_base_model().save_pretrained(output_dir, state_dict=merged_state_dict(self.model))
        save_file(trainable_state_dict(self.model), os.path.join(output_dir, LORA_STATE_NAME))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _trainable(self) -> dict[str, list[int]]:
        """{name: shape} of the trainable parameters, named as in the plain model (without peft's prefix)."""
        return {name.removeprefix("base_model.model."): list(p.shape)
                for name, p in self.model.named_parameters() if p.requires_grad}  # fmt: skip

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            with open(os.path.join(folder, TRAINABLE_NAME), "w", encoding="utf-8") as f:
                json.dump(self._trainable(), f, indent=0)

    def _check_trainable(self, checkpoint: str) -> None:
        """ValueError unless this run trains the parameters (names and shapes) the checkpoint's run trained."""
        path = os.path.join(checkpoint, TRAINABLE_NAME)
        if not os.path.isfile(path):  # a checkpoint written before ret2 recorded them: nothing to compare
            return
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        now = self._trainable()
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
        self._check_trainable(resume_from_checkpoint)
        model = model if model is not None else self.model
        if not isinstance(model, PeftModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, LORA_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{resume_from_checkpoint} has no {LORA_STATE_NAME}: it is not a checkpoint of a LoRA run")
        load_trainable_state_dict(model, load_file(path))
