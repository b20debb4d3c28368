"""ReT-2 in MTEB v2 and its image benchmark MIEB (`pip install -e ".[mteb]"`): an encoder mteb can evaluate, its
`ModelMeta`, and registration so that `mteb.get_model` finds a folder or Hub id.

    import mteb
    from ret2.mteb import register

    register("runs/demo/seed-42/ret2-model")              # a saved folder or a Hub id
    model = mteb.get_model("runs/demo/seed-42/ret2-model")
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["CIRRIT2IRetrieval"]))

`Ret2Encoder` follows UniIR's protocol, as `ret2-eval-mbeir` does: queries go through the query encoder with the
task's instruction in front of their text (the `prompt["query"]` of MIEB's M-BEIR and M2KR tasks; mteb's default
instruction for a task that has none), documents through the document encoder with no instruction, and every text
through UniIR's `format_string`. Every modality of a batch reaches the model: mteb's batches are dicts such as
`{"text": [...], "image": [PIL images]}`, and each sample becomes a `(text, image)` pair of `Ret2Model.encode`.

This module imports mteb; nothing else in the package imports it (the remote code never does).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.types import PromptType

from .data.mbeir import format_string
from .model import DTYPE_NAMES, default_device, load_model_and_processor

_SIDES = {PromptType.query: "query", PromptType.document: "document", None: "query"}


class Ret2Encoder(AbsEncoder):
    """A saved ReT-2 model (folder or Hub id) as an mteb encoder; also the `loader` of its `ModelMeta`.

    Args:
        model_name: the folder or Hub id (loaded with `trust_remote_code`).
        revision: the Hub revision (None: the default branch; ignored for a folder).
        device: where to encode (default: CUDA when available, else CPU).
        dtype: "float32", "bfloat16" or "float16".
        prompts: query instructions by mteb task name, used instead of the task's own (e.g. UniIR's prompt_1 where a
            MIEB task carries another wording: docs/mteb.md).
    """

    def __init__(
        self, model_name: str, revision: str | None = None, device: str | None = None, dtype: str = "float32",
        prompts: dict[str, str] | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPE_NAMES)}")
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)} (valid: revision, device, dtype, prompts)")
        self.prompts_dict = prompts  # mteb's AbsEncoder looks a task's name up here before the task's own prompt
        device = device or default_device()
        hub_revision = None if os.path.isdir(model_name) else revision
        self.model, self.processor = load_model_and_processor(model_name, device, dtype, hub_revision)
        if self.model.config.pooling == "none":
            raise ValueError(f"{model_name} is a multi-vector model (pooling='none'); mteb's dense retrieval needs "
                             "one vector per input")  # fmt: skip
        self.mteb_model_meta = ret2_model_meta(model_name, revision)

    def encode(
        self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:  # fmt: skip
        """Encode mteb's batches (dicts of "text" and / or "image" lists): queries (and inputs of symmetric tasks,
        `prompt_type=None`) with the query encoder and the task's instruction, documents with the document encoder."""
        kind = _SIDES[prompt_type]
        instruction = self.get_task_instruction(task_metadata, prompt_type) if kind == "query" else ""
        samples = []
        for batch in inputs:
            texts, images = batch.get("text"), batch.get("image")
            for i in range(len(texts if texts is not None else images)):
                text = f"{instruction} {texts[i] if texts is not None else ''}"
                samples.append((format_string(text) or None, images[i] if images is not None else None))
        return self.model.encode(samples, kind=kind, processor=self.processor, batch_size=kwargs.get("batch_size", 32),
                                 show_progress_bar=kwargs.get("show_progress_bar"))  # fmt: skip


def ret2_model_meta(name_or_path: str, revision: str | None = None, **fields: Any) -> ModelMeta:
    """The `ModelMeta` of a saved ReT-2 folder or Hub id: loaded by `Ret2Encoder`, text and image modalities,
    cosine similarity, instructions used. The embedding size and the token limit come from the folder's
    `config.json` when it is local; `fields` override any field (name, license, training_datasets, ...)."""
    config = {}
    if os.path.isfile(os.path.join(name_or_path, "config.json")):
        with open(os.path.join(name_or_path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    meta = {
        "loader": Ret2Encoder, "name": name_or_path, "revision": revision, "release_date": None, "languages": None,
        "n_parameters": None, "memory_usage_mb": None, "max_tokens": config.get("text_config", {}).get(
            "max_position_embeddings"), "embed_dim": config.get("embedding_dim"), "license": None,
        "open_weights": True, "public_training_code": None, "public_training_data": None,
        "framework": ["PyTorch"], "similarity_fn_name": "cosine", "use_instructions": True, "training_datasets": None,
        "modalities": ["image", "text"], "model_type": ["dense"],
    }  # fmt: skip
    return ModelMeta(**{**meta, **fields})


def register(name_or_path: str | os.PathLike, revision: str | None = None, **fields: Any) -> ModelMeta:
    """Add the `ModelMeta` of a ReT-2 folder or Hub id to mteb's model registry (for this process), so that
    `mteb.get_model(name_or_path)` loads it with `Ret2Encoder`. A Hub id needs no registration to be found by mteb,
    but mteb then loads it through sentence-transformers (the folder's `sentence_bert_config.json` declares its
    modalities); registered, it gets the instructions and the text formatting of UniIR's protocol."""
    from mteb.models.model_implementations import MODEL_REGISTRY

    meta = ret2_model_meta(os.fspath(name_or_path), revision, **fields)
    MODEL_REGISTRY[meta.name] = meta
    return meta


__all__ = ["Ret2Encoder", "register", "ret2_model_meta"]
