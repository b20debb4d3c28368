"""`ret2.model`, the one home of a model's identity: its config, fingerprint, Hub-id rule, device and token limit."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from ret2.model import (DTYPE_NAMES, is_hub_id, model_config, model_fingerprint, text_limit,
                        torch_dtype)  # fmt: skip


def test_import_is_light():
    """The command layer's parsers read `DTYPE_NAMES` from here: importing it loads neither torch nor transformers."""
    code = "import sys, ret2.model; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_config_and_fingerprint_read_the_folder(tiny_model_dir, tmp_path):
    assert model_config(tiny_model_dir) == json.loads((tiny_model_dir / "config.json").read_text())
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(tiny_model_dir), str(copy)], check=True)
    assert model_fingerprint(copy) == model_fingerprint(str(tiny_model_dir))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "extra": 1}))
    assert model_fingerprint(copy) != model_fingerprint(tiny_model_dir)


def test_hub_id_rule(tiny_model_dir):
    assert is_hub_id("openai/clip-vit-base-patch32") and is_hub_id("bert-base-uncased")
    assert not any(is_hub_id(name) for name in ("", "./runs/x", "/abs/path", "~/m", str(tiny_model_dir), "a/b/c"))


def test_text_limit_is_the_processors_property(tiny):
    _, processor = tiny
    assert text_limit(processor) == processor.text_limit == min(processor.tokenizer.model_max_length, 4096)
    # a folder saved before the property: its older processor file has none, the same rule applies to its tokenizer
    old = SimpleNamespace(tokenizer=SimpleNamespace(model_max_length=int(1e30)))
    assert text_limit(old) == 4096
    old.tokenizer.model_max_length = 77
    assert text_limit(old) == 77


def test_dtype_names():
    import torch

    assert [torch_dtype(name) for name in DTYPE_NAMES] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match=r"dtype 'fp32' is not one of \['float32', 'bfloat16', 'float16'\]"):
        torch_dtype("fp32")
