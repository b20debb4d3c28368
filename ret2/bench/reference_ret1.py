"""The ReT-1 encoder written the way the public ReT code writes it: the baseline that ReT-1 mode is timed against.

What makes it "the reference way", and what ReT-1 mode in `modeling_ret2` does instead:
- both towers always run, on a black image or an empty text where a document lacks that modality, and keep every
  hidden state (ReT-1 mode skips a tower no sample needs, and keeps only the tapped layers);
- the cell is torch `nn.MultiheadAttention` (packed in-projections) with the text padding given as an additive float
  mask copied once per head, `(B * heads, K, Nt)` (ReT-1 mode: separate projections and a boolean `(B, 1, 1, Nt)`
  mask to `scaled_dot_product_attention`);
- every step recomputes everything for every sample, including the first step's self-attention of the learned latent
  tokens, which is the same for all samples (ReT-1 mode computes it once per batch).

`ReferenceRet1.from_ret2(model)` shares the towers of a ReT-1-mode `Ret2Model` and copies the adapters, cell and
projection of one side, so the two give the same embeddings. Parameter names follow the ReT-1 checkpoints
(`ret_cell.sa.in_proj_weight`, `late_proj.weight`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modeling_ret2 import Ret2Model
from modeling_ret2.modeling_ret2 import Ret2Encoder, sinusoidal_table


class ReferenceRet1Cell(nn.Module):
    """The ReT-1 recurrent cell; one call per tapped layer pair, `state=None` at the first."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_latent_tokens: int,
        dropout: float = 0.05,
        attention_dropout: float = 0.05,
        input_gate_bias_prior: float = 0.0,
        forget_gate_bias_prior: float = 0.0,
        use_tanh: bool = False,
    ):
        super().__init__()
        hidden = hidden_size
        self.num_heads, self.num_queries = num_heads, num_latent_tokens
        self.query_hidden_states = nn.Parameter(torch.zeros(1, num_latent_tokens, hidden))
        self.register_buffer("query_state_ids", sinusoidal_table(num_latent_tokens, hidden)[None])  # (1, K, H)
        mha = dict(embed_dim=hidden, num_heads=num_heads, dropout=attention_dropout, batch_first=True)
        self.sa = nn.MultiheadAttention(**mha)
        self.text_xa = nn.MultiheadAttention(**mha, bias=False)
        self.vision_xa = nn.MultiheadAttention(**mha, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.Dropout(dropout), nn.GELU(), nn.Linear(4 * hidden, hidden), nn.Dropout(dropout)
        )
        self.text_input_gate_w = nn.Linear(hidden, hidden)
        self.vision_input_gate_w = nn.Linear(hidden, hidden)
        self.text_forget_gate_w = nn.Linear(hidden, hidden)
        self.vision_forget_gate_w = nn.Linear(hidden, hidden)
        self.xa_ln = nn.LayerNorm(hidden)
        self.text_ln = nn.LayerNorm(hidden)
        self.vision_ln = nn.LayerNorm(hidden)
        self.sa_ln = nn.LayerNorm(hidden)  # in the ReT-1 checkpoints, never used
        self.mlp_ln = nn.LayerNorm(hidden)
        self.register_buffer("input_gate_bias_prior", torch.tensor(float(input_gate_bias_prior)))
        self.register_buffer("forget_gate_bias_prior", torch.tensor(float(forget_gate_bias_prior)))
        self.state_act_fn = nn.Tanh() if use_tanh else nn.Identity()

    def forward(
        self,
        state: torch.Tensor | None,
        text_key_value: torch.Tensor,
        text_attention_mask: torch.Tensor,
        vision_key_value: torch.Tensor,
        text_mask: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> torch.Tensor:
        """state (B, K, H) or None; *_key_value (B, N, H) adapted tokens; text_attention_mask (B, Nt) 1 = token;
        text_mask / image_mask (B,) presence in {0, 1}. Returns the new state (B, K, H)."""
        batch_size, dtype = text_key_value.shape[0], text_key_value.dtype
        if state is None:
            state = self.query_hidden_states.expand(batch_size, -1, -1)
        state = state + self.query_state_ids.expand(batch_size, -1, -1)
        residual = state
        state = self.xa_ln(state)
        residual = residual + self.sa(state, state, state, need_weights=False)[0]

        text_key_value = self.text_ln(text_key_value)
        # Additive mask, one copy per head: 0 on tokens, the dtype's minimum on padding. (B, Nt) -> (B * heads, K, Nt)
        additive = (1.0 - text_attention_mask.to(dtype)) * torch.finfo(dtype).min
        additive = additive[:, None, :].expand(batch_size, self.num_queries, -1)
        additive = additive.repeat_interleave(self.num_heads, dim=0)
        text = self.text_xa(state, text_key_value, text_key_value, attn_mask=additive, need_weights=False)[0]
        vision_key_value = self.vision_ln(vision_key_value)
        vision = self.vision_xa(state, vision_key_value, vision_key_value, need_weights=False)[0]

        text_mask = text_mask[:, None, None].to(dtype)  # (B, 1, 1)
        image_mask = image_mask[:, None, None].to(dtype)
        text_input_gate = torch.sigmoid(self.text_input_gate_w(text) + self.input_gate_bias_prior) * text_mask
        text_forget = self.text_forget_gate_w(text) * text_mask
        vision_input_gate = torch.sigmoid(self.vision_input_gate_w(vision) + self.input_gate_bias_prior) * image_mask
        vision_forget = self.vision_forget_gate_w(vision) * image_mask
        forget_gate = torch.sigmoid(text_forget + vision_forget + self.forget_gate_bias_prior)

        act = self.state_act_fn
        state = act(residual) * forget_gate + act(text) * text_input_gate + act(vision) * vision_input_gate
        return state + self.mlp(self.mlp_ln(state))


class ReferenceRet1(nn.Module):
    """One side (queries or documents) of a ReT-1 retriever: towers -> per-tap adapters -> cell -> projection."""

    def __init__(
        self,
        text_model: nn.Module,
        vision_model: nn.Module,
        text_layer_ids: list[int],
        vision_layer_ids: list[int],
        cell: ReferenceRet1Cell,
        embedding_dim: int,
        use_pooler_features: bool = False,
    ):
        super().__init__()
        hidden = cell.query_hidden_states.shape[-1]
        self.text_model, self.vision_model = text_model, vision_model
        self.text_layer_ids, self.vision_layer_ids = list(text_layer_ids), list(vision_layer_ids)
        self.text_adapter = nn.ModuleList(nn.Linear(text_model.config.hidden_size, hidden) for _ in text_layer_ids)
        self.vision_adapter = nn.ModuleList(nn.Linear(vision_model.config.hidden_size, hidden) for _ in vision_layer_ids)
        self.ret_cell = cell
        self.late_proj = nn.Linear(hidden, embedding_dim, bias=False)
        self.use_pooler_features = use_pooler_features

    @classmethod
    def from_ret2(cls, model: Ret2Model, side: str = "documents") -> ReferenceRet1:
        """The reference encoder of one side of `model` (towers shared, everything else copied)."""
        if side not in ("queries", "documents"):
            raise ValueError(f"side={side!r} is not valid; valid: ['documents', 'queries'].")
        config = model.config
        encoder = model.query_encoder if side == "queries" or model.document_encoder is None else model.document_encoder
        cell = ReferenceRet1Cell(
            config.hidden_size, config.num_attention_heads, config.num_latent_tokens, config.dropout,
            config.attention_dropout, config.input_gate_bias_prior, config.forget_gate_bias_prior, config.use_tanh,
        )  # fmt: skip
        reference = cls(
            model.text_model, model.vision_model, config.text_layer_ids, config.vision_layer_ids, cell,
            config.embedding_dim, use_pooler_features=config.pooling == "mean",
        )  # fmt: skip
        reference.to(device=encoder.projection.weight.device, dtype=encoder.projection.weight.dtype)
        missing, unexpected = reference.load_state_dict(ret1_state_dict(encoder), strict=False)
        left_out = [k for k in missing if not k.startswith(("text_model.", "vision_model.", "ret_cell.sa_ln."))]
        if left_out or unexpected:
            raise RuntimeError(f"Weights not mapped: missing {left_out}, unexpected {unexpected}.")
        return reference.train(model.training)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        text_mask: torch.Tensor,
        vision_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Both towers run on every sample (placeholders where a modality is missing). Returns (B, K, D)
        L2-normalised token embeddings, or (B, D) with `use_pooler_features`."""
        text_states = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        ).hidden_states[1:]
        vision_states = self.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[1:]
        state = None
        for step, (text_id, vision_id) in enumerate(zip(self.text_layer_ids, self.vision_layer_ids)):
            state = self.ret_cell(
                state,
                self.text_adapter[step](text_states[text_id]),
                attention_mask,
                self.vision_adapter[step](vision_states[vision_id]),
                text_mask,
                vision_mask,
            )
        if self.use_pooler_features:
            state = state.mean(dim=1)
        return F.normalize(self.late_proj(state), dim=-1)


def ret1_state_dict(encoder: Ret2Encoder) -> dict[str, torch.Tensor]:
    """The weights of one of our encoders under the ReT-1 checkpoint names (without the towers and `sa_ln`)."""
    cell = encoder.cell
    state = {"ret_cell.query_hidden_states": cell.latent_tokens, "ret_cell.query_state_ids": cell.position_table}
    for i, adapter in enumerate(encoder.text_adapters):
        state[f"text_adapter.{i}.weight"], state[f"text_adapter.{i}.bias"] = adapter.weight, adapter.bias
    for i, adapter in enumerate(encoder.vision_adapters):
        state[f"vision_adapter.{i}.weight"], state[f"vision_adapter.{i}.bias"] = adapter.weight, adapter.bias
    for ours, theirs in (("self_attn", "sa"), ("text_attn", "text_xa"), ("vision_attn", "vision_xa")):
        attention = getattr(cell, ours)
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        state[f"ret_cell.{theirs}.in_proj_weight"] = torch.cat([p.weight for p in projections])  # (3H, H)
        state[f"ret_cell.{theirs}.out_proj.weight"] = attention.out_proj.weight
        if attention.q_proj.bias is not None:
            state[f"ret_cell.{theirs}.in_proj_bias"] = torch.cat([p.bias for p in projections])  # (3H,)
            state[f"ret_cell.{theirs}.out_proj.bias"] = attention.out_proj.bias
    for ours, theirs in (("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.3")):
        linear = cell.get_submodule(ours)
        state[f"ret_cell.{theirs}.weight"], state[f"ret_cell.{theirs}.bias"] = linear.weight, linear.bias
    for gate in ("text_input_gate", "vision_input_gate", "text_forget_gate", "vision_forget_gate"):
        linear = getattr(cell, gate)
        state[f"ret_cell.{gate}_w.weight"], state[f"ret_cell.{gate}_w.bias"] = linear.weight, linear.bias
    for norm in ("xa_ln", "text_ln", "vision_ln", "mlp_ln"):
        layer_norm = getattr(cell, norm)
        state[f"ret_cell.{norm}.weight"], state[f"ret_cell.{norm}.bias"] = layer_norm.weight, layer_norm.bias
    state["ret_cell.input_gate_bias_prior"] = torch.tensor(float(cell.input_bias))
    state["ret_cell.forget_gate_bias_prior"] = torch.tensor(float(cell.forget_bias))
    state["late_proj.weight"] = encoder.projection.weight
    return {name: tensor.detach() for name, tensor in state.items()}
