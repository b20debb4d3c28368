import math

import pytest
import torch
from conftest import WORDS, pattern
from torch import nn
from transformers import BertConfig, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel, SiglipTextConfig

from modeling_ret2 import Ret2Model
from modeling_ret2.modeling_ret2 import sinusoidal_table
from ret2.tiny import tiny_config, tiny_model_and_processor, tiny_processor


def encode(model, processor, texts, images, side="queries", **kwargs):
    inputs = processor(text=texts, images=images, return_tensors="pt", **kwargs)
    with torch.no_grad():
        return getattr(model, f"encode_{side}")(**inputs)


def test_embeddings_are_normalised_and_distinct(tiny, mixed_batch):
    model, processor = tiny
    emb = encode(model, processor, *mixed_batch)
    assert emb.shape == (6, model.config.embedding_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(6))
    assert torch.cdist(emb, emb).fill_diagonal_(1).min() > 1e-4  # no two different inputs collapse


def test_masked_image_changes_nothing(tiny):
    """A sample whose vision_mask is 0 ignores its pixels: placeholder path and skipping path alike."""
    model, processor = tiny
    inputs = processor(text=["red circle", "blue star"], images=[pattern(1), pattern(2)], return_tensors="pt")
    inputs["vision_mask"] = torch.tensor([1, 0])
    other = dict(inputs)
    other["pixel_values"] = inputs["pixel_values"].clone()
    other["pixel_values"][1] = torch.randn_like(other["pixel_values"][1]) * 3
    with torch.no_grad():
        for skip in (True, False):
            model.config.skip_missing_modalities = skip
            a, b = model.encode_queries(**inputs), model.encode_queries(**other)
            assert torch.equal(a[1], b[1])
            assert torch.equal(a[0], b[0])
        model.config.skip_missing_modalities = True
    # and the mask matters: the same sample with its image counted differs
    inputs["vision_mask"] = torch.tensor([1, 1])
    with torch.no_grad():
        assert (model.encode_queries(**inputs)[1] - a[1]).abs().max() > 1e-4


def test_masked_text_changes_nothing(tiny):
    model, processor = tiny
    a = processor(text=["red circle", "blue star"], images=[pattern(1), pattern(2)], return_tensors="pt")
    b = processor(text=["red circle", "a big green triangle top"], images=[pattern(1), pattern(2)], return_tensors="pt")
    for inputs in (a, b):
        inputs["text_mask"] = torch.tensor([1, 0])
    with torch.no_grad():
        assert (model.encode_queries(**a)[1] - model.encode_queries(**b)[1]).abs().max() <= 1e-6


@pytest.mark.parametrize(
    "texts,images",
    [
        (["red circle", "blue square top"], [None, None]),  # no image in the batch: vision tower skipped
        ([None, None], [pattern(1), pattern(2)]),  # no text in the batch: text tower skipped
        (["red circle", None, "star", "green"], [pattern(1), pattern(2), None, None]),  # per-sample skipping
    ],
)
def test_skipping_towers_equals_placeholder_path(tiny, texts, images):
    model, processor = tiny
    skipped = encode(model, processor, texts, images)
    model.config.skip_missing_modalities = False
    try:
        placeholder = encode(model, processor, texts, images, pad_missing_images=True)
    finally:
        model.config.skip_missing_modalities = True
    assert (skipped - placeholder).abs().max() <= 1e-6


def test_skipping_really_skips_the_tower(tiny):
    model, processor = tiny
    calls = []
    handle = model.vision_model.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        encode(model, processor, ["red circle", "blue"], [None, None])
        assert calls == []
        model.config.skip_missing_modalities = False
        encode(model, processor, ["red circle", "blue"], [None, None], pad_missing_images=True)
        assert calls == [1]
    finally:
        model.config.skip_missing_modalities = True
        handle.remove()


def test_sample_alone_equals_sample_in_mixed_batch(tiny, mixed_batch):
    model, processor = tiny
    texts, images = mixed_batch
    batch = encode(model, processor, texts, images, side="documents")
    for i in range(len(texts)):
        alone = encode(model, processor, [texts[i]], [images[i]], side="documents")
        assert (alone[0] - batch[i]).abs().max() <= 1e-5, i


def test_eager_equals_sdpa(mixed_batch):
    model, processor = tiny_model_and_processor(WORDS, seed=1)
    sdpa = encode(model, processor, *mixed_batch)
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager" and model.text_model.config._attn_implementation == "eager"
    eager = encode(model, processor, *mixed_batch)
    assert (sdpa - eager).abs().max() <= 1e-5


