"""ReT-2 model configuration.

This file and its siblings travel with every saved model (remote code) and load on transformers 4.57 and newer, 4.x and
5.x alike: the config is written in the `__init__` style both lines accept.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import transformers

# The oldest transformers a saved ReT-2 model loads on (4.57.6 and 5.24.0 tested: tests/modeling_ret2/test_transformers_versions.py).
MIN_TRANSFORMERS_VERSION = "4.57.0"


def check_transformers_version(installed: str) -> None:
    """Raise one clear ImportError when `installed` (a transformers version string) is older than
    `MIN_TRANSFORMERS_VERSION`, instead of an ImportError from deep inside the remote code."""
    def release(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", version)[:3])

    if release(installed) < release(MIN_TRANSFORMERS_VERSION):
        raise ImportError(
            f"This ReT-2 model needs transformers >= {MIN_TRANSFORMERS_VERSION}, but transformers {installed} is "
            f"installed: pip install -U 'transformers>={MIN_TRANSFORMERS_VERSION}'"
        )


check_transformers_version(transformers.__version__)

from transformers import AutoConfig, PretrainedConfig  # noqa: E402  (PretrainedConfig: the name both 4.x and 5.x have)
from transformers.utils import logging  # noqa: E402

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


def _tower_depth(config: PretrainedConfig) -> int:
    depth = getattr(config, "num_hidden_layers", None)
    if depth is None:
        raise ValueError(f"Cannot read the depth (`num_hidden_layers`) of the {type(config).__name__} tower config.")
    return depth


def _tower_config(config: dict | PretrainedConfig | None, default_model_type: str) -> PretrainedConfig:
    """A tower config from a config, a dict (its `model_type` picks the class; default: `default_model_type`) or
    None (the default tower)."""
    if isinstance(config, PretrainedConfig):
        return config
    config = dict(config or {})
    return AutoConfig.for_model(config.pop("model_type", default_model_type), **config)


def _integer(value: object) -> int | None:
    """`value` as an int if it is an integer (numpy integers included, bools not), else None."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return None
    try:
        return value.__index__()
    except TypeError:  # e.g. a tensor of several elements
        return None


def _real(value: object) -> float | None:
    """`value` as a float if it is a real number (ints and numpy floats included, bools and strings not), else None."""
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _layer_ids(value: object) -> list[int] | None:
    if not isinstance(value, (list, tuple)):
        return None
    ids = [_integer(i) for i in value]
    return None if None in ids else ids


# kind -> (the value converted to that kind, or None if it is not of that kind; the kind in words)
_KINDS: dict[str, tuple[Callable[[object], object], str]] = {
    "int": (_integer, "an int"),
    "float": (_real, "a float (or int)"),
    "bool": (lambda v: v if isinstance(v, bool) else None, "a bool (True or False)"),
    "str": (lambda v: v if isinstance(v, str) else None, "a str"),
    "layer_ids": (_layer_ids, "a list of ints"),
    "config": (lambda v: v if isinstance(v, (dict, PretrainedConfig)) else None, "a dict or a PretrainedConfig"),
}


@dataclass(frozen=True)
class FieldRule:
    """What a `Ret2Config` field may hold: its kind (a key of `_KINDS`), optionally a test of the value and the
    valid values in words, and whether None is allowed (the field is then derived in `__init__`)."""

    kind: str
    check: Callable[[object], bool] | None = None
    valid: str = ""
    optional: bool = False

    def apply(self, name: str, value: object) -> object:
        """`value` converted to the field's kind (ints for floats, numpy numbers, tuples for lists); raises
        `TypeError` for another type and `ValueError` for a value outside the valid ones, naming field and value."""
        if value is None and self.optional:
            return None
        convert, kind_words = _KINDS[self.kind]
        converted = convert(value)
        if converted is None:
            got = type(value).__name__
            if isinstance(value, (list, tuple)) and self.kind == "layer_ids":
                index = next(i for i, item in enumerate(value) if _integer(item) is None)
                got += f" with a {type(value[index]).__name__} at index {index}"
            raise TypeError(f"{name}={value!r} must be {kind_words}, got {got}.")
        if self.check is not None and not self.check(converted):
            raise ValueError(f"{name}={converted!r} must be {self.valid}.")
        return converted


