"""ReT-2: a gated recurrent cell over the hidden states of a text and a vision tower (arXiv 2509.08897).

A query or a document (text, image, or both) is encoded as follows. Each tower runs once and returns the
hidden states of its tapped layers. A recurrent state of K latent tokens then takes one step per tapped layer pair,
shallow to deep: it attends to itself, reads the adapted text and vision tokens of that layer through one
cross-attention per modality, and LSTM-like gates decide how much of the old state to keep (forget gate) and how
much of each modality to let in (one input gate per modality, multiplied by that modality's presence mask). The
final state is mean-pooled, projected and L2-normalised (ReT-2), or projected per token (ReT-1, late interaction).
"""

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
import transformers
from transformers import AutoConfig, AutoModel, AutoProcessor, PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_ret2 import Ret2Config

try:  # transformers 5.x: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4.x only initialises the modules whose weights are missing
    from torch.nn import init
from .processing_ret2 import Ret2InputBatches, Ret2Processor, split_input
from .sentence_ret2 import write_sentence_transformers_files

logger = logging.get_logger(__name__)


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim) table: channel j of position p is sin(p*w_j) for even j, cos(p*w_j) for odd j,
    with w_j = 10000^(-(j - j % 2) / dim)."""
    positions = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (P, 1)
    channels = torch.arange(dim)
    freqs = torch.exp(-(channels - channels % 2).float() * math.log(10000.0) / dim)  # (dim,)
    angles = positions * freqs  # (P, dim)
    return torch.where(channels % 2 == 0, torch.sin(angles), torch.cos(angles))


def similarity(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """Score every query against every document -> (Nq, Nd): the one scoring rule of ret2 (model, loss, search).

    Single vectors (N, D): the dot product, which is cosine similarity for the model's normalised embeddings.
    Multi-vector (N, K, D): late interaction (ReT-1), the sum over query tokens of the best document token's dot product.
    """
    if queries.dim() != documents.dim() or queries.dim() not in (2, 3) or queries.shape[-1] != documents.shape[-1]:
        raise ValueError(
            f"similarity takes two (N, D) or two (N, K, D) tensors with the same D, got {tuple(queries.shape)} and "
            f"{tuple(documents.shape)}."
        )
    if queries.dim() == 2:
        return queries @ documents.T  # (Nq, D) x (D, Nd)
    token_scores = torch.einsum("qkd,nld->qnkl", queries, documents)  # (Nq, Nd, Kq, Kd)
    return token_scores.amax(dim=-1).sum(dim=-1)


def truncate_embeddings(embeddings: torch.Tensor, truncate_dim: int | None) -> torch.Tensor:
    """Matryoshka truncation: the first `truncate_dim` components of each (N, D) or (N, K, D) embedding, L2-normalised
    again (in float32, returned in the input's dtype), so that `similarity` stays cosine. None: `embeddings` as given."""
    if truncate_dim is None:
        return embeddings
    return F.normalize(embeddings[..., :truncate_dim].float(), dim=-1).to(embeddings.dtype)  # (..., truncate_dim)


@dataclass
class Ret2Output(ModelOutput):
    """
    Output of [`Ret2Model.forward`].

    Args:
        query_embeds (`torch.FloatTensor` of shape `(batch_size, embedding_dim)` or `(batch_size, K, embedding_dim)`):
            L2-normalised query embeddings (multi-vector when `config.pooling="none"`).
        doc_embeds (`torch.FloatTensor`, same layout as `query_embeds`):
            L2-normalised document embeddings.
        logit_scale (`torch.FloatTensor` of shape `()`):
            The learnable log inverse temperature of the contrastive loss (unclamped).
    """

    query_embeds: torch.FloatTensor | None = None
    doc_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query (B, h, K, d), key/value (B, h, N, d), attention_mask (B, 1, 1, N) bool, True = attend.
    Returns the output (B, K, h, d) and the attention weights (B, h, K, N)."""
    scores = (query @ key.transpose(-1, -2)) * scaling  # (B, h, K, N)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return (probs @ value).transpose(1, 2), probs


class Ret2Attention(nn.Module):
    """Multi-head attention from the latent tokens to a sequence (itself for self-attention)."""

    is_causal = False

    def __init__(self, config: Ret2Config, bias: bool):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, N, H) -> (B, h, N, H/h)

    def forward(
        self, queries: torch.Tensor, keys_values: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """queries (B, K, H) or (1, K, H) shared by all samples, keys_values (B, N, H), key_padding_mask (B, N) bool
        with True = attend -> (B, K, H)."""
        q = self._split_heads(self.q_proj(queries))  # (B or 1, h, K, d)
        k = self._split_heads(self.k_proj(keys_values))  # (B, h, N, d)
        v = self._split_heads(self.v_proj(keys_values))  # (B, h, N, d)
        q = q.expand(k.shape[0], -1, -1, -1)  # shared queries (the first step's) are projected once, then broadcast
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # (B, 1, 1, N)
        # Spelled as each transformers line expects (its `set_attn_implementation` checks this file's text for it).
        if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers 5.x
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        elif self.config._attn_implementation == "eager":  # transformers 4.x
            attention = eager_attention_forward
        else:
            attention = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        dropout = self.config.attention_dropout if self.training else 0.0
        out, _ = attention(self, q, k, v, mask, dropout=dropout, scaling=self.head_dim**-0.5)  # (B, K, h, d)
        return self.out_proj(out.flatten(2))  # (B, K, H)


class Ret2MLP(nn.Module):
    def __init__(self, config: Ret2Config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.fc2 = nn.Linear(4 * config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Linear -> Dropout -> GELU -> Linear -> Dropout, the order of the ReT-1 cell.
        return self.dropout(self.fc2(F.gelu(self.dropout(self.fc1(x)))))


class Ret2RecurrentCell(GradientCheckpointingLayer):
    """One step of the gated recurrent cell. The same weights serve every step.

    With state h (B, K, H), the adapted text tokens X_t (B, Nt, H) and vision tokens X_v (B, Nv, H) of one layer,
    and per-sample presence masks m_t, m_v in {0, 1}:

        q = h + P;  z = LN_xa(q);  r = q + SelfAttn(z)
        T = TextXA(z, LN_t(X_t));  V = VisXA(z, LN_v(X_v))
        i_t = sigmoid(W_it T + b_in) * m_t;  i_v = sigmoid(W_iv V + b_in) * m_v
        f = sigmoid(m_t * W_ft T + m_v * W_fv V + b_f)
        c = r * f + T * i_t + V * i_v      (r, T, V squashed by tanh first when `use_tanh`; gates read them raw)
        h' = c + MLP(LN_mlp(c))

    A modality with no tokens in the whole batch (`None`) contributes exactly what a masked one does: nothing.
    With `config.gated=False` (an ablation) the gates are fixed open: i_t = m_t, i_v = m_v, f = 1.
    """

    def __init__(self, config: Ret2Config):
        super().__init__()
        hidden, k = config.hidden_size, config.num_latent_tokens
        self.latent_tokens = nn.Parameter(torch.empty(1, k, hidden))
        # Fixed sinusoidal positions of the latent tokens, added again at every step; derived, so not saved.
        self.register_buffer("position_table", sinusoidal_table(k, hidden)[None], persistent=False)  # (1, K, H)
        self.xa_ln = nn.LayerNorm(hidden)
        self.text_ln = nn.LayerNorm(hidden)
        self.vision_ln = nn.LayerNorm(hidden)
        self.mlp_ln = nn.LayerNorm(hidden)
        self.self_attn = Ret2Attention(config, bias=True)
        self.text_attn = Ret2Attention(config, bias=False)
        self.vision_attn = Ret2Attention(config, bias=False)
        self.text_input_gate = nn.Linear(hidden, hidden)
        self.vision_input_gate = nn.Linear(hidden, hidden)
        self.text_forget_gate = nn.Linear(hidden, hidden)
        self.vision_forget_gate = nn.Linear(hidden, hidden)
        self.mlp = Ret2MLP(config)
        self.input_bias = config.input_gate_bias_prior
        self.forget_bias = config.forget_gate_bias_prior
        self.squash = torch.tanh if config.use_tanh else (lambda x: x)
        self.gated = config.gated

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """The state before the first step: the learned latent tokens, (1, K, H), shared by the whole batch.

        Every sample starts from the same state, so the first step's self-attention and cross-attention queries are
        the same for all of them: kept at batch 1, they are computed once per batch instead of once per sample (7% of
        the cell's FLOPs with 3 steps); the state becomes (B, K, H) when the modalities come in. Training with
        attention dropout is the exception: each sample then draws its own dropout mask, so each gets its own copy.
        """
        if self.training and self.self_attn.config.attention_dropout > 0:
            return self.latent_tokens.expand(batch_size, -1, -1)  # (B, K, H)
        return self.latent_tokens  # (1, K, H)

    def forward(
        self,
        state: torch.Tensor,
        text_tokens: torch.Tensor | None,
        text_padding_mask: torch.Tensor | None,
        text_mask: torch.Tensor,
        vision_tokens: torch.Tensor | None,
        vision_mask: torch.Tensor,
    ) -> torch.Tensor:
        """state (B, K, H), or (1, K, H) when all samples share it; *_tokens (B, N, H) adapted tokens or None;
        text_padding_mask (B, Nt) bool (True = attend); text_mask / vision_mask (B, 1, 1) presence in {0, 1}.
        Returns the new state (B, K, H)."""
        # The table is built in float32 and, being derived rather than saved, keeps that dtype when `from_pretrained`
        # loads the weights in bf16/fp16: cast it to the state's dtype, or the sum is promoted back to float32.
        q = state + self.position_table.to(state.dtype)  # (B or 1, K, H)
        z = self.xa_ln(q)
        carried = self.squash(q + self.self_attn(z, z))
        forget_logits = 0.0
        inputs = 0.0
        if text_tokens is not None:
            t = self.text_attn(z, self.text_ln(text_tokens), text_padding_mask)  # (B, K, H)
            gate = torch.sigmoid(self.text_input_gate(t) + self.input_bias) if self.gated else 1.0
            input_gate = gate * text_mask
            forget_logits = forget_logits + text_mask * self.text_forget_gate(t)
            inputs = inputs + self.squash(t) * input_gate
        if vision_tokens is not None:
            v = self.vision_attn(z, self.vision_ln(vision_tokens))  # (B, K, H)
            gate = torch.sigmoid(self.vision_input_gate(v) + self.input_bias) if self.gated else 1.0
            input_gate = gate * vision_mask
            forget_logits = forget_logits + vision_mask * self.vision_forget_gate(v)
            inputs = inputs + self.squash(v) * input_gate
        forget_gate = torch.sigmoid(forget_logits + self.forget_bias) if self.gated else 1.0
        c = carried * forget_gate + inputs  # (B or 1, K, H) * (B, K, H) -> (B, K, H)
        return c + self.mlp(self.mlp_ln(c))


class Ret2Encoder(nn.Module):
    """Per-tap adapters, the recurrent cell and the output projection: tower hidden states -> embedding."""

    def __init__(self, config: Ret2Config):
        super().__init__()
        text_width, vision_width = config.text_config.hidden_size, config.vision_config.hidden_size
        self.text_adapters = nn.ModuleList(nn.Linear(text_width, config.hidden_size) for _ in config.text_layer_ids)
        self.vision_adapters = nn.ModuleList(
            nn.Linear(vision_width, config.hidden_size) for _ in config.vision_layer_ids
        )
        self.cell = Ret2RecurrentCell(config)
        self.projection = nn.Linear(config.hidden_size, config.embedding_dim, bias=False)
        self.pooling = config.pooling
        self.recurrent = config.recurrent

    def forward(
        self,
        text_states: list[torch.Tensor] | None,
        text_padding_mask: torch.Tensor | None,
        text_mask: torch.Tensor,
        vision_states: list[torch.Tensor] | None,
        vision_mask: torch.Tensor,
    ) -> torch.Tensor:
        """*_states: one (B, N, width) tensor per tap, or None when no sample has that modality; masks (B,).
        Returns (B, D), or (B, K, D) when pooling is "none"; L2-normalised along D. Without `config.recurrent` (an
        ablation) every tap's step starts from the initial state and the final state is the mean of the steps'."""
        batch_size = text_mask.shape[0]
        text_gate = text_mask[:, None, None]  # (B, 1, 1)
        vision_gate = vision_mask[:, None, None]
        state = initial = self.cell.initial_state(batch_size)
        total = 0.0  # sum of the per-tap states when not recurrent
        for step in range(len(self.text_adapters)):
            text = None if text_states is None else self.text_adapters[step](text_states[step])  # (B, Nt, H)
            vision = None if vision_states is None else self.vision_adapters[step](vision_states[step])
            start = state if self.recurrent else initial
            state = self.cell(start, text, text_padding_mask, text_gate, vision, vision_gate)
            total = total if self.recurrent else total + state
        if not self.recurrent:
            state = total / len(self.text_adapters)  # (B, K, H)
        if self.pooling == "mean":
            state = state.mean(dim=1)  # (B, K, H) -> (B, H)
        return F.normalize(self.projection(state), dim=-1)


# The keywords of `save_pretrained(push_to_hub=True)` that `push_to_hub` takes.
_PUSH_TO_HUB_KEYWORDS = (
    "commit_message", "commit_description", "private", "token", "revision", "create_pr", "max_shard_size", "tags"
)


class Ret2PreTrainedModel(PreTrainedModel):
    config: Ret2Config
    config_class = Ret2Config
    base_model_prefix = "ret2"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Ret2Encoder"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        # The towers are PreTrainedModels: transformers dispatches their modules to their own `_init_weights`.
        if isinstance(module, Ret2RecurrentCell):
            init.normal_(module.latent_tokens, std=self.config.latent_init_std)
            with torch.no_grad():  # derived, never loaded: always (re)computed
                module.position_table.copy_(sinusoidal_table(*module.position_table.shape[1:])[None])
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, Ret2Model):
            init.constant_(module.logit_scale, self.config.logit_scale_init)

    def _fix_state_dict_key_on_load(self, key: str) -> tuple[str, bool]:
        """transformers 4.x only (5.x never calls it): a checkpoint saved by 5.x stores a CLIP / SigLIP tower flat
        (`text_model.embeddings.*`) where 4.x builds it nested (`text_model.text_model.embeddings.*`)."""
        key, renamed = super()._fix_state_dict_key_on_load(key)
        for tower in ("text_model", "vision_model"):
            nested = isinstance(getattr(getattr(self, tower, None), tower, None), nn.Module)
            if nested and key.startswith(f"{tower}.") and not key.startswith(f"{tower}.{tower}."):
                return f"{tower}.{key}", True
        return key, renamed

    def save_pretrained(self, save_directory: "str | os.PathLike", *args, push_to_hub: bool = False, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, plus the files that make the folder a sentence-transformers model
        (`modules.json`, `config_sentence_transformers.json`; the module's code, `sentence_ret2.py`, is copied with
        the modeling file). With `push_to_hub=True` the complete model is uploaded through `push_to_hub` (keywords
        `repo_id`, default the folder's name, `commit_message`, `private`, `token`, ...): transformers would upload
        inside `save_pretrained`, before the sentence-transformers files are written."""
        super().save_pretrained(save_directory, *args, **kwargs)  # without push_to_hub, the Hub keywords are unused
        if kwargs.get("is_main_process", True):
            write_sentence_transformers_files(save_directory)
            if push_to_hub:
                hub = {k: v for k, v in kwargs.items() if k in _PUSH_TO_HUB_KEYWORDS}
                self.push_to_hub(kwargs.get("repo_id", os.path.basename(os.path.normpath(save_directory))), **hub)


def build_tower(config: PretrainedConfig) -> PreTrainedModel:
    """The bare encoder for a tower config. `AutoModel` covers most families; a few tower configs (e.g.
    `SiglipTextConfig`) are not in its mapping but have a model class named after them."""
    try:
        return AutoModel.from_config(config)
    except ValueError:
        model_class = getattr(transformers, type(config).__name__.removesuffix("Config") + "Model", None)
        if model_class is None:
            raise
        return model_class(config)


def encode_samples(
    encode: Callable[..., torch.Tensor],
    processor: Ret2Processor,
    samples: Sequence[tuple[str | None, object | None]],
    *,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    image_orientation: str = "upright",
    open_image: Callable[[int, object], object] | None = None,
    show_progress_bar: bool = False,
    desc: str = "Encoding",
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The one batching engine: embeddings of (text, image) samples through `encode` (a model's `encode_queries` or
    `encode_documents`), rows in input order. `Ret2Model.encode`, evaluation and the index all encode through it.

    Samples are sorted by modality and text length (image-only, then text+image, then text-only, longest text first
    within each group), so a batch runs as few towers and as little padding as it can; each batch is loaded and
    preprocessed by `Ret2InputBatches` (in `num_workers` DataLoader workers while the model encodes). Image files are
    read with `image_orientation`, or by `open_image(index, image)` when given (a picklable callable: a caller that
    knows where each sample came from names it in errors). `on_batch(n)` is called after each batch of n samples (a
    caller's own progress bar, over several calls).

    Returns:
        (N, D) or (N, K, D) embeddings on `device`, in the model's dtype.
    """
    # (group, -text length) sort key: image-only first, then text+image, then text-only.
    order = sorted(range(len(samples)), key=lambda i: (samples[i][0] is not None, samples[i][1] is None,
                                                       -len(samples[i][0] or "")))  # fmt: skip
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    loader = torch.utils.data.DataLoader(
        Ret2InputBatches(processor, list(samples), batches, image_orientation, open_image), batch_size=None,
        num_workers=num_workers, pin_memory=device.type == "cuda",
    )  # fmt: skip
    embeddings = []
    with torch.inference_mode():
        for features in logging.tqdm(loader, total=len(batches), disable=not show_progress_bar, desc=desc):
            embeddings.append(encode(**{k: v.to(device, non_blocking=True) for k, v in features.items()}))
            if on_batch is not None:
                on_batch(len(embeddings[-1]))
        # Rows come in sorted order: row r of the concatenation is input order[r].
        restore = torch.empty(len(order), dtype=torch.long)
        restore[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        return torch.cat(embeddings)[restore.to(device)]


class Ret2Model(Ret2PreTrainedModel):
    """ReT-2 retriever: one embedding per query or document made of text, an image, or both.

    Example:

    ```python
    >>> from transformers import AutoModel, AutoProcessor
    >>> model = AutoModel.from_pretrained("path/or/hub-id", trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained("path/or/hub-id", trust_remote_code=True)
    >>> queries = processor(text=["a red circle", None], images=[None, image], return_tensors="pt")
    >>> scores = model.similarity(model.encode_queries(**queries), model.encode_documents(**documents))
    ```
    """

    def __init__(self, config: Ret2Config):
        super().__init__(config)
        self.text_model = build_tower(config.text_config)
        self.vision_model = build_tower(config.vision_config)
        self.query_encoder = Ret2Encoder(config)
        # ReT-2 shares one encoder between queries and documents; ReT-1 (share_encoder=False) has one per side.
        self.document_encoder = None if config.share_encoder else Ret2Encoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))
        self.text_model.requires_grad_(not config.freeze_text_tower)
        self.vision_model.requires_grad_(not config.freeze_vision_tower)
        self.post_init()

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: "str | os.PathLike",
        *model_args,
        allow_missing_weights: bool = False,
        **kwargs,
    ) -> "Ret2Model":
        """[`~PreTrainedModel.from_pretrained`] that refuses a checkpoint lacking any of the model's weights.

        transformers initialises a missing weight randomly and only logs a report; a retriever with random weights
        returns meaningless rankings, so this raises a `ValueError` listing the missing keys instead. Pass
        `allow_missing_weights=True` to load anyway (e.g. to train the missing part); `output_loading_info=True`
        still returns `(model, loading_info)`.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        missing = sorted(info["missing_keys"])
        if missing and not allow_missing_weights:
            listing = str(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise ValueError(
                f"{pretrained_model_name_or_path} is missing {len(missing)} weight(s) of {cls.__name__}: {listing}. "
                "They would be randomly initialised and the embeddings meaningless; pass allow_missing_weights=True "
                "to load anyway (e.g. to train them)."
            )
        return (model, info) if output_loading_info else model

    @classmethod
    def from_backbone(cls, name_or_path: str, **config_kwargs) -> "Ret2Model":
        """Start a ReT-2 model from a pretrained CLIP or SigLIP checkpoint (hub id or local folder).

        The towers get the checkpoint's text and vision weights; adapters, cell and projection are freshly
        initialised. `config_kwargs` go to [`Ret2Config`] (e.g. `freeze_vision_tower=True`).
        """
        backbone_config = AutoConfig.from_pretrained(name_or_path)
        missing = [name for name in ("text_config", "vision_config") if getattr(backbone_config, name, None) is None]
        if missing:
            raise ValueError(
                f"{name_or_path!r} is a {type(backbone_config).__name__} without {missing}; from_backbone needs a "
                "dual-encoder checkpoint such as CLIP or SigLIP."
            )
        config = Ret2Config(
            text_config=backbone_config.text_config, vision_config=backbone_config.vision_config, **config_kwargs
        )
        config.text_config._name_or_path = config.vision_config._name_or_path = str(name_or_path)
        model = cls(config)
        backbone = AutoModel.from_pretrained(name_or_path)
        for name in ("text_model", "vision_model"):
            source = getattr(backbone, name)  # e.g. CLIPModel.text_model: a CLIPTextTransformer
            target = getattr(model, name)  # e.g. CLIPTextModel, whose `.text_model` is that same class
            target = getattr(target, name, target)
            target.load_state_dict(source.state_dict())
        return model

    def _tower_states(
        self, tower: nn.Module, layer_ids: list[int], present: torch.Tensor, **inputs: torch.Tensor
    ) -> list[torch.Tensor] | None:
        """Run a tower and return its tapped layers, each (B, N, width).

        With `skip_missing_modalities`, the tower runs only on the samples where `present` is True; the others get
        zero features, which the cell's masks remove exactly as they remove a placeholder's.
        """
        # Ask for the tapped hidden states only: the tower then frees every other layer's output as it goes instead
        # of returning them all (3 of 13 kept at ViT-B/32, 3 of 25 at ViT-L/14). A tower that only understands the
        # flag reads the list as True and returns them all, which the indexing below handles the same way.
        selected = [i + 1 for i in layer_ids]
        # A frozen tower fed inputs that want no gradient needs no autograd graph. Activation checkpointing hooks the
        # towers' input embeddings to require grad (for PEFT); without this, a frozen tower would then record a
        # graph, recompute every block in the backward and backpropagate through all of them for nothing.
        needs_graph = any(p.requires_grad for p in tower.parameters()) or any(v.requires_grad for v in inputs.values())
        grad = torch.is_grad_enabled() and needs_graph
        skip = self.config.skip_missing_modalities
        if skip and not bool(present.any()):
            return None
        rows = present.nonzero().squeeze(1) if skip and not bool(present.all()) else None  # None: every sample
        with torch.set_grad_enabled(grad):
            batch = inputs if rows is None else {k: v[rows] for k, v in inputs.items()}
            hidden = tower(**batch, output_hidden_states=selected).hidden_states
        if rows is None:
            return [hidden[i + 1] for i in layer_ids]
        batch_size = present.shape[0]
        states = []
        for i in layer_ids:
            tapped = hidden[i + 1]  # (B_present, N, width)
            states.append(tapped.new_zeros((batch_size, *tapped.shape[1:])).index_copy(0, rows, tapped))
        return states

    def _encode(
        self,
        encoder: Ret2Encoder,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        vision_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        vocab_size = self.text_model.get_input_embeddings().num_embeddings
        check_encode_inputs(input_ids, attention_mask, pixel_values, text_mask, vision_mask, vocab_size)
        batch_size = (input_ids if input_ids is not None else pixel_values).shape[0]
        device = self.logit_scale.device
        text_mask = _presence(text_mask, input_ids, batch_size, device, "text_mask", "input_ids")
        vision_mask = _presence(vision_mask, pixel_values, batch_size, device, "vision_mask", "pixel_values")
        if bool((text_mask + vision_mask == 0).any()):
            empty = (text_mask + vision_mask == 0).nonzero().flatten().tolist()
            raise ValueError(f"Samples {empty} have neither text nor image (text_mask and vision_mask are both 0).")

        text_states = text_padding_mask = None
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_states = self._tower_states(
                self.text_model, self.config.text_layer_ids, text_mask.bool(),
                input_ids=input_ids, attention_mask=attention_mask,
            )  # fmt: skip
            # Samples without text attend to every (zeroed or placeholder) token: the gates drop them anyway, and a
            # fully padded row would make the softmax NaN, which no mask can multiply away.
            text_padding_mask = attention_mask.bool() | ~text_mask.bool()[:, None]  # (B, Nt)
        vision_states = None
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.vision_model.dtype)
            vision_states = self._tower_states(
                self.vision_model, self.config.vision_layer_ids, vision_mask.bool(), pixel_values=pixel_values
            )
        dtype = self.query_encoder.projection.weight.dtype
        return encoder(text_states, text_padding_mask, text_mask.to(dtype), vision_states, vision_mask.to(dtype))

    def encode_queries(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        vision_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode queries (text, image, or both) into L2-normalised embeddings.

        Args:
            input_ids, attention_mask (`torch.LongTensor` of shape `(B, Nt)`, *optional*): tokenised text.
            pixel_values (`torch.FloatTensor` of shape `(B, 3, height, width)`, *optional*): preprocessed images.
            text_mask, vision_mask (`torch.Tensor` of shape `(B,)`, *optional*): 1 where the sample has that
                modality, 0 where its entry is a placeholder. Default: present for every sample iff the input is given.

        Returns:
            `torch.FloatTensor` of shape `(B, embedding_dim)`, or `(B, K, embedding_dim)` when `pooling="none"`.
        """
        return self._encode(self.query_encoder, input_ids, attention_mask, pixel_values, text_mask, vision_mask)

    def encode_documents(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        vision_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode documents; same inputs and outputs as [`~Ret2Model.encode_queries`]."""
        encoder = self.document_encoder if self.document_encoder is not None else self.query_encoder
        return self._encode(encoder, input_ids, attention_mask, pixel_values, text_mask, vision_mask)

    def encode(
        self,
        inputs: Sequence,
        *,
        kind: str,
        processor: Ret2Processor | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to: str = "numpy",
        num_workers: int = 0,
        image_orientation: str = "upright",
        truncate_dim: int | None = None,
    ) -> "np.ndarray | torch.Tensor":
        """Encode raw queries or documents: texts, images, or both per sample, in one call.

        Args:
            inputs: a list; each entry is one query or document:
                - `str`: text (a plain string is always text here, never a path);
                - `pathlib.Path`, `PIL.Image.Image` or an H x W (x C) `numpy` array: an image;
                - `(text, image)` or `{"text": ..., "image": ...}`: both, either part may be `None`; the image may then
                  also be a `str` path.
            kind: `"query"` or `"document"` (the query or the document encoder; the same one when
                `config.share_encoder`).
            processor: the model's [`Ret2Processor`]; default: loaded once from `self.name_or_path` with
                `AutoProcessor` and kept.
            batch_size: samples per forward pass. Samples are sorted by modality and text length first (fewer towers
                run per batch, less padding) and the output is in input order; the embeddings equal those of
                [`~Ret2Model.encode_queries`] / [`~Ret2Model.encode_documents`] on the processor's tensors.
            show_progress_bar: default: shown when there is more than one batch (and transformers' progress bars
                are enabled).
            convert_to: `"numpy"` (float32 array) or `"torch"` (a tensor on the model's device, in its dtype).
            num_workers: DataLoader worker processes that read and preprocess the next batches while the model
                encodes (0: in this process).
            image_orientation: how image files are read: `"upright"` (turned by their EXIF orientation, as a photo
                viewer shows them) or `"stored"` (as stored, EXIF orientation ignored: the M-BEIR / M2KR benchmarks'
                protocol). PIL images and arrays are taken as given.
            truncate_dim: keep only the first `truncate_dim` components of each embedding and L2-normalise them again
                (Matryoshka sizes, `truncate_embeddings`); in [1, embedding_dim], with a warning when the model was
                not trained for that size (`config.matryoshka_dims`). None: the full embedding.

        Returns:
            `(N, embedding_dim or truncate_dim)`, or `(N, K, embedding_dim or truncate_dim)` when `pooling="none"`;
            L2-normalised.
        """
        if kind not in ("query", "document"):
            raise ValueError(f"kind={kind!r} is not valid; valid: ['document', 'query'].")
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to={convert_to!r} is not valid; valid: ['numpy', 'torch'].")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1.")
        if isinstance(inputs, (str, tuple, dict, os.PathLike)) or not isinstance(inputs, Sequence):
            raise TypeError(f"inputs must be a list of samples, got a {type(inputs).__name__}: wrap one sample in [].")
        self.config.check_truncate_dim(truncate_dim)
        processor = processor if processor is not None else self._default_processor()
        samples = [split_input(item) for item in inputs]
        if not samples:
            shape = (0, self.config.num_latent_tokens) if self.config.pooling == "none" else (0,)
            out = torch.empty(*shape, self.config.embedding_dim, device=self.device, dtype=self.dtype)
        else:
            out = encode_samples(
                self.encode_queries if kind == "query" else self.encode_documents, processor, samples,
                device=self.device, batch_size=batch_size, num_workers=num_workers,
                image_orientation=image_orientation,
                show_progress_bar=show_progress_bar if show_progress_bar is not None else len(samples) > batch_size,
            )  # fmt: skip
        out = truncate_embeddings(out, truncate_dim)
        return out.float().cpu().numpy() if convert_to == "numpy" else out

    def _default_processor(self) -> Ret2Processor:
        """The processor saved beside the model, loaded once."""
        if getattr(self, "_processor", None) is None:
            if not self.name_or_path:
                raise ValueError(
                    "This model was not loaded from a folder or the Hub, so it has no processor to load: pass "
                    "processor= to encode."
                )
            self._processor = AutoProcessor.from_pretrained(self.name_or_path, trust_remote_code=True)
        return self._processor

    def compile(self, **kwargs) -> None:
        """Compile the towers and the query/document encoders in place with `torch.compile(**kwargs)`, so that
        `encode_queries`, `encode_documents`, `encode` and `forward` all run compiled. The masking and tower-skipping
        logic between them stays in Python (it depends on which samples have which modality).

        `torch.compile(model)` compiles only `forward` and returns a wrapper whose `encode_*` methods run eager: call
        `model.compile()` instead.

        Compiling happens at the first batch of each modality mix (text only, image only, both run different
        towers), and again at the first batch of another shape (batch size, text length), after which torch treats
        those sizes as dynamic and reuses the graph. Each costs tens of seconds on a CPU. `dynamic=True` compiles
        size-generic graphs from the first batch of each mix, sparing the second compile; fixed batch sizes do too.
        """
        for module in (self.text_model, self.vision_model, self.query_encoder, self.document_encoder):
            if module is not None:
                module.compile(**kwargs)

    similarity = staticmethod(similarity)
    truncate_embeddings = staticmethod(truncate_embeddings)

    def forward(
        self,
        query_input_ids: torch.Tensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
        query_pixel_values: torch.Tensor | None = None,
        query_text_mask: torch.Tensor | None = None,
        query_vision_mask: torch.Tensor | None = None,
        doc_input_ids: torch.Tensor | None = None,
        doc_attention_mask: torch.Tensor | None = None,
        doc_pixel_values: torch.Tensor | None = None,
        doc_text_mask: torch.Tensor | None = None,
        doc_vision_mask: torch.Tensor | None = None,
    ) -> Ret2Output:
        """Encode a batch of queries and/or documents in one call (one call per step keeps DDP's hooks right).

        The `query_*` and `doc_*` arguments are the inputs of [`~Ret2Model.encode_queries`] and
        [`~Ret2Model.encode_documents`]; the side whose inputs are all missing is skipped.
        """
        query_embeds = doc_embeds = None
        if query_input_ids is not None or query_pixel_values is not None:
            query_embeds = self.encode_queries(
                query_input_ids, query_attention_mask, query_pixel_values, query_text_mask, query_vision_mask
            )
        if doc_input_ids is not None or doc_pixel_values is not None:
            doc_embeds = self.encode_documents(
                doc_input_ids, doc_attention_mask, doc_pixel_values, doc_text_mask, doc_vision_mask
            )
        # A view, not the parameter itself: DDP (find_unused_parameters=True) finds the parameters a step used by
        # walking the outputs' autograd graph, and a bare leaf parameter has none.
        return Ret2Output(query_embeds=query_embeds, doc_embeds=doc_embeds, logit_scale=self.logit_scale.view(()))


# Preprocessed pixels (rescaled to [0, 1], then normalised by a per-channel mean and std) stay within a few units of 0:
# CLIP's lie in [-1.8, 2.2], ImageNet-normalised ones in [-2.2, 2.7], SigLIP's in [-1, 1]. Raw 0..255 pixels do not.
MAX_ABS_PIXEL = 50.0


def check_encode_inputs(
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    pixel_values: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    vision_mask: torch.Tensor | None,
    vocab_size: int,
) -> None:
    """Refuse encode inputs that would give a wrong embedding without a word, or fail deep inside a tower.

    Shapes and dtypes are read from metadata; values cost one reduction per given tensor (negligible beside a tower).
    Raises `ValueError` naming the argument, the bad value and what is valid.
    """
    if input_ids is None and pixel_values is None:
        raise ValueError("Nothing to encode: pass input_ids, pixel_values, or both.")
    sizes = {}
    if input_ids is not None:
        integer = not input_ids.is_floating_point() and input_ids.dtype != torch.bool
        if input_ids.dim() != 2 or input_ids.shape[1] == 0 or not integer:
            raise ValueError(
                "input_ids must be an integer tensor of shape (batch, sequence) with at least one token, got "
                f"{input_ids.dtype} of shape {tuple(input_ids.shape)}."
            )
        sizes["input_ids"] = input_ids.shape[0]
    if attention_mask is not None:
        if input_ids is None:
            raise ValueError("attention_mask is given without input_ids; pass both or neither.")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}; "
                "they must match (one 0/1 per token)."
            )
    if pixel_values is not None:
        if pixel_values.dim() != 4 or 0 in pixel_values.shape[1:] or not pixel_values.is_floating_point():
            raise ValueError(
                "pixel_values must be a floating-point tensor of shape (batch, channels, height, width), as the "
                f"processor returns, got {pixel_values.dtype} of shape {tuple(pixel_values.shape)}; integer pixels "
                "(e.g. uint8 0..255) are not preprocessed images."
            )
        sizes["pixel_values"] = pixel_values.shape[0]
    for name, mask in (("text_mask", text_mask), ("vision_mask", vision_mask)):
        if mask is not None:
            if mask.dim() != 1:
                raise ValueError(f"{name} must have shape (batch,), one 0/1 per sample, got shape {tuple(mask.shape)}.")
            sizes[name] = mask.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"The inputs disagree on the batch size: {sizes}; each needs one entry per sample.")
    if next(iter(sizes.values())) == 0:
        raise ValueError(f"Empty batch: the inputs have 0 samples ({sizes}); encode at least one.")

    for name, mask in (("text_mask", text_mask), ("vision_mask", vision_mask), ("attention_mask", attention_mask)):
        if mask is not None:
            bad = (mask != 0) & (mask != 1)
            if bool(bad.any()):
                rows = bad.reshape(mask.shape[0], -1).any(1).nonzero().flatten().tolist()
                raise ValueError(
                    f"{name} holds {sorted(set(mask[bad].tolist()))[:5]} at samples {rows}; valid values are 0 and 1."
                )
    if input_ids is not None:
        low, high = (int(v) for v in input_ids.aminmax())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"input_ids holds token ids in [{low}, {high}], but the text tower embeds ids in "
                f"[0, {vocab_size - 1}]; tokenise with this model's processor."
            )
        if attention_mask is not None:
            empty = (attention_mask.sum(1) == 0).cpu()
            if text_mask is not None:
                empty &= text_mask.bool().cpu()  # a row without text may be anything: the masks drop it
            if bool(empty.any()):
                raise ValueError(
                    f"attention_mask is all 0 for samples {empty.nonzero().flatten().tolist()}, which text_mask marks "
                    "as having text: a present text needs at least one token (set text_mask to 0 where there is none)."
                )
    if pixel_values is not None:
        low, high = (float(v) for v in pixel_values.detach().aminmax())  # one pass, no copy; NaN propagates
        peak = max(-low, high)
        if not math.isfinite(peak):
            rows = (~torch.isfinite(pixel_values).flatten(1).all(1)).nonzero().flatten().tolist()
            raise ValueError(f"pixel_values of samples {rows} hold NaN or inf; every value must be finite.")
        if peak > MAX_ABS_PIXEL:
            raise ValueError(
                f"pixel_values reach {peak:.1f}, but preprocessed images (rescaled to [0, 1], then normalised) stay "
                f"within +-{MAX_ABS_PIXEL:g}: these look like raw 0..255 pixels; pass the images through the processor."
            )


def _presence(
    mask: torch.Tensor | None, inputs: torch.Tensor | None, batch_size: int, device: torch.device, name: str, src: str
) -> torch.Tensor:
    """Per-sample presence of a modality as a (B,) float tensor; the input must exist where the mask says 1."""
    if mask is None:
        return torch.full((batch_size,), float(inputs is not None), device=device)
    mask = mask.to(device=device, dtype=torch.float32).flatten()
    if mask.shape[0] != batch_size:
        raise ValueError(f"{name} has {mask.shape[0]} entries for a batch of {batch_size}.")
    if inputs is None and bool(mask.any()):
        raise ValueError(f"{name} marks samples {mask.nonzero().flatten().tolist()} as present but {src} is None.")
    return mask


__all__ = [
    "Ret2Model", "Ret2PreTrainedModel", "Ret2Output", "Ret2RecurrentCell", "Ret2Encoder", "similarity",
    "truncate_embeddings",
]