def test_save_load_equality(tiny, mixed_batch, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    loaded = Ret2Model.from_pretrained(tmp_path).eval()
    assert torch.equal(encode(model, processor, *mixed_batch), encode(loaded, processor, *mixed_batch))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_neither_modality_is_an_error(tiny):
    model, processor = tiny
    inputs = processor(text=["red", "blue"], images=[pattern(1), pattern(2)], return_tensors="pt")
    inputs["text_mask"] = torch.tensor([1, 0])
    inputs["vision_mask"] = torch.tensor([1, 0])
    with pytest.raises(ValueError, match=r"Samples \[1\] have neither text nor image"):
        model.encode_queries(**inputs)
    with pytest.raises(ValueError, match="vision_mask marks samples"):
        model.encode_queries(input_ids=inputs["input_ids"], vision_mask=torch.tensor([0, 1]))


def test_forward_returns_both_sides(tiny, mixed_batch):
    model, processor = tiny
    q = processor(text=mixed_batch[0], images=mixed_batch[1], return_tensors="pt")
    with torch.no_grad():
        out = model(**{f"query_{k}": v for k, v in q.items()}, **{f"doc_{k}": v for k, v in q.items()})
        assert torch.equal(out.query_embeds, model.encode_queries(**q))
        assert torch.equal(out.doc_embeds, model.encode_documents(**q))
        assert out.logit_scale.item() == pytest.approx(2.6592)
        only_queries = model(**{f"query_{k}": v for k, v in q.items()})
    assert only_queries.doc_embeds is None


def test_multi_vector_and_late_interaction(mixed_batch):
    model, processor = tiny_model_and_processor(WORDS, pooling="none", share_encoder=False, num_latent_tokens=4)
    q = encode(model, processor, *mixed_batch)
    d = encode(model, processor, *mixed_batch, side="documents")
    assert q.shape == (6, 4, model.config.embedding_dim)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(6, 4))
    assert not torch.allclose(q, d)  # separate query and document encoders
    expected = torch.tensor([[sum(max(float(qt @ dt) for dt in d[j]) for qt in q[i]) for j in range(6)] for i in range(6)])
    torch.testing.assert_close(model.similarity(q, d), expected)
    with pytest.raises(ValueError, match="two"):
        model.similarity(q, d[:, 0])


def test_gradient_checkpointing_gives_same_gradients(mixed_batch):
    model, processor = tiny_model_and_processor(WORDS, seed=2, dropout=0.0, attention_dropout=0.0)
    model.train()
    inputs = processor(text=mixed_batch[0], images=mixed_batch[1], return_tensors="pt")

    def grads():
        model.zero_grad()
        model.encode_queries(**inputs).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()
    assert model.query_encoder.cell.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5, msg=name)


def test_frozen_towers_are_not_recomputed_under_checkpointing(mixed_batch):
    """Activation checkpointing makes the towers' input embeddings require grad (for PEFT); frozen towers must still
    run without a graph: same gradients as without checkpointing, and no tower block re-run in the backward."""
    model, processor = tiny_model_and_processor(
        WORDS, seed=2, dropout=0.0, attention_dropout=0.0, freeze_text_tower=True, freeze_vision_tower=True
    )
    model.train()
    inputs = processor(text=mixed_batch[0], images=mixed_batch[1], return_tensors="pt")
    calls = []  # a block's submodule runs again when the backward recomputes the block
    model.vision_model.encoder.layers[0].mlp.register_forward_hook(lambda m, i, o: calls.append("mlp"))
    model.vision_model.register_forward_hook(lambda m, i, o: calls.append(o.last_hidden_state.requires_grad))

    def grads():
        model.zero_grad()
        calls.clear()
        model.encode_queries(**inputs).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()
    checkpointed = grads()
    assert calls == ["mlp", False]  # the tower ran once, without a graph: nothing to recompute
    assert plain.keys() == checkpointed.keys() and not any(n.startswith(("text_model", "vision_model")) for n in plain)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5, msg=name)


def test_frozen_towers_get_no_gradients(mixed_batch):
    model, processor = tiny_model_and_processor(WORDS, freeze_text_tower=True, freeze_vision_tower=True)
    inputs = processor(text=mixed_batch[0], images=mixed_batch[1], return_tensors="pt")
    model.encode_queries(**inputs).sum().backward()
    assert all(p.grad is None for p in model.text_model.parameters())
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert model.query_encoder.cell.latent_tokens.grad.abs().sum() > 0


def test_sinusoidal_table_matches_formula():
    table = sinusoidal_table(5, 8)
    for p in range(5):
        for j in range(8):
            w = math.exp(-(j - j % 2) * math.log(10000.0) / 8)
            assert table[p, j].item() == pytest.approx(math.sin(p * w) if j % 2 == 0 else math.cos(p * w), abs=1e-6)