_POSITIVE = dict(check=lambda v: v >= 1, valid="a positive integer")
_PROBABILITY = dict(check=lambda v: 0.0 <= v < 1.0, valid="in [0, 1)")
_STD = dict(check=lambda v: v > 0, valid="> 0")
_FINITE = dict(check=math.isfinite, valid="a finite number")
_INCREASING = dict(
    check=lambda ids: all(a < b for a, b in zip(ids, ids[1:])),
    valid="strictly increasing: the cell walks the taps shallow to deep, each once",
)
# Every field Ret2Config declares, checked on every assignment (construction, from_pretrained overrides, setattr).
# Checks that involve several fields (taps within the tower's depth, heads dividing the width) run in `_validate`.
FIELD_RULES: dict[str, FieldRule] = {
    "text_config": FieldRule("config", optional=True),
    "vision_config": FieldRule("config", optional=True),
    "text_layer_ids": FieldRule("layer_ids", **_INCREASING, optional=True),
    "vision_layer_ids": FieldRule("layer_ids", **_INCREASING, optional=True),
    "layer_preset": FieldRule(
        "str", check=lambda v: v in LAYER_PRESETS, valid=f"one of {sorted(LAYER_PRESETS)}", optional=True
    ),
    "hidden_size": FieldRule("int", **_POSITIVE),
    "num_latent_tokens": FieldRule("int", **_POSITIVE),
    "num_attention_heads": FieldRule("int", **_POSITIVE, optional=True),
    "pooling": FieldRule("str", check=lambda v: v in POOLING_MODES, valid=f"one of {list(POOLING_MODES)}"),
    "embedding_dim": FieldRule("int", **_POSITIVE),
    "share_encoder": FieldRule("bool"),
    "freeze_text_tower": FieldRule("bool"),
    "freeze_vision_tower": FieldRule("bool"),
    "input_gate_bias_prior": FieldRule("float", **_FINITE),
    "forget_gate_bias_prior": FieldRule("float", **_FINITE),
    "use_tanh": FieldRule("bool"),
    "dropout": FieldRule("float", **_PROBABILITY),
    "attention_dropout": FieldRule("float", **_PROBABILITY),
    "latent_init_std": FieldRule("float", **_STD),
    "initializer_range": FieldRule("float", **_STD),
    "logit_scale_init": FieldRule("float", **_FINITE),
    "gated": FieldRule("bool"),
    "recurrent": FieldRule("bool"),
    "skip_missing_modalities": FieldRule("bool"),
    "matryoshka_dims": FieldRule(
        "layer_ids", check=lambda dims: len(dims) > 0 and min(dims) >= 1 and len(set(dims)) == len(dims),
        valid="a non-empty list of distinct positive sizes (e.g. [768, 256, 64])", optional=True,
    ),
}


