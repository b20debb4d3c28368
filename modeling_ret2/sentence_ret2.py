"""sentence-transformers support: a ReT-2 folder loads with `SentenceTransformer(folder, trust_remote_code=True)`.

`Ret2PreTrainedModel.save_pretrained` writes `modules.json` (one module, this file's `Ret2SentenceTransformersModule`,
saved in the folder's root), `config_sentence_transformers.json` (cosine similarity, empty "query" / "document"
prompts) and `sentence_bert_config.json` (the module's modalities, where MTEB reads them: without it, mteb scores a
Hub model on text only and drops its images) beside the model; `save_pretrained` also copies this file, as a relative import of the modeling file.

The module follows sentence-transformers' module protocol (`load`, `preprocess`, `forward`, `save`, `modalities`)
without importing sentence-transformers, so this file travels with every model and costs nothing to users of
`AutoModel`. `encode_query` / `encode_document` pass `task="query"` / `"document"`, which picks the model's query or
document encoder (the same one when `config.share_encoder`).
"""

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoProcessor

from .processing_ret2 import load_image, split_input

TASKS = ("query", "document")


def write_sentence_transformers_files(save_directory: "str | os.PathLike") -> None:
    """Write `modules.json`, `config_sentence_transformers.json` and `sentence_bert_config.json` into a ReT-2 folder."""
    module = {"idx": 0, "name": "0", "path": "", "type": "sentence_ret2.Ret2SentenceTransformersModule"}
    st_config = {
        "model_type": "SentenceTransformer",
        "prompts": {"query": "", "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    # `Ret2SentenceTransformersModule.modalities` in the layout of sentence-transformers' own modules (a tuple as
    # "image,text"); the module itself does not read this file
    output = {"method": "forward", "method_output_name": "sentence_embedding"}
    modalities = {"modality_config": {m: output for m in ("text", "image", "image,text", "message")},
                  "module_output_name": "sentence_embedding"}  # fmt: skip
    files = (("modules.json", [module]), ("config_sentence_transformers.json", st_config),
             ("sentence_bert_config.json", modalities))  # fmt: skip
    for name, content in files:
        (Path(save_directory) / name).write_text(json.dumps(content, indent=2) + "\n")


class Ret2SentenceTransformersModule(nn.Module):
    """The whole ReT-2 model (towers, cell, projection) as one sentence-transformers input module.

    Inputs, per sample: a `str` (text, or an image path when it names an existing image file, as sentence-transformers
    decides), a `pathlib.Path`, a PIL image or an array (an image), or a `{"text": ..., "image": ...}` dict / a
    `(text, image)` tuple (both; either may be None). A prompt is prepended to the text; a sample without text gets the
    prompt as its text (UniIR's instructions work this way).
    """

    save_in_root = True
    forward_kwargs = {"task"}

    def __init__(self, model: nn.Module, processor):
        super().__init__()
        if model.config.pooling == "none":
            raise ValueError(
                "This ReT-2 folder is a multi-vector model (pooling='none': K token embeddings per input, scored by "
                "late interaction); a SentenceTransformer returns one vector per input. Use the model directly: "
                "AutoModel.from_pretrained(path, trust_remote_code=True).encode(inputs, kind='query' or 'document') "
                "and model.similarity(queries, documents)."
            )
        self.model = model
        self.processor = processor

    @property
    def modalities(self) -> list:
        # "message" lets a batch mix modalities (sentence-transformers calls such a batch a message batch).
        return ["text", "image", ("image", "text"), "message"]

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict | None = None,
        processor_kwargs: dict | None = None,
        config_kwargs: dict | None = None,
        **kwargs,
    ) -> "Ret2SentenceTransformersModule":
        """Load the model and processor with `AutoModel` / `AutoProcessor`; `model_kwargs` (e.g. `{"dtype":
        torch.bfloat16}`) go to `AutoModel.from_pretrained`."""
        hub = dict(token=token, cache_dir=cache_folder, revision=revision, local_files_only=local_files_only)
        if subfolder:
            hub["subfolder"] = subfolder
        model = AutoModel.from_pretrained(
            model_name_or_path, trust_remote_code=trust_remote_code, **hub, **(config_kwargs or {}),
            **(model_kwargs or {}),
        )  # fmt: skip
        processor = AutoProcessor.from_pretrained(
            model_name_or_path, trust_remote_code=trust_remote_code, **hub, **(processor_kwargs or {})
        )
        return cls(model.eval(), processor)

    def preprocess(self, inputs: list, prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        samples = [split_input(item, detect_image_paths=True) for item in inputs]
        if prompt:
            samples = [(prompt + (text or ""), image) for text, image in samples]
        texts, images = zip(*samples)
        images = [None if image is None else load_image(image) for image in images]
        return dict(self.processor(text=list(texts), images=images, return_tensors="pt"))

    def forward(self, features: dict[str, torch.Tensor], task: str | None = None) -> dict[str, torch.Tensor]:
        if task is not None and task not in TASKS:
            raise ValueError(f"task={task!r} is not a ReT-2 task; valid: {list(TASKS)}.")
        if task is None and not self.model.config.share_encoder:
            raise ValueError(
                "This model has separate query and document encoders: call encode_query or encode_document (or pass "
                f"task= one of {list(TASKS)}), not encode."
            )
        keys = ("input_ids", "attention_mask", "pixel_values", "text_mask", "vision_mask")
        inputs = {key: features[key] for key in keys if key in features}
        encode = self.model.encode_documents if task == "document" else self.model.encode_queries
        return {**features, "sentence_embedding": encode(**inputs)}

    def get_embedding_dimension(self) -> int:
        return self.model.config.embedding_dim

    @property
    def max_seq_length(self) -> int:
        """Texts are cut to this many tokens: the text tower's `max_position_embeddings` (77 for CLIP), or less when
        set (`st.max_seq_length = 32`, which sets the tokenizer's `model_max_length`, as sentence-transformers does)."""
        return min(self.processor.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.processor.tokenizer.model_max_length = value

    def save(self, output_path: str, safe_serialization: bool = True, **kwargs) -> None:
        self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.processor.save_pretrained(output_path)


__all__ = ["Ret2SentenceTransformersModule", "write_sentence_transformers_files"]
