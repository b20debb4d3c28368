"""`Ret2Model.encode`: raw texts / images / pairs in, exactly the tensor-level embeddings out; and `model.compile()`."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pattern
from PIL import Image
from transformers import AutoModel

TEXTS = ["a red circle on the left", None, "a big blue square", "green star", None, "small yellow triangle",
         "red", "a small blue star at the top right", None, "big green circle"]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """PNG files on disk for the samples that have an image (RGBA, so the processor's mode conversion is exercised)."""
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, text in enumerate(TEXTS):
        if i % 3 == 2 and text is not None:
            paths.append(None)
            continue
        path = root / f"image{i}.png"
        pattern(i).convert("RGBA").save(path)
        paths.append(path)
    return paths


def tensor_path(model, processor, texts, images, kind):
    inputs = processor(text=texts, images=images, return_tensors="pt")
    with torch.no_grad():
        return (model.encode_queries if kind == "query" else model.encode_documents)(**inputs)


def as_item(text, path, style):
    """One sample in one of the input forms `encode` takes."""
    if path is None:
        return text
    if text is None:
        return Image.open(path) if style == 0 else path
    return (text, Image.open(path)) if style == 0 else {"text": text, "image": str(path)}


@pytest.mark.parametrize("kind", ["query", "document"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_encode_equals_tensor_path_mixed_and_shuffled(tiny, files, kind, num_workers):
    """Shuffled samples of every modality and input form, in batches of 3 (sorted inside `encode`): each row equals
    the tensor-level embedding of the same sample (all samples preprocessed and encoded as one batch)."""
    model, processor = tiny
    order = list(range(len(TEXTS)))
    random.Random(0).shuffle(order)
    texts = [TEXTS[i] for i in order]
    paths = [files[i] for i in order]
    expected = tensor_path(model, processor, texts, [None if p is None else Image.open(p) for p in paths], kind)
    items = [as_item(t, p, i % 2) for i, (t, p) in enumerate(zip(texts, paths))]
    out = model.encode(items, kind=kind, processor=processor, batch_size=3, num_workers=num_workers)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert np.abs(out - expected.numpy()).max() <= 1e-6


def test_encode_loads_the_saved_processor_and_returns_torch(tiny, tiny_model_dir):
    model, processor = tiny
    loaded = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()
    out = loaded.encode(["a red circle", pattern(1)], kind="query", convert_to="torch")
    expected = tensor_path(model, processor, ["a red circle", None], [None, pattern(1)], "query")
    assert isinstance(out, torch.Tensor) and out.device == loaded.device and out.dtype == loaded.dtype
    assert (out - expected).abs().max().item() <= 1e-6


def test_a_plain_string_is_text_even_when_it_names_a_file(tiny, files):
    model, processor = tiny
    path = str(next(p for p in files if p is not None))
    out = model.encode([path], kind="query", processor=processor)
    assert np.abs(out - tensor_path(model, processor, [path], None, "query").numpy()).max() <= 1e-6


def test_encode_of_nothing_is_empty(tiny):
    model, processor = tiny
    assert model.encode([], kind="query", processor=processor).shape == (0, model.config.embedding_dim)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (dict(inputs=["red"], kind="queries"), ValueError, "kind='queries'"),
        (dict(inputs=["red"], kind="query", convert_to="list"), ValueError, "convert_to='list'"),
        (dict(inputs="red", kind="query"), TypeError, "wrap one sample"),
        (dict(inputs=[{"text": "red", "img": None}], kind="query"), ValueError, "keys ['img']"),
        (dict(inputs=[(None, None)], kind="query"), ValueError, "neither text nor an image"),
        (dict(inputs=[3], kind="query"), TypeError, "Cannot encode a int"),
        (dict(inputs=[Path("/nonexistent/x.png")], kind="query"), FileNotFoundError, "/nonexistent/x.png"),
    ],
)
def test_encode_errors_name_the_bad_value(tiny, call, error, message):
    model, processor = tiny
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        model.encode(processor=processor, **call)


def test_encode_without_a_processor_or_a_folder_says_so(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="pass processor="):
        model.encode(["red"], kind="query")


@pytest.mark.slow
def test_model_compile_compiles_the_encode_path(mixed_batch):
    """`model.compile(backend=...)` routes encode_queries / encode_documents through compiled graphs (a counting
    backend sees graphs from the towers and the cell) and gives the eager embeddings."""
    from ret2.tiny import tiny_model_and_processor
    from conftest import WORDS

    model, processor = tiny_model_and_processor(WORDS, seed=0)  # a private copy: compiling changes it in place
    inputs = processor(text=mixed_batch[0], images=mixed_batch[1], return_tensors="pt")
    with torch.no_grad():
        eager = model.encode_queries(**inputs), model.encode_documents(**inputs)
    graphs = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model.compile(backend=counting_backend)
    with torch.no_grad():
        compiled = model.encode_queries(**inputs), model.encode_documents(**inputs)
    ops = {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op in ("call_module", "call_function")}
    assert len(graphs) >= 3  # text tower, vision tower, encoder
    assert any("sigmoid" in op for op in ops) and any("conv2d" in op for op in ops)  # the cell's gates, patch embed
    for a, b in zip(eager, compiled):
        assert (a - b).abs().max().item() <= 1e-6
    torch._dynamo.reset()


def test_truncate_dim_is_the_renormalised_prefix_of_the_full_embedding(tiny, mixed_batch, caplog):
    model, processor = tiny
    texts, images = mixed_batch
    inputs = [(text, image) for text, image in zip(texts, images)]
    full = model.encode(inputs, kind="document", processor=processor, convert_to="torch")
    dim = model.config.embedding_dim // 4
    with caplog.at_level("WARNING"):
        short = model.encode(inputs, kind="document", processor=processor, convert_to="torch", truncate_dim=dim)
    expected = full[:, :dim] / full[:, :dim].norm(dim=-1, keepdim=True)
    assert short.shape == (len(inputs), dim)
    torch.testing.assert_close(short, expected)
    torch.testing.assert_close(short.norm(dim=-1), torch.ones(len(inputs)))
    assert not torch.allclose(full[:, :dim], expected)  # the prefix alone is not unit-norm: re-normalising mattered
    assert f"truncate_dim={dim}: this model was trained for the sizes" in caplog.text  # tiny was trained for none
    assert model.encode([], kind="query", processor=processor, truncate_dim=dim).shape == (0, dim)
    with pytest.raises(ValueError, match=rf"truncate_dim=0 is not valid.*\[1, {model.config.embedding_dim}\]"):
        model.encode(["red"], kind="query", processor=processor, truncate_dim=0)