class Ret2Config(PretrainedConfig):
    r"""
    Configuration of a [`Ret2Model`]: a text tower, a vision tower, and the gated recurrent cell that walks over a few
    of their layers and pools its latent state into one embedding.

    Args:
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the text tower: any Hugging Face encoder that returns `hidden_states` (CLIP or SigLIP text
            towers, BERT-family encoders). A dict must carry `model_type`. Defaults to a CLIP ViT-B/32 text tower.
        vision_config (`dict` or `PretrainedConfig`, *optional*):
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
        matryoshka_dims (`list[int]`, *optional*):
            The embedding sizes the model was trained for (`ret2-train --matryoshka_dims`): the contrastive loss was
            summed over these prefixes of the embedding, each re-normalised. Recorded, not used by `forward`;
            `encode(..., truncate_dim=d)` warns when `d` is not one of them. None: trained at full size only.

    Every field is checked when it is set (`FIELD_RULES`): a value of the wrong type raises `TypeError` (ints are
    accepted for floats, only `True` / `False` for bools), a value outside the valid ones raises `ValueError`, both
    naming the field, the value and what is valid. Layer ids must be strictly increasing.

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
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        vision_config: dict | PretrainedConfig | None = None,
        text_layer_ids: list[int] | None = None,
        vision_layer_ids: list[int] | None = None,
        layer_preset: str | None = None,
        hidden_size: int = 1024,
        num_latent_tokens: int = 32,
        num_attention_heads: int | None = None,
        pooling: str = "mean",
        embedding_dim: int = 768,
        share_encoder: bool = True,
        freeze_text_tower: bool = False,
        freeze_vision_tower: bool = False,
        input_gate_bias_prior: float = 0.0,
        forget_gate_bias_prior: float = 0.0,
        use_tanh: bool = False,
        dropout: float = 0.05,
        attention_dropout: float = 0.05,
        latent_init_std: float = 0.2,
        initializer_range: float = 0.02,
        logit_scale_init: float = 2.6592,
        gated: bool = True,
        recurrent: bool = True,
        skip_missing_modalities: bool = True,
        matryoshka_dims: list[int] | None = None,
        **kwargs,
    ):
        arguments = locals()
        for name in FIELD_RULES:  # each checked by __setattr__
            setattr(self, name, arguments[name])
        self.text_config = _tower_config(self.text_config, "clip_text_model")
        self.vision_config = _tower_config(self.vision_config, "clip_vision_model")
        if self.layer_preset is not None:
            text_ids, vision_ids = LAYER_PRESETS[self.layer_preset]
            self.text_layer_ids, self.vision_layer_ids = list(text_ids), list(vision_ids)
        if self.text_layer_ids is None:
            self.text_layer_ids = default_layer_ids(_tower_depth(self.text_config))
        if self.vision_layer_ids is None:
            self.vision_layer_ids = default_layer_ids(_tower_depth(self.vision_config))
        if self.num_attention_heads is None:
            self.num_attention_heads = max(1, self.hidden_size // 64)
        super().__init__(**kwargs)
        self._validate()

    def __setattr__(self, name: str, value: object) -> None:
        # Every declared field is type- and range-checked as it is set (see FIELD_RULES), as transformers' `@strict`
        # configs do; ints become floats where a float is expected, and tuples of ints lists.
        rule = FIELD_RULES.get(name)
        super().__setattr__(name, value if rule is None else rule.apply(name, value))

    def _validate(self) -> None:
        for name, tower in (("text_layer_ids", self.text_config), ("vision_layer_ids", self.vision_config)):
            ids, depth = list(getattr(self, name)), _tower_depth(tower)
            if not ids:
                raise ValueError(f"{name} is empty; give at least one tapped block in [0, {depth - 1}].")
            bad = [i for i in ids if not 0 <= i < depth]
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
        too_large = [d for d in self.matryoshka_dims or () if d > self.embedding_dim]
        if too_large:
            raise ValueError(
                f"matryoshka_dims={self.matryoshka_dims} has sizes {too_large} above embedding_dim={self.embedding_dim}; "
                f"valid sizes are in [1, {self.embedding_dim}]."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                f"valid head counts divide {self.hidden_size}."
            )

    def check_truncate_dim(self, truncate_dim: int | None) -> None:
        """Refuse a `truncate_dim` the embeddings cannot be cut to (ValueError naming it and the valid range); log a
        warning when the model was not trained for that size (not one of `matryoshka_dims`): it still works, usually
        with lower quality. None (no truncation) passes."""
        if truncate_dim is None:
            return
        size = _integer(truncate_dim)
        if size is None or not 1 <= size <= self.embedding_dim:
            raise ValueError(
                f"truncate_dim={truncate_dim!r} is not valid for this model: give an integer in [1, "
                f"{self.embedding_dim}] (its embedding_dim), or None for the full embedding."
            )
        trained = self.matryoshka_dims or [self.embedding_dim]
        if size not in trained:
            logger.warning(
                f"truncate_dim={size}: this model was trained for the sizes {sorted(trained, reverse=True)}, not "
                f"{size}; its {size}-d prefixes may rank worse (train with --matryoshka_dims to supervise them)."
            )

    @property
    def num_steps(self) -> int:
        """Number of recurrent steps: one per tapped (text, vision) layer pair."""
        return len(self.text_layer_ids)


__all__ = ["Ret2Config", "FIELD_RULES", "LAYER_PRESETS", "default_layer_ids"]
