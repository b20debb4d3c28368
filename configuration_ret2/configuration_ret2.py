"""ReT-2 model configuration."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

logger = logging.get_logger(__name__)

POOLING_MODES = ("mean", "none")

# Named tap strategies: (text_layer_ids, vision_layer_ids), 0-based into `hidden_states[1:]`.
# The `ret1-*` presets are the strategies of the ReT-1 checkpoints (arXiv 2503.01980).
LAYER_PRESETS: dict[str, tuple[list[int], list[int]]] = {
    "ret1-clip-b": (list(range(12)), list(range(12))),
    "ret1-clip-l": (list(range(12)), list(range(0, 24, 2))),
    "ret1-openclip-h": (list(range(1, 24, 2)), [0, 2] + list(range(5, 30, 3)) + [31]),
    "ret1-openclip-g": (list(range(0, 30, 2)) + [31], list(range(2, 48, 3))),
}


def default_layer_ids(depth: int, num_taps: int = 3) -> list[int]:
    """Evenly spaced early / middle / late taps ending at the last block: depth 12 -> [3, 7, 11]."""
    return sorted({round(depth * (i + 1) / num_taps) - 1 for i in range(num_taps)})


def _tower_depth(config: PreTrainedConfig) -> int:
    depth = getattr(config, "num_hidden_layers", None)
    if depth is None:
        raise ValueError(f"Cannot read the depth (`num_hidden_layers`) of the {type(config).__name__} tower config.")
    return depth


class Ret2Config(PreTrainedConfig):
    r"""
    Configuration of a [`Ret2Model`]: a text tower, a vision tower, and the gated recurrent cell that walks over a few
    of their layers and pools its latent state into one embedding.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the text tower: any Hugging Face encoder that returns `hidden_states` (CLIP or SigLIP text
            towers, BERT-family encoders). A dict must carry `model_type`. Defaults to a CLIP ViT-B/32 text tower.
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision tower (CLIP or SigLIP vision towers). Defaults to a CLIP ViT-B/32 vision tower.
        text_layer_ids (`list[int]`, *optional*):
            Tapped text blocks, 0-based into `hidden_states[1:]` (the output of each block). Defaults to three taps,
            early / middle / late, from the tower's depth (12 blocks -> `[3, 7, 11]`).
        vision_layer_ids (`list[int]`, *optional*):
            Tapped vision blocks, as `text_layer_ids`. Both lists must have the same length: the cell takes one step
            per tap pair, shallow to deep.
        layer_preset (`str`, *optional*):
            A named tap strategy from `LAYER_PRESETS` (the ReT-1 strategies); overrides the two lists above.
        hidden_size (`int`, *optional*, defaults to 1024):
            Width of the recurrent cell. ReT-1 used 1024; at ViT-L/14 the cell then costs about 6-8% of the encode
            FLOPs, and it is the width the published ReT checkpoints were trained with.
        num_latent_tokens (`int`, *optional*, defaults to 32):
            Number K of latent tokens in the recurrent state (ReT-1: 32). They are averaged into one vector when
            `pooling="mean"`.
        num_attention_heads (`int`, *optional*):
            Heads of the cell's attentions. Defaults to `hidden_size // 64`, as ReT-1.
        pooling (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: average the latent tokens, project, L2-normalise -> one vector per item (ReT-2).
            `"none"`: project every latent token and normalise each -> `(K, embedding_dim)` scored by late interaction
            (ReT-1).
        embedding_dim (`int`, *optional*, defaults to 768):
            Output size of the projection. 768 is the joint-space width of CLIP ViT-L/14; a single 768-d vector takes
            5.3x less index memory than ReT-1's 32 x 128 tokens while keeping more capacity than any one of them.
        share_encoder (`bool`, *optional*, defaults to `True`):
            `True`: queries and documents go through one cell (ReT-2). `False`: separate query and document adapters,
            cells and projections over shared towers (ReT-1).
        freeze_text_tower (`bool`, *optional*, defaults to `False`):
            Freeze the text tower's weights.
        freeze_vision_tower (`bool`, *optional*, defaults to `False`):
            Freeze the vision tower's weights.
        input_gate_bias_prior (`float`, *optional*, defaults to 0.0):
            Constant added inside the input gates' sigmoid.
        forget_gate_bias_prior (`float`, *optional*, defaults to 0.0):
            Constant added inside the forget gate's sigmoid.
        use_tanh (`bool`, *optional*, defaults to `False`):
            Squash the carried state and the attended modalities with tanh before gating (a ReT-1 option).
        dropout (`float`, *optional*, defaults to 0.05):
            Dropout in the cell's MLP.
        attention_dropout (`float`, *optional*, defaults to 0.05):
            Dropout on the cell's attention weights.
        latent_init_std (`float`, *optional*, defaults to 0.2):
            Standard deviation of the learned latent tokens at initialisation.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the cell's linear layers at initialisation.
        logit_scale_init (`float`, *optional*, defaults to 2.6592):
            Initial value of the learnable log inverse temperature used by the contrastive loss (log(1/0.07), CLIP).
        gated (`bool`, *optional*, defaults to `True`):
            `False` is an ablation, not ReT-2: the input and forget gates are fixed open (input gate = the modality's
            presence mask, forget gate = 1), so the state adds every step's attended modalities to what it carries.
        recurrent (`bool`, *optional*, defaults to `True`):
            `False` is an ablation, not ReT-2: the cell takes each tap pair's step from the initial state
            independently, and the final state is the mean of those per-tap states (no state passed between taps).
        skip_missing_modalities (`bool`, *optional*, defaults to `True`):
            Never run a tower on samples that lack its modality. The masks make a missing modality's contribution
            exactly zero, so the embeddings are the same as running the tower on a placeholder; only faster.

    Example:

    ```python
    >>> from configuration_ret2 import Ret2Config
    >>> from modeling_ret2 import Ret2Model

    >>> config = Ret2Config()  # CLIP ViT-B/32 towers, three taps per tower
    >>> config.text_layer_ids, config.vision_layer_ids
    ([3, 7, 11], [3, 7, 11])
    >>> model = Ret2Model(config)
    ```
    """

    model_type = "ret2"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_text_model"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    text_layer_ids: list[int] | None = None
    vision_layer_ids: list[int] | None = None
    layer_preset: str | None = None
    hidden_size: int = 1024
    num_latent_tokens: int = 32
    num_attention_heads: int | None = None
    pooling: str = "mean"
    embedding_dim: int = 768
    share_encoder: bool = True
    freeze_text_tower: bool = False
    freeze_vision_tower: bool = False
    input_gate_bias_prior: float = 0.0
    forget_gate_bias_prior: float = 0.0
    use_tanh: bool = False
    dropout: float = 0.05
    attention_dropout: float = 0.05
    latent_init_std: float = 0.2
    initializer_range: float = 0.02
    logit_scale_init: float = 2.6592
    gated: bool = True
    recurrent: bool = True
    skip_missing_modalities: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.layer_preset is not None:
            if self.layer_preset not in LAYER_PRESETS:
                raise ValueError(
                    f"layer_preset={self.layer_preset!r} is not a known preset; valid: {sorted(LAYER_PRESETS)}."
                )
            text_ids, vision_ids = LAYER_PRESETS[self.layer_preset]
            self.text_layer_ids, self.vision_layer_ids = list(text_ids), list(vision_ids)
        if self.text_layer_ids is None:
            self.text_layer_ids = default_layer_ids(_tower_depth(self.text_config))
        if self.vision_layer_ids is None:
            self.vision_layer_ids = default_layer_ids(_tower_depth(self.vision_config))
        if self.num_attention_heads is None:
            self.num_attention_heads = max(1, self.hidden_size // 64)
        self._validate()

    def _validate(self) -> None:
        for name, tower in (("text_layer_ids", self.text_config), ("vision_layer_ids", self.vision_config)):
            ids, depth = list(getattr(self, name)), _tower_depth(tower)
            if not ids:
                raise ValueError(f"{name} is empty; give at least one tapped block in [0, {depth - 1}].")
            bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < depth]
            if bad:
                raise ValueError(
                    f"{name}={ids} has taps {bad} outside the {type(tower).__name__} tower's blocks: valid range is "
                    f"[0, {depth - 1}] (0-based into hidden_states[1:])."
                )
        if len(self.text_layer_ids) != len(self.vision_layer_ids):
            raise ValueError(
                f"text_layer_ids has {len(self.text_layer_ids)} taps and vision_layer_ids has "
                f"{len(self.vision_layer_ids)}; the cell takes one step per (text, vision) pair, so they must match."
            )
        for name in ("hidden_size", "num_latent_tokens", "num_attention_heads", "embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                f"valid head counts divide {self.hidden_size}."
            )
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling={self.pooling!r} is not supported; valid: {list(POOLING_MODES)}.")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1).")
        for name in ("gated", "recurrent"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False.")
        for name in ("latent_init_std", "initializer_range"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0.")

    @property
    def num_steps(self) -> int:
        """Number of recurrent steps: one per tapped (text, vision) layer pair."""
        return len(self.text_layer_ids)


__all__ = ["Ret2Config", "LAYER_PRESETS", "default_layer_ids"]