def _spec_cell_reference(cell, state, text, text_pad, m_t, vision, m_v, use_tanh):
    """The spec's pseudo-code, line by line, with torch.nn.MultiheadAttention loaded from the cell's weights."""
    hidden = state.shape[-1]
    heads = cell.self_attn.num_heads

    def mha(attn, bias):
        ref = nn.MultiheadAttention(hidden, heads, bias=bias, batch_first=True)
        with torch.no_grad():
            ref.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            ref.out_proj.weight.copy_(attn.out_proj.weight)
            if bias:
                ref.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
                ref.out_proj.bias.copy_(attn.out_proj.bias)
        return ref.eval()

    sa, txa, vxa = mha(cell.self_attn, True), mha(cell.text_attn, False), mha(cell.vision_attn, False)
    act = torch.tanh if use_tanh else (lambda x: x)
    b_in, b_f = cell.input_bias, cell.forget_bias
    m_t, m_v = m_t[:, None, None], m_v[:, None, None]
    q = state + sinusoidal_table(state.shape[1], hidden)
    z = cell.xa_ln(q)
    r = q + sa(z, z, z, need_weights=False)[0]
    t_kv = cell.text_ln(text)
    T = txa(z, t_kv, t_kv, key_padding_mask=~text_pad, need_weights=False)[0]
    v_kv = cell.vision_ln(vision)
    V = vxa(z, v_kv, v_kv, need_weights=False)[0]
    i_t = torch.sigmoid(cell.text_input_gate(T) + b_in) * m_t
    i_v = torch.sigmoid(cell.vision_input_gate(V) + b_in) * m_v
    f = torch.sigmoid(m_t * cell.text_forget_gate(T) + m_v * cell.vision_forget_gate(V) + b_f)
    c = act(r) * f + act(T) * i_t + act(V) * i_v
    return c + cell.mlp.fc2(nn.functional.gelu(cell.mlp.fc1(cell.mlp_ln(c))))


@pytest.mark.parametrize("use_tanh,b_in,b_f", [(False, 0.0, 0.0), (True, 1.5, -0.7)])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cell_matches_spec_pseudo_code(use_tanh, b_in, b_f, attn):
    processor = tiny_processor(WORDS)
    config = tiny_config(processor, use_tanh=use_tanh, input_gate_bias_prior=b_in, forget_gate_bias_prior=b_f)
    config._attn_implementation = attn
    torch.manual_seed(3)
    model = Ret2Model(config).eval()
    cell = model.query_encoder.cell
    B, K, H = 3, config.num_latent_tokens, config.hidden_size
    state = torch.randn(B, K, H)
    text, vision = torch.randn(B, 7, H), torch.randn(B, 5, H)
    text_pad = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2]).bool()
    m_t, m_v = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 1.0])
    with torch.no_grad():
        ours = cell(state, text, text_pad, m_t[:, None, None], vision, m_v[:, None, None])
        ref = _spec_cell_reference(cell, state, text, text_pad, m_t, vision, m_v, use_tanh)
    assert (ours - ref).abs().max() <= 1e-5


def _tiny_dual(family: str, tmp_path):
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
    if family == "clip":
        config = CLIPConfig(text_config=dict(vocab_size=99, **kw), vision_config=dict(image_size=32, patch_size=8, **kw))
        model = CLIPModel(config)
    else:
        config = SiglipConfig(
            text_config=dict(vocab_size=99, **kw), vision_config=dict(image_size=32, patch_size=8, **kw)
        )
        model = SiglipModel(config)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_from_backbone_copies_tower_weights(family, tmp_path):
    torch.manual_seed(0)
    source = _tiny_dual(family, tmp_path)
    model = Ret2Model.from_backbone(str(tmp_path), hidden_size=64, num_attention_heads=2, num_latent_tokens=4)
    assert model.config.text_layer_ids == [0, 1, 2]
    for side in ("text_model", "vision_model"):
        ours, theirs = getattr(model, side).state_dict(), getattr(source, side).state_dict()
        shared = set(ours) & set(theirs)
        assert len(shared) >= 0.9 * len(ours), (side, set(ours) - set(theirs))
        for key in shared:
            assert torch.equal(ours[key], theirs[key]), key
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 99, (2, 6))
    with torch.no_grad():
        emb = model.encode_documents(input_ids=ids, pixel_values=pixels)
        hidden = source.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        ours = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.equal(hidden[2], ours[2]) and emb.shape == (2, 768)


def test_from_backbone_rejects_a_single_tower(tmp_path):
    BertConfig(num_hidden_layers=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs a dual-encoder checkpoint"):
        Ret2Model.from_backbone(str(tmp_path))


@pytest.mark.parametrize("text_family", ["bert", "siglip"])
def test_other_tower_families(text_family):
    processor = tiny_processor(WORDS)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
    if text_family == "bert":
        text_config = BertConfig(vocab_size=len(processor.tokenizer), **kw)
    else:
        text_config = SiglipTextConfig(vocab_size=len(processor.tokenizer), max_position_embeddings=64, **kw)
    config = tiny_config(processor)
    config = type(config)(**{**config.to_dict(), "text_config": text_config, "text_layer_ids": None})
    model = Ret2Model(config).eval()
    emb = encode(model, processor, ["red circle", None, "blue"], [None, pattern(1), pattern(2)])
    assert emb.shape == (3, config.embedding_dim) and torch.isfinite(emb).all()
