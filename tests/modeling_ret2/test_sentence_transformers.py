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


def test_folder_loads_and_encodes_like_the_model(tiny, tiny_model_dir, images):
    model, processor = tiny
    folder = tiny_model_dir
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


def test_saved_by_sentence_transformers_reloads(tiny_model_dir, tmp_path):
    encoder = st.SentenceTransformer(str(tiny_model_dir), trust_remote_code=True)
    encoder.save(str(tmp_path / "b"))
    again = st.SentenceTransformer(str(tmp_path / "b"), trust_remote_code=True)
    texts = ["a red circle", "big blue square"]
    assert torch.equal(again.encode_query(texts, convert_to_tensor=True), encoder.encode_query(texts, convert_to_tensor=True))


@pytest.mark.slow
def test_loads_in_clean_process(tiny, tiny_model_dir, images, tmp_path):
    """Where only the folder exists (our packages refused at import), sentence-transformers loads it and matches."""
    model, processor = tiny
    folder = tiny_model_dir
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


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The Hub, intercepted at huggingface_hub's boundary (nothing is sent): `HfApi.create_repo` answers as the Hub
    does, `HfApi.create_commit` copies the files it is handed into a local folder, the repository as the Hub would
    then hold it, and `ModelCard.load` finds no card yet. Returns that folder."""
    from huggingface_hub import HfApi, ModelCard
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.hf_api import RepoUrl

    repo = tmp_path / "hub-repo"

    def create_repo(self, repo_id, *args, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *args, **kwargs):
        for operation in operations:
            target = repo / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(operation.path_or_fileobj).read_bytes())

    def no_card(*args, **kwargs):
        raise EntryNotFoundError("no README.md in the repository yet")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(ModelCard, "load", no_card)
    return repo


@pytest.mark.parametrize("push", ["save_pretrained", "push_to_hub"])
def test_the_folder_pushed_to_the_hub_is_a_sentence_transformers_model(push, tiny, images, hub, tmp_path):
    """The habitual Hub calls (`model.save_pretrained(folder, push_to_hub=True)` or `model.push_to_hub(repo)`, then
    the processor's) upload the sentence-transformers files too: the repository they make loads in
    sentence-transformers and encodes like the model. (The real upload is not run: no network in the tests.)"""
    model, processor = tiny
    if push == "save_pretrained":
        folder = str(tmp_path / "ret2-tiny")  # the processor's save_pretrained(push_to_hub=True) takes a str only
        model.save_pretrained(folder, push_to_hub=True, repo_id="me/ret2-tiny")
        processor.save_pretrained(folder, push_to_hub=True, repo_id="me/ret2-tiny")
    else:
        model.push_to_hub("me/ret2-tiny")
        processor.push_to_hub("me/ret2-tiny")
    uploaded = {p.name for p in hub.iterdir()}
    assert {"modules.json", "config_sentence_transformers.json", "sentence_ret2.py", "modeling_ret2.py",
            "config.json", "model.safetensors", "processor_config.json"} <= uploaded  # fmt: skip
    encoder = st.SentenceTransformer(str(hub), trust_remote_code=True, device="cpu")
    documents = encoder.encode_document(st_inputs(images), convert_to_tensor=True, batch_size=2)
    torch.testing.assert_close(documents, expected(model, processor, images, "document"), atol=1e-5, rtol=0)


def test_max_seq_length_is_the_text_towers_limit_and_truncates_when_set(tiny, tiny_model_dir):
    """`max_seq_length` reports how many tokens of a text are read (the text tower's positions), not None; set lower,
    texts are cut there, as the model reads them cut by the processor's `max_length`."""
    model, processor = tiny
    encoder = st.SentenceTransformer(str(tiny_model_dir), trust_remote_code=True, device="cpu")
    assert encoder.max_seq_length == model.config.text_config.max_position_embeddings == 64
    text = " ".join(WORDS * 3)  # 42 words
    encoder.max_seq_length = 5
    assert encoder.max_seq_length == 5
    inputs = processor(text=[text], images=[None], return_tensors="pt", max_length=5)
    assert inputs["input_ids"].shape[1] == 5
    with torch.no_grad():
        expected = model.encode_queries(**inputs)
    torch.testing.assert_close(encoder.encode_query([text], convert_to_tensor=True), expected, atol=1e-5, rtol=0)


def test_truncate_dim_with_normalize_embeddings_equals_encode_truncate_dim(tiny, tiny_model_dir, images):
    """sentence-transformers cuts the module's output after it runs and re-normalises only with
    `normalize_embeddings=True`; its cosine similarity ranks the same either way."""
    model, processor = tiny
    dim = model.config.embedding_dim // 4
    encoder = st.SentenceTransformer(str(tiny_model_dir), trust_remote_code=True, device="cpu", truncate_dim=dim)
    assert encoder.get_embedding_dimension() == dim
    queries = encoder.encode_query(st_inputs(images), convert_to_tensor=True, normalize_embeddings=True)
    documents = encoder.encode_document(st_inputs(images), convert_to_tensor=True)
    full = expected(model, processor, images, "query")
    assert (queries - model.truncate_embeddings(full, dim)).abs().max().item() <= 1e-5
    inputs = [(TEXTS[i], Image.open(p) if i in (0, 1, 3, 4) else None) for i, p in enumerate(images)]
    ours = model.encode(inputs, kind="document", processor=processor, convert_to="torch", truncate_dim=dim)
    assert (documents - ours).abs().max().item() > 1e-3  # not re-normalised by sentence-transformers ...
    assert torch.allclose(encoder.similarity(queries, documents), model.similarity(queries, ours), atol=1e-5)  # ... cosine
