"""The ablation switches of the cell (`Ret2Config.gated`, `Ret2Config.recurrent`) and the one-tap model."""

import pytest
import torch
import torch.nn.functional as F
from conftest import WORDS, pattern

from configuration_ret2 import Ret2Config
from modeling_ret2 import Ret2Model
from ret2.tiny import tiny_config, tiny_processor

B, NT, NV = 3, 7, 5


def _model(**kwargs) -> Ret2Model:
    """A tiny model whose weights do not depend on the switches (the same seed, the same parameters)."""
    torch.manual_seed(11)
    return Ret2Model(tiny_config(tiny_processor(WORDS), **kwargs)).eval()


def _cell_inputs(hidden: int) -> tuple:
    g = torch.Generator().manual_seed(5)
    text, vision = torch.randn(B, NT, hidden, generator=g), torch.randn(B, NV, hidden, generator=g)
    text_pad = torch.tensor([[1] * NT, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2]).bool()
    m_t, m_v = torch.tensor([1.0, 1.0, 0.0])[:, None, None], torch.tensor([1.0, 0.0, 1.0])[:, None, None]
    return text, text_pad, m_t, vision, m_v


def _tower_states(model: Ret2Model) -> tuple:
    """Random tapped states for the encoder: one (B, N, width) tensor per tap and modality, and the masks."""
    g = torch.Generator().manual_seed(7)
    taps = model.config.num_steps
    text = [torch.randn(B, NT, model.config.text_config.hidden_size, generator=g) for _ in range(taps)]
    vision = [torch.randn(B, NV, model.config.vision_config.hidden_size, generator=g) for _ in range(taps)]
    text_pad = torch.tensor([[1] * NT, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2]).bool()
    return text, text_pad, torch.tensor([1.0, 1.0, 0.0]), vision, torch.tensor([1.0, 0.0, 1.0])


def test_defaults_are_the_paper_model():
    config = Ret2Config()
    assert config.gated is True and config.recurrent is True
    reloaded = Ret2Config.from_dict(Ret2Config(gated=False, recurrent=False).to_dict())
    assert (reloaded.gated, reloaded.recurrent) == (False, False)


@pytest.mark.parametrize("name", ["gated", "recurrent"])
def test_switches_must_be_booleans(name):
    with pytest.raises(TypeError, match=rf"{name}='no' must be a bool \(True or False\), got str"):
        Ret2Config(**{name: "no"})


def test_open_gates_match_hand_computation():
    """gated=False: c = r + T * m_t + V * m_v (input gates = presence masks, forget gate = 1)."""
    cell = _model(gated=False).query_encoder.cell
    state = torch.randn(B, *cell.latent_tokens.shape[1:], generator=torch.Generator().manual_seed(1))
    text, text_pad, m_t, vision, m_v = _cell_inputs(state.shape[-1])
    with torch.no_grad():
        ours = cell(state, text, text_pad, m_t, vision, m_v)
        q = state + cell.position_table
        z = cell.xa_ln(q)
        r = q + cell.self_attn(z, z)
        t = cell.text_attn(z, cell.text_ln(text), text_pad)
        v = cell.vision_attn(z, cell.vision_ln(vision))
        c = r + t * m_t + v * m_v
        expected = c + cell.mlp(cell.mlp_ln(c))
    assert (ours - expected).abs().max() <= 1e-5


def test_gated_cell_differs_from_open_gates():
    gated, open_ = _model().query_encoder.cell, _model(gated=False).query_encoder.cell
    state = gated.latent_tokens.expand(B, -1, -1)
    inputs = _cell_inputs(state.shape[-1])
    with torch.no_grad():
        difference = (gated(state, *inputs) - open_(state, *inputs)).abs().max()
    assert difference > 1e-2


def _reference_encoder(encoder, text, text_pad, m_t, vision, m_v, recurrent: bool) -> torch.Tensor:
    """The encoder written out: recurrent steps, or independent steps from the initial state averaged."""
    cell, initial = encoder.cell, encoder.cell.latent_tokens
    state, per_tap = initial, []
    for step in range(len(text)):
        start = state if recurrent else initial
        state = cell(
            start, encoder.text_adapters[step](text[step]), text_pad, m_t[:, None, None],
            encoder.vision_adapters[step](vision[step]), m_v[:, None, None],
        )  # fmt: skip
        per_tap.append(state)
    final = state if recurrent else torch.stack(per_tap).mean(dim=0)
    return F.normalize(encoder.projection(final.mean(dim=1)), dim=-1)


@pytest.mark.parametrize("recurrent", [True, False])
def test_encoder_matches_reference(recurrent):
    """Default: the state is carried from tap to tap. recurrent=False: the mean of single steps from the start."""
    model = _model(recurrent=recurrent)
    states = _tower_states(model)
    with torch.no_grad():
        ours = model.query_encoder(*states)
        expected = _reference_encoder(model.query_encoder, *states, recurrent=recurrent)
    assert (ours - expected).abs().max() <= 1e-6


def test_no_recurrence_changes_embeddings_on_the_same_weights():
    recurrent, independent = _model(), _model(recurrent=False)
    assert all(torch.equal(a, b) for a, b in zip(recurrent.state_dict().values(), independent.state_dict().values()))
    processor = tiny_processor(WORDS)
    inputs = processor(text=["a red circle", "blue star"], images=[pattern(1), pattern(2)], return_tensors="pt")
    with torch.no_grad():
        cosine = (recurrent.encode_queries(**inputs) * independent.encode_queries(**inputs)).sum(-1)
    assert cosine.max() < 0.999


def test_one_tap_is_the_last_layer_alone():
    """One tap (the last block of each tower) is expressible with the layer ids; with one step, recurrence is moot."""
    last = tiny_config(tiny_processor(WORDS)).text_config.num_hidden_layers - 1
    one_tap = _model(text_layer_ids=[last], vision_layer_ids=[last])
    assert one_tap.config.num_steps == 1 and len(one_tap.query_encoder.text_adapters) == 1
    independent = _model(text_layer_ids=[last], vision_layer_ids=[last], recurrent=False)
    processor = tiny_processor(WORDS)
    inputs = processor(text=["a red circle", None], images=[pattern(1), pattern(2)], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(one_tap.encode_queries(**inputs), independent.encode_queries(**inputs), atol=1e-6)
