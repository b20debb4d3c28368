"""Reduced precision: a model loaded or converted to bf16 / fp16 encodes, and agrees with float32."""

import pytest
import torch
from conftest import pattern
from transformers import AutoModel

TEXTS = ["a red circle on the left", "a big blue square", "green star top", "small yellow triangle", "blue circle",
         "red square bottom", "big green triangle", "small star right"]  # fmt: skip


def embeddings(model, processor):
    """Text-only queries and image+text documents of a small retrieval set."""
    queries = processor(text=TEXTS, return_tensors="pt")
    documents = processor(text=TEXTS, images=[pattern(i) for i in range(len(TEXTS))], return_tensors="pt")
    with torch.no_grad():
        return model.encode_queries(**queries), model.encode_documents(**documents)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("route", ["from_pretrained", "to"])
def test_reduced_precision_matches_float32(tiny_model_dir, tiny, route, dtype):
    """Each embedding has cosine >= 0.99 with its float32 twin, and every query retrieves the same top-1 document."""
    _, processor = tiny
    reference = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()
    if route == "from_pretrained":
        model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True, dtype=dtype).eval()
    else:
        model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True).eval().to(dtype)
    assert model.dtype == dtype
    queries32, documents32 = embeddings(reference, processor)
    queries, documents = embeddings(model, processor)
    assert queries.dtype == documents.dtype == dtype
    cosines = torch.cat([(queries.float() * queries32).sum(-1), (documents.float() * documents32).sum(-1)])
    assert cosines.min().item() >= 0.99
    top1 = reference.similarity(queries.float(), documents.float()).argmax(-1)
    assert torch.equal(top1, reference.similarity(queries32, documents32).argmax(-1))


def test_raw_encode_in_bfloat16(tiny_model_dir, tiny):
    """The one-call encode feeds float32 pixels to a bf16 model (cast inside) and returns float32 numpy."""
    _, processor = tiny
    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True, dtype=torch.bfloat16).eval()
    items = [(TEXTS[0], pattern(0)), pattern(1), TEXTS[2]]
    out = model.encode(items, kind="document")
    assert out.dtype.name == "float32" and out.shape == (3, model.config.embedding_dim)
    assert abs(float((out**2).sum(-1).min()) - 1.0) < 1e-2
