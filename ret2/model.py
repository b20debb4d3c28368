"""The one home of a model's identity: what a name means (a folder, a Hub id, a cached snapshot; a mistyped folder
refused at once), its config, its fingerprint, loading it with its processor, the default device and the token limit
texts are cut to.

Light to import (no torch, no transformers at module level): the command layer's parsers read `DTYPE_NAMES` from here.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .options import DTYPE_NAMES  # the model dtypes every command takes (`--dtype`)
# Files of a model folder that can change its embeddings: config, weights, tokenizer / processor files, remote code.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".py")


def check_model_source(name_or_path: str | os.PathLike) -> None:
    """Fail at once, naming the path, when `name_or_path` is no existing folder yet cannot be a Hub id either: an
    absolute path, one starting with `.` or `~`, one with more than one `/`, or one whose first folder exists here
    (`runs/tinyy` beside `runs/`). Without this a mistyped folder is tried on the Hub, which takes its time to fail
    and then blames the network."""
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return
    parts = name.replace("\\", "/").split("/")
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or len(parts) > 2 or os.path.isdir(parts[0])
    if len(parts) == 1 or not looks_local:
        return  # `name` or `org/name`: a Hub id
    if os.path.exists(name):
        raise NotADirectoryError(f"model {name!r} is a file; give the folder that holds config.json")
    parent = os.path.dirname(os.path.abspath(os.path.expanduser(name)))
    siblings = [e.name for e in os.scandir(parent) if e.is_dir()] if os.path.isdir(parent) else []
    close = difflib.get_close_matches(os.path.basename(name.rstrip("/")), siblings, n=1)
    hint = f"; did you mean {os.path.join(os.path.dirname(name), close[0])!r}?" if close else ""
    raise FileNotFoundError(f"model folder {name!r} does not exist ({os.path.abspath(os.path.expanduser(name))}){hint}")


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub model id (not a local path): safe to publish in metadata."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or name.startswith(("/", ".", "~")) or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def model_folder(name_or_path: str | os.PathLike) -> Path:
    """The folder holding the model's files: `name_or_path` itself, or a Hub id's downloaded snapshot (offline: the
    cache only)."""
    name = os.fspath(name_or_path)
    check_model_source(name)
    if os.path.isdir(name):
        return Path(name)
    from transformers.utils import cached_file

    return Path(cached_file(name, "config.json")).parent


def model_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The model's `config.json` as a dict, without loading the model."""
    return json.loads((model_folder(name_or_path) / "config.json").read_text())


def model_fingerprint(name_or_path: str | os.PathLike) -> str:
    """sha256 of the files of a model folder that can change its embeddings (config, weights, tokenizer and
    processor files, remote code), by name and content. A hub id is resolved to its downloaded snapshot. Content,
    not mtimes: a folder retrained in place gets a new fingerprint, a copied one keeps it (about 1 s per GB)."""
    digest = hashlib.sha256()
    for path in sorted(model_folder(name_or_path).iterdir()):
        if path.is_file() and path.suffix in MODEL_FILE_SUFFIXES:
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as f:
                while block := f.read(1 << 23):
                    digest.update(block)
    return digest.hexdigest()


def default_device() -> str:
    """Where models run unless told: "cuda" when a GPU is visible, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str) -> torch.dtype:
    """`torch.float32` for "float32", ...: one of `DTYPE_NAMES`, else an error listing them."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {name!r} is not one of {list(DTYPE_NAMES)}")
    import torch

    return getattr(torch, name)


def load_model_and_processor(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    revision: str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """A saved ReT-2 model (Hub id or folder, through `AutoModel` with `trust_remote_code=True`) on `device`
    (default: `default_device()`) in eval mode, and its processor; `dtype` a name of `DTYPE_NAMES` or a torch dtype;
    `revision` the Hub revision (None: the default branch)."""
    from transformers import AutoModel, AutoProcessor

    name = os.fspath(name_or_path)
    check_model_source(name)
    dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype
    model = AutoModel.from_pretrained(name, trust_remote_code=True, dtype=dtype, revision=revision)
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True, revision=revision)
    return model.to(device or default_device()).eval(), processor


def text_limit(processor: Any) -> int:
    """The most tokens of a text the processor encodes, special tokens included (`Ret2Processor.text_limit`: the
    tokenizer's `model_max_length`, at most `MAX_TEXT_TOKENS`). A folder saved before the processor had the property
    carries an older processor file: the same rule is applied to its tokenizer."""
    limit = getattr(processor, "text_limit", None)
    if limit is None:
        from modeling_ret2.processing_ret2 import MAX_TEXT_TOKENS

        limit = min(processor.tokenizer.model_max_length, MAX_TEXT_TOKENS)
    return limit
