"""A saved ReT-2 folder is a sentence-transformers model: `SentenceTransformer(folder, trust_remote_code=True)`."""

import json
from pathlib import Path

import pytest
import torch
from conftest import WORDS, pattern
from PIL import Image
from remote_code import load_in_clean_process

from ret2.tiny import tiny_model_and_processor

st = pytest.importorskip("sentence_transformers")

TEXTS = ["a red circle on the left", None, "a big blue square", "green star", None]


def save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("st-images")
    paths = [root / f"image{i}.png" for i in range(len(TEXTS))]
    for i, path in enumerate(paths):
        pattern(i).convert("RGBA").save(path)
    return paths


def st_inputs(paths):
    """The same samples as (TEXTS, images) in the forms sentence-transformers users pass."""
    return [
        {"text": TEXTS[0], "image": Image.open(paths[0])},
        str(paths[1]),  # a string naming an image file is an image, as sentence-transformers reads it
        TEXTS[2],
        {"text": TEXTS[3], "image": str(paths[3])},
        Image.open(paths[4]),
    ]


def expected(model, processor, paths, kind):
    images = [Image.open(p) if i in (0, 1, 3, 4) else None for i, p in enumerate(paths)]
    inputs = processor(text=TEXTS, images=images, return_tensors="pt")
    with torch.no_grad():
        return (model.encode_queries if kind == "query" else model.encode_documents)(**inputs)


def test_folder_loads_and_encodes_like_the_model(tiny, images, tmp_path):
    model, processor = tiny
    folder = save(model, processor, tmp_path / "ret2")
    assert json.loads((folder / "modules.json").read_text())[0]["type"] == "sentence_ret2.Ret2SentenceTransformersModule"
    encoder = st.SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    assert encoder.similarity_fn_name == "cosine"
    assert encoder.get_embedding_dimension() == model.config.embedding_dim
    queries = encoder.encode_query(st_inputs(images), convert_to_tensor=True, batch_size=2)
    documents = encoder.encode_document(st_inputs(images), convert_to_tensor=True, batch_size=2)
    assert (queries - expected(model, processor, images, "query")).abs().max().item() <= 1e-5
    assert (documents - expected(model, processor, images, "document")).abs().max().item() <= 1e-5
    scores = encoder.similarity(queries, documents)
    assert torch.allclose(scores, model.similarity(queries, documents), atol=1e-6)


def test_separate_encoders_route_query_and_document(images, tmp_path):
    """share_encoder=False: encode_query runs the query encoder, encode_document the document one; plain encode,
    which names neither, refuses."""
    model, processor = tiny_model_and_processor(WORDS, seed=1, share_encoder=False)
    encoder = st.SentenceTransformer(str(save(model, processor, tmp_path / "two")), trust_remote_code=True)
    queries = encoder.encode_query(st_inputs(images), convert_to_tensor=True)
    documents = encoder.encode_document(st_inputs(images), convert_to_tensor=True)
    assert (queries - expected(model, processor, images, "query")).abs().max().item() <= 1e-5
    assert (documents - expected(model, processor, images, "document")).abs().max().item() <= 1e-5
    assert (queries - documents).abs().max().item() > 1e-2
    with pytest.raises(ValueError, match="call encode_query or encode_document"):
        encoder.encode(["red"])


def test_multi_vector_folder_refuses(tmp_path):
    model, processor = tiny_model_and_processor(WORDS, seed=0, pooling="none", share_encoder=False)
    folder = save(model, processor, tmp_path / "ret1")
    with pytest.raises(ValueError, match="multi-vector model"):
        st.SentenceTransformer(str(folder), trust_remote_code=True)


def test_saved_by_sentence_transformers_reloads(tiny, tmp_path):
    model, processor = tiny
    encoder = st.SentenceTransformer(str(save(model, processor, tmp_path / "a")), trust_remote_code=True)
    encoder.save(str(tmp_path / "b"))
    again = st.SentenceTransformer(str(tmp_path / "b"), trust_remote_code=True)
    texts = ["a red circle", "big blue square"]
    assert torch.equal(again.encode_query(texts, convert_to_tensor=True), encoder.encode_query(texts, convert_to_tensor=True))


@pytest.mark.slow
def test_loads_in_clean_process(tiny, images, tmp_path):
    """Where only the folder exists (our packages refused at import), sentence-transformers loads it and matches."""
    model, processor = tiny
    folder = save(model, processor, tmp_path / "ret2")
    torch.save(expected(model, processor, images, "query"), tmp_path / "expected.pt")
    out = load_in_clean_process(
        tmp_path,
        f"""
        import torch
        from PIL import Image
        from sentence_transformers import SentenceTransformer
        paths = {[str(p) for p in images]!r}
        inputs = [{{"text": {TEXTS[0]!r}, "image": Image.open(paths[0])}}, paths[1], {TEXTS[2]!r},
                  {{"text": {TEXTS[3]!r}, "image": paths[3]}}, Image.open(paths[4])]
        encoder = SentenceTransformer({str(folder)!r}, trust_remote_code=True)
        queries = encoder.encode_query(inputs, convert_to_tensor=True)
        print("max diff", (queries - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item())
        """,
    )
    assert float(out.split("max diff")[-1]) <= 1e-5
