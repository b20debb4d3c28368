"""ReT-1 -> ReT-2 conversion, checked against a plain re-implementation of ReT-1 on synthesized checkpoints.

`ret1_checkpoint` writes checkpoints in the published ReT-1 layout (architecture doc, section 4) from tensor names
alone, and `Ret1Reference` runs ReT-1 (section 3) with `torch.nn.MultiheadAttention`, loading the original tensors by
their original names (strictly). Neither touches our model, so together they pin the key mapping, the q/k/v split,
the taps and the cell arithmetic of the converter and of `Ret2Model`.
"""

import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import WORDS, pattern
from remote_code import load_in_clean_process
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModel

from ret2.commands.convert_ret1 import run as main
from ret2.conversion import convert_ret1, ret1_config_to_ret2
from modeling_ret2 import Ret2Model, Ret2Processor
from ret2.tiny import tiny_processor

H, K, D = 128, 4, 16  # cell width (ReT-1 derives H // 64 = 2 heads), latent tokens, late projection size
TEXT_WIDTH, VISION_WIDTH, IMAGE_SIZE = 32, 48, 32
# The ReT-1 strategies as the architecture doc lists them: (text taps, vision taps) into hidden_states[1:].
STRATEGIES = {
    "clip_vit_b": ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    "clip_vit_l": ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]),
    "openclip_vit_h": (
        [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23],
        [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 31],
    ),
    "openclip_vit_g": (
        [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 31],
        [2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 44, 47],
    ),
}
TOWER_DEPTHS = {"clip_vit_b": (12, 12), "clip_vit_l": (12, 24), "openclip_vit_h": (24, 32), "openclip_vit_g": (32, 48)}
# Fields transformers 4.x wrote into every nested config.json (generation defaults included); the converter must cope.
LEGACY_CONFIG_FIELDS = dict(
    add_cross_attention=False, architectures=None, bad_words_ids=None, chunk_size_feed_forward=0, do_sample=False,
    early_stopping=False, is_decoder=False, is_encoder_decoder=False, length_penalty=1.0, max_length=20,
    min_length=0, num_beams=1, output_hidden_states=False, return_dict=True, temperature=1.0, top_k=50, top_p=1.0,
    torch_dtype=None, torchscript=False, transformers_version="4.45.2", use_bfloat16=False,
)  # fmt: skip
BATCHES = {
    "text-only": (["a red circle on the left", "big blue square", "green star"], [None, None, None]),
    "image-only": ([None, None], [pattern(1), pattern(2)]),
    "image+text": (
        ["a red circle", None, "small yellow triangle top", "blue"],
        [pattern(3), pattern(4), None, pattern(5)],
    ),
}


# ---------------------------------------------------------------- the published layout, from names


def tower_configs(processor: Ret2Processor, strategy: str) -> tuple[dict, dict]:
    """ReT-1's nested tower configs: HF CLIP text/vision configs, with the legacy fields of a 4.x config.json."""
    tokenizer = processor.tokenizer
    text_depth, vision_depth = TOWER_DEPTHS[strategy]
    text = dict(
        model_type="clip_text_model", _name_or_path="openai/clip-vit-base-patch32", vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, num_hidden_layers=text_depth, num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu", projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **LEGACY_CONFIG_FIELDS,
    )  # fmt: skip
    vision = dict(
        model_type="clip_vision_model", _name_or_path="openai/clip-vit-base-patch32", hidden_size=VISION_WIDTH,
        intermediate_size=2 * VISION_WIDTH, num_hidden_layers=vision_depth, num_attention_heads=3,
        image_size=IMAGE_SIZE, patch_size=8, hidden_act="quick_gelu", projection_dim=VISION_WIDTH,
        **LEGACY_CONFIG_FIELDS,
    )  # fmt: skip
    return text, vision


def hf_tower(config: dict) -> nn.Module:
    """The HF CLIP tower of a config dict (random weights under the current seed)."""
    fields = {k: v for k, v in config.items() if k != "model_type"}
    return AutoModel.from_config(AutoConfig.for_model(config["model_type"], **fields))


def ret1_position_table() -> torch.Tensor:
    """`RetCell.query_state_ids`, computed as the ReT-1 code does."""
    position = torch.arange(H).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, H, 2) * (-math.log(10000.0) / H))
    pe = torch.zeros(1, H, H)
    pe[..., 0::2] = torch.sin(position * div_term)
    pe[..., 1::2] = torch.cos(position * div_term)
    return pe[:, :K, :]


def ret1_side_tensors(prefix: str, n_taps: int, b_in: float, b_f: float, g: torch.Generator) -> dict:
    """One side's adapters, `ret_cell` and `late_proj`, by the names and shapes of the doc's table."""

    def weight(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * cols**-0.5

    def bias(n: int) -> torch.Tensor:
        return torch.randn(n, generator=g) * 0.1

    t = {}
    for i in range(n_taps):
        for modality, width in (("text", TEXT_WIDTH), ("vision", VISION_WIDTH)):
            adapter = f"{prefix}{modality}_adapter.{i}"
            t[adapter + ".weight"], t[adapter + ".bias"] = weight(H, width), bias(H)
    cell = prefix + "ret_cell."
    t[cell + "query_hidden_states"] = torch.randn(1, K, H, generator=g) * 0.2
    t[cell + "query_state_ids"] = ret1_position_table()
    t[cell + "sa.in_proj_weight"], t[cell + "sa.in_proj_bias"] = weight(3 * H, H), bias(3 * H)
    t[cell + "sa.out_proj.weight"], t[cell + "sa.out_proj.bias"] = weight(H, H), bias(H)
    for xa in ("text_xa", "vision_xa"):
        t[f"{cell}{xa}.in_proj_weight"], t[f"{cell}{xa}.out_proj.weight"] = weight(3 * H, H), weight(H, H)
    t[cell + "mlp.0.weight"], t[cell + "mlp.0.bias"] = weight(4 * H, H), bias(4 * H)
    t[cell + "mlp.3.weight"], t[cell + "mlp.3.bias"] = weight(H, 4 * H), bias(H)
    for gate in ("text_input_gate_w", "vision_input_gate_w", "text_forget_gate_w", "vision_forget_gate_w"):
        t[f"{cell}{gate}.weight"], t[f"{cell}{gate}.bias"] = weight(H, H), bias(H)
    for ln in ("xa_ln", "text_ln", "vision_ln", "sa_ln", "mlp_ln"):
        t[f"{cell}{ln}.weight"], t[f"{cell}{ln}.bias"] = 1 + bias(H), bias(H)
    t[cell + "input_gate_bias_prior"] = torch.tensor(float(b_in))
    t[cell + "forget_gate_bias_prior"] = torch.tensor(float(b_f))
    t[prefix + "late_proj.weight"] = weight(D, H)
    return t


def ret1_checkpoint(
    processor: Ret2Processor,
    shared: bool = False,
    use_tanh: bool = False,
    b_in: float = 0.0,
    b_f: float = 0.0,
    strategy: str = "clip_vit_b",
    pooled: bool = False,
    seed: int = 0,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """A ReT-1 `config.json` dict and its tensors. Towers are stored once, under `query_model.`, in the older nested
    HF layout (`text_model.text_model.*`); the passage side is absent when `share_query_passage_models`."""
    text_config, vision_config = tower_configs(processor, strategy)
    side = dict(
        model_type="ret", text_config=text_config, vision_config=vision_config, is_text_frozen=True,
        is_vision_frozen=False, late_proj_output_size=D, layer_strategy=strategy, use_pooler_features=pooled,
        num_queries=K, hidden_size=H, intermediate_size=4 * H, num_attention_heads=H // 64, dropout_p=0.05,
        attention_dropout=0.05, activation_fn="gelu", input_gate_bias_prior=b_in, forget_gate_bias_prior=b_f,
        use_tanh=use_tanh, **LEGACY_CONFIG_FIELDS,
    )  # fmt: skip
    config = dict(
        model_type="retriever", architectures=["RetrieverModel"], query_config=side, passage_config=copy.deepcopy(side),
        fg_loss=True, simmetric_loss=True, share_query_passage_models=shared, share_text_models=True,
        share_vision_models=True, torch_dtype="float32", transformers_version="4.45.2",
    )  # fmt: skip
    tensors = {}
    torch.manual_seed(seed)
    for name, tower_config in (("text_model", text_config), ("vision_model", vision_config)):
        tower_state = hf_tower(tower_config).state_dict()
        tensors.update({f"query_model.{name}.{name}.{key}": value for key, value in tower_state.items()})
    g = torch.Generator().manual_seed(seed)
    for prefix in ["query_model."] + ([] if shared else ["passage_model."]):
        tensors.update(ret1_side_tensors(prefix, len(STRATEGIES[strategy][0]), b_in, b_f, g))
    return config, tensors


def write_ret1(folder: Path, config: dict, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """Save as the Hub checkpoints are: config.json and model.safetensors, or shards with an index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return folder
    names, weight_map = sorted(tensors), {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({name: tensors[name] for name in names[i::shards]}, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names[i::shards], file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


# ---------------------------------------------------------------- ReT-1, re-implemented from the spec


class Ret1Cell(nn.Module):
    """ReT-1's `RetCell` module for module (its state dict has the published names); forward per the spec."""

    def __init__(self, use_tanh: bool):
        super().__init__()
        self.query_hidden_states = nn.Parameter(torch.empty(1, K, H))
        self.register_buffer("query_state_ids", torch.empty(1, K, H))
        self.sa = nn.MultiheadAttention(H, H // 64, batch_first=True)
        self.text_xa = nn.MultiheadAttention(H, H // 64, batch_first=True, bias=False)
        self.vision_xa = nn.MultiheadAttention(H, H // 64, batch_first=True, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(H, 4 * H), nn.Dropout(0.05), nn.GELU(), nn.Linear(4 * H, H), nn.Dropout(0.05)
        )
        for name in ("text_input_gate_w", "vision_input_gate_w", "text_forget_gate_w", "vision_forget_gate_w"):
            setattr(self, name, nn.Linear(H, H))
        for name in ("xa_ln", "text_ln", "vision_ln", "sa_ln", "mlp_ln"):
            setattr(self, name, nn.LayerNorm(H))
        self.register_buffer("input_gate_bias_prior", torch.tensor(0.0))
        self.register_buffer("forget_gate_bias_prior", torch.tensor(0.0))
        self.act = torch.tanh if use_tanh else (lambda x: x)

    def forward(self, h, text, attention_mask, vision, m_t, m_v):
        q = h + self.query_state_ids
        z = self.xa_ln(q)
        r = q + self.sa(z, z, z, need_weights=False)[0]
        text_kv = self.text_ln(text)
        # ReT-1's additive padding mask, one (K, Nt) copy per head
        mask = torch.where(attention_mask.bool(), 0.0, torch.finfo(text.dtype).min)[:, None, :]
        mask = mask.expand(-1, K, -1).repeat_interleave(H // 64, dim=0)
        T = self.text_xa(z, text_kv, text_kv, attn_mask=mask, need_weights=False)[0]
        vision_kv = self.vision_ln(vision)
        V = self.vision_xa(z, vision_kv, vision_kv, need_weights=False)[0]
        m_t, m_v = m_t[:, None, None], m_v[:, None, None]
        i_t = torch.sigmoid(self.text_input_gate_w(T) + self.input_gate_bias_prior) * m_t
        i_v = torch.sigmoid(self.vision_input_gate_w(V) + self.input_gate_bias_prior) * m_v
        f_logits = m_t * self.text_forget_gate_w(T) + m_v * self.vision_forget_gate_w(V)
        f = torch.sigmoid(f_logits + self.forget_gate_bias_prior)
        c = self.act(r) * f + self.act(T) * i_t + self.act(V) * i_v
        return c + self.mlp(self.mlp_ln(c))


class Ret1Side(nn.Module):
    """ReT-1's `RetModel` without its towers: per-tap adapters, the cell, the late projection."""

    def __init__(self, n_taps: int, use_tanh: bool, pooled: bool):
        super().__init__()
        self.text_adapter = nn.ModuleList(nn.Linear(TEXT_WIDTH, H) for _ in range(n_taps))
        self.vision_adapter = nn.ModuleList(nn.Linear(VISION_WIDTH, H) for _ in range(n_taps))
        self.ret_cell = Ret1Cell(use_tanh)
        self.late_proj = nn.Linear(H, D, bias=False)
        self.pooled = pooled

    def forward(self, text_states, attention_mask, vision_states, m_t, m_v):
        h = self.ret_cell.query_hidden_states.expand(m_t.shape[0], -1, -1)
        for step, (x_t, x_v) in enumerate(zip(text_states, vision_states)):
            h = self.ret_cell(h, self.text_adapter[step](x_t), attention_mask, self.vision_adapter[step](x_v), m_t, m_v)
        if self.pooled:
            h = h.mean(dim=1)
        return F.normalize(self.late_proj(h), dim=-1)  # (B, K, D) or (B, D), as `get_ret_features`


def strict_load(module: nn.Module, tensors: dict, prefix: str, skip: tuple[str, ...] = ()) -> nn.Module:
    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix) and not k.startswith(skip)}
    module.load_state_dict(own, strict=True)
    return module.eval()


class Ret1Reference:
    """ReT-1 inference (`RetModel.get_ret_features`) built from the original tensors by their original names."""

    def __init__(self, config: dict, tensors: dict[str, torch.Tensor]):
        side = config["query_config"]
        self.text_taps, self.vision_taps = STRATEGIES[side["layer_strategy"]]
        # towers: stored once, under query_model., in the nested layout of the HF classes of that time
        self.text_tower = strict_load(hf_tower(side["text_config"]), tensors, "query_model.text_model.text_model.")
        self.vision_tower = strict_load(
            hf_tower(side["vision_config"]), tensors, "query_model.vision_model.vision_model."
        )
        towers = ("query_model.text_model.", "query_model.vision_model.")
        build = lambda: Ret1Side(len(self.text_taps), side["use_tanh"], side["use_pooler_features"])  # noqa: E731
        query = strict_load(build(), tensors, "query_model.", skip=towers)
        shared = config["share_query_passage_models"]
        self.sides = {"query": query, "passage": query if shared else strict_load(build(), tensors, "passage_model.")}

    @torch.no_grad()
    def encode(self, side: str, inputs: dict) -> torch.Tensor:
        """`inputs`: processor output with every sample's text ("" if missing) and image (black if missing)."""
        text = self.text_tower(inputs["input_ids"], inputs["attention_mask"], output_hidden_states=True).hidden_states
        vision = self.vision_tower(pixel_values=inputs["pixel_values"], output_hidden_states=True).hidden_states
        return self.sides[side](
            [text[1:][i] for i in self.text_taps], inputs["attention_mask"], [vision[1:][i] for i in self.vision_taps],
            inputs["text_mask"].float(), inputs["vision_mask"].float(),
        )  # fmt: skip


# ---------------------------------------------------------------- fixtures

VARIANTS = {
    "separate": dict(),
    "shared-tanh-priors-sharded": dict(shared=True, use_tanh=True, b_in=1.5, b_f=-0.7, shards=2),
    "vit-l-pooled": dict(strategy="clip_vit_l", pooled=True, b_in=0.5, b_f=1.0, seed=1),
}


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory) -> Path:
    """The towers' tokenizer and image processor, saved as a user passes them (`tokenizer=`, `image_processor=`)."""
    folder = tmp_path_factory.mktemp("clip-processor")
    tiny_processor(WORDS, image_size=IMAGE_SIZE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_checkpoint():
    return ret1_checkpoint(tiny_processor(WORDS, image_size=IMAGE_SIZE))


def convert(source: Path, output: Path, processor_dir: Path) -> Path:
    return convert_ret1(source, output, tokenizer=str(processor_dir), image_processor=str(processor_dir))


@pytest.fixture(scope="module", params=list(VARIANTS))
def converted(request, tmp_path_factory, processor_dir) -> SimpleNamespace:
    options = dict(VARIANTS[request.param])
    shards = options.pop("shards", 1)
    config, tensors = ret1_checkpoint(tiny_processor(WORDS, image_size=IMAGE_SIZE), **options)
    root = tmp_path_factory.mktemp(request.param)
    output = convert(write_ret1(root / "ret1", config, tensors, shards), root / "ret2", processor_dir)
    return SimpleNamespace(
        name=request.param, config=config, root=root, folder=output, reference=Ret1Reference(config, tensors),
        model=Ret2Model.from_pretrained(output).eval(), processor=Ret2Processor.from_pretrained(output),
    )  # fmt: skip


def encode_both(converted: SimpleNamespace, texts: list, images: list) -> dict[str, torch.Tensor]:
    inputs = converted.processor(text=texts, images=images, return_tensors="pt")
    with torch.no_grad():
        return {
            "query": converted.model.encode_queries(**inputs),
            "passage": converted.model.encode_documents(**inputs),
        }


# ---------------------------------------------------------------- equality with ReT-1


@pytest.mark.parametrize("batch", list(BATCHES))
def test_converted_model_reproduces_ret1(converted, batch):
    """Query and document embeddings equal ReT-1's for text-only, image-only and mixed inputs (our model skips a
    tower that no sample needs; ReT-1 runs it on the empty-text / black-image placeholder with mask 0)."""
    texts, images = BATCHES[batch]
    ours = encode_both(converted, texts, images)
    reference_inputs = converted.processor(text=texts, images=images, pad_missing_images=True, return_tensors="pt")
    for side in ("query", "passage"):
        expected = converted.reference.encode(side, reference_inputs)
        assert ours[side].shape == expected.shape
        assert (ours[side] - expected).abs().max() <= 1e-5, side
    if converted.config["share_query_passage_models"]:
        assert torch.equal(ours["query"], ours["passage"])
    else:
        assert (ours["query"] - ours["passage"]).abs().max() > 1e-2  # the sides really are different encoders


def test_scores_match_ret1(converted):
    """Late interaction (sum over query tokens of the best document token's dot product), or cosine when pooled."""
    texts, images = BATCHES["image+text"]
    ours = encode_both(converted, texts, images)
    inputs = converted.processor(text=texts, images=images, pad_missing_images=True, return_tensors="pt")
    q, d = converted.reference.encode("query", inputs), converted.reference.encode("passage", inputs)
    if q.dim() == 3:
        expected = torch.tensor([[float((qi @ dj.T).max(dim=1).values.sum()) for dj in d] for qi in q])
    else:
        expected = q @ d.T
    assert (converted.model.similarity(ours["query"], ours["passage"]) - expected).abs().max() <= 1e-5


def test_converted_config(converted):
    config = converted.model.config
    shared = converted.config["share_query_passage_models"]
    pooled = converted.config["query_config"]["use_pooler_features"]
    assert config.share_encoder is shared and (converted.model.document_encoder is None) is shared
    assert config.pooling == ("mean" if pooled else "none")
    sizes = (config.num_latent_tokens, config.hidden_size, config.num_attention_heads, config.embedding_dim)
    assert sizes == (K, H, 2, D)
    strategy = converted.config["query_config"]["layer_strategy"]
    assert (config.text_layer_ids, config.vision_layer_ids) == STRATEGIES[strategy]
    assert (config.freeze_text_tower, config.freeze_vision_tower) == (True, False)
    assert converted.model.logit_scale.item() == 0.0  # ReT-1 scored without a temperature
    written = {p.name for p in converted.folder.iterdir()}
    assert {"modeling_ret2.py", "configuration_ret2.py", "processing_ret2.py", "processor_config.json"} <= written


# ---------------------------------------------------------------- tower key layouts


def flat_towers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same checkpoint as transformers 5.x saves it: `query_model.text_model.<key>` (flat CLIP towers) instead of
    the published `query_model.text_model.text_model.<key>`."""
    nested = re.compile(r"^query_model\.(text_model|vision_model)\.\1\.")
    return {nested.sub(r"query_model.\1.", key): value for key, value in tensors.items()}


def test_flat_tower_layout_converts_to_the_same_model(base_checkpoint, processor_dir, tmp_path):
    """A ReT-1 checkpoint saved under transformers 5.x (flat tower keys) used to be refused; it gives the same model,
    which reproduces ReT-1."""
    config, tensors = base_checkpoint
    flat = flat_towers(tensors)
    assert "query_model.text_model.embeddings.token_embedding.weight" in flat
    assert not any(k.startswith("query_model.text_model.text_model.") for k in flat)
    nested_folder = convert(write_ret1(tmp_path / "nested", config, tensors), tmp_path / "nested-ret2", processor_dir)
    flat_folder = convert(write_ret1(tmp_path / "flat", config, flat), tmp_path / "flat-ret2", processor_dir)
    nested_state = Ret2Model.from_pretrained(nested_folder).state_dict()
    flat_model = Ret2Model.from_pretrained(flat_folder).eval()
    flat_state = flat_model.state_dict()
    assert flat_state.keys() == nested_state.keys()
    assert all(torch.equal(flat_state[k], nested_state[k]) for k in flat_state)
    texts, images = BATCHES["image+text"]
    processor = Ret2Processor.from_pretrained(flat_folder)
    with torch.no_grad():
        ours = flat_model.encode_queries(**processor(text=texts, images=images, return_tensors="pt"))
    expected = Ret1Reference(config, tensors).encode(
        "query", processor(text=texts, images=images, pad_missing_images=True, return_tensors="pt")
    )
    assert (ours - expected).abs().max() <= 1e-5


def test_flat_layout_with_a_missing_tower_key_names_it(base_checkpoint, processor_dir, tmp_path):
    config, tensors = base_checkpoint
    flat = flat_towers(tensors)
    del flat["query_model.vision_model.post_layernorm.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['query_model.vision_model.post_layernorm.bias'\]"):
        convert(write_ret1(tmp_path / "ret1", config, flat), tmp_path / "ret2", processor_dir)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("passage_model.ret_cell.text_forget_gate_w.bias", None, r"missing keys \['{key}'\]"),
        ("query_model.text_model.text_model.final_layer_norm.weight", None, r"missing keys \['{key}'\]"),
        ("query_model.ret_cell.extra_gate_w.weight", torch.zeros(H, H), r"unexpected keys \['{key}'\]"),
        # the towers are stored once, on the query side
        ("passage_model.text_model.text_model.final_layer_norm.weight", torch.ones(TEXT_WIDTH), r"unexpected keys"),
        ("query_model.late_proj.weight", torch.zeros(D + 1, H), r"{key} has shape \(17, 128\)"),
        ("query_model.ret_cell.query_state_ids", ret1_position_table() + 1e-3, "{key} is not the sinusoidal table"),
        ("passage_model.ret_cell.forget_gate_bias_prior", torch.tensor(2.0), "{key}=2.0 differs .*prior=0.0"),
    ],
    ids=["missing-cell-key", "missing-tower-key", "extra-key", "passage-tower", "shape", "positions", "bias-prior"],
)  # fmt: skip
def test_mismatching_checkpoints_are_refused(base_checkpoint, processor_dir, tmp_path, key, value, message):
    """A tensor missing, extra, of the wrong shape, or a dropped buffer that contradicts the config: refused, named."""
    config, tensors = base_checkpoint
    tensors = dict(tensors)
    if value is None:
        del tensors[key]
    else:
        tensors[key] = value
    with pytest.raises(ValueError, match=message.format(key=re.escape(key))):
        convert(write_ret1(tmp_path / "ret1", config, tensors), tmp_path / "ret2", processor_dir)
    assert not (tmp_path / "ret2").exists()


def test_half_precision_checkpoint_keeps_its_dtype(base_checkpoint, processor_dir, tmp_path):
    config, tensors = base_checkpoint
    tensors = {name: tensor.to(torch.bfloat16) for name, tensor in tensors.items()}  # positions rounded to bf16 too
    source = write_ret1(tmp_path / "ret1", config, tensors)
    model = Ret2Model.from_pretrained(convert(source, tmp_path / "ret2", processor_dir))
    assert model.dtype == torch.bfloat16
    q, k, _ = tensors["passage_model.ret_cell.sa.in_proj_weight"].chunk(3)
    assert torch.equal(model.document_encoder.cell.self_attn.q_proj.weight, q)
    assert torch.equal(model.document_encoder.cell.self_attn.k_proj.weight, k)


def test_processor_sources_are_checked(base_checkpoint, processor_dir, tmp_path):
    source = write_ret1(tmp_path / "ret1", *base_checkpoint)
    # default: the towers' `_name_or_path` (a Hub id), which cannot be fetched offline
    with pytest.raises(OSError, match=r"tokenizer from 'openai/clip-vit-base-patch32'.*pass tokenizer="):
        convert_ret1(source, tmp_path / "out")
    other = tmp_path / "processor-48"
    tiny_processor(WORDS, image_size=48).save_pretrained(other)
    with pytest.raises(ValueError, match=r"makes 48x48 images, but the vision tower takes 32x32"):
        convert_ret1(source, tmp_path / "out", tokenizer=str(processor_dir), image_processor=str(other))


def test_unreachable_hub_id_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="'aimagelab/ReT-CLIP-ViT-L-14' is not a local folder and could not be"):
        convert_ret1("aimagelab/ReT-CLIP-ViT-L-14", tmp_path / "out")


# ---------------------------------------------------------------- config mapping


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_ret1_strategy_maps_to_its_taps(base_checkpoint, strategy):
    config = copy.deepcopy(base_checkpoint[0])
    text_depth, vision_depth = TOWER_DEPTHS[strategy]
    for side in ("query_config", "passage_config"):
        config[side]["layer_strategy"] = strategy
        config[side]["text_config"]["num_hidden_layers"] = text_depth
        config[side]["vision_config"]["num_hidden_layers"] = vision_depth
    ret2 = ret1_config_to_ret2(config)
    assert (ret2.text_layer_ids, ret2.vision_layer_ids) == STRATEGIES[strategy]


def _edited(config: dict, path: str, value) -> dict:
    """A copy of `config` with `path` set; a path starting with `sides.` is set in query_config and passage_config."""
    config = copy.deepcopy(config)
    sides = ("query_config", "passage_config") if path.startswith("sides.") else (None,)
    for side in sides:
        *parents, leaf = path.replace("sides", side, 1).split(".") if side else path.split(".")
        target = config
        for key in parents:
            target = target[key]
        target[leaf] = value
    return config


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("model_type", "ret", "model_type='ret': expected a ReT-1 config"),
        ("sides.layer_strategy", "clip_vit_xl", r"layer_strategy='clip_vit_xl' is not .*known: \['clip_vit_b'"),
        ("share_text_models", False, "share_text_models=False"),
        ("share_vision_models", False, "share_vision_models=False"),
        ("passage_config.num_queries", 8, r"passage_config differ in \{'num_queries': \(4, 8\)\}"),
        ("sides.activation_fn", "relu", "activation_fn='relu' is not supported"),
        ("sides.late_proj_output_size", None, "late_proj_output_size=None"),
        ("query_config.vision_config", None, "query_config.vision_config=None"),
        ("passage_config.model_type", "clip", "passage_config must be .* model_type 'ret', got 'clip'"),
    ],
)  # fmt: skip
def test_unsupported_configs_name_the_field(base_checkpoint, path, value, message):
    with pytest.raises(ValueError, match=message):
        ret1_config_to_ret2(_edited(base_checkpoint[0], path, value))


def test_shared_sides_need_no_passage_agreement(base_checkpoint):
    """With `share_query_passage_models`, ReT-1 ignores the passage config (one model serves both sides)."""
    config = _edited(_edited(base_checkpoint[0], "share_query_passage_models", True), "passage_config.num_queries", 8)
    config["share_text_models"] = False  # irrelevant too: one model has one pair of towers
    ret2 = ret1_config_to_ret2(config)
    assert ret2.share_encoder and ret2.pooling == "none" and ret2.num_latent_tokens == K


# ---------------------------------------------------------------- CLI and clean-process loading


def test_cli(base_checkpoint, processor_dir, tmp_path, capsys):
    source = write_ret1(tmp_path / "ret1", *base_checkpoint)
    processor_args = ["--tokenizer", str(processor_dir), "--image-processor", str(processor_dir)]
    main([str(source), "--output-dir", str(tmp_path / "cli"), *processor_args])
    out = capsys.readouterr().out
    assert "ReT-1 clip_vit_b" in out and "12 taps (ret1-clip-b)" in out
    assert "separate query and document encoders" in out
    assert "Copied" in out and "Done: load it with AutoModel.from_pretrained" in out
    api = convert(source, tmp_path / "api", processor_dir)
    cli_state = Ret2Model.from_pretrained(tmp_path / "cli").state_dict()
    api_state = Ret2Model.from_pretrained(api).state_dict()
    assert cli_state.keys() == api_state.keys() and all(torch.equal(cli_state[k], api_state[k]) for k in cli_state)
    with pytest.raises(OSError, match="Could not load the tokenizer .*--tokenizer"):
        main([str(source), "--output-dir", str(tmp_path / "no-tokenizer")])  # the towers' Hub ids cannot be fetched offline


@pytest.mark.slow
def test_module_cli_output_loads_in_clean_process(base_checkpoint, processor_dir, tmp_path):
    """`python -m ret2.commands.convert_ret1`, then the folder loads with trust_remote_code where our packages are not
    importable, and gives the embeddings of the reference ReT-1."""
    config, tensors = base_checkpoint
    source = write_ret1(tmp_path / "ret1", config, tensors)
    folder = tmp_path / "ret2"
    subprocess.run(
        [sys.executable, "-m", "ret2.commands.convert_ret1", str(source), "--output-dir", str(folder), "--tokenizer", str(processor_dir),
         "--image-processor", str(processor_dir)],
        check=True, capture_output=True, text=True,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
    )  # fmt: skip
    texts, images = BATCHES["image+text"]
    for i, image in enumerate(images):
        if image is not None:
            image.save(tmp_path / f"image{i}.png")
    processor = Ret2Processor.from_pretrained(folder)
    reference = Ret1Reference(config, tensors)
    inputs = processor(text=texts, images=images, pad_missing_images=True, return_tensors="pt")
    torch.save({side: reference.encode(side, inputs) for side in ("query", "passage")}, tmp_path / "expected.pt")
    out = load_in_clean_process(
        tmp_path,
        f"""
        import torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        folder = {str(folder)!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        images = [None if i == 2 else Image.open({str(tmp_path)!r} + f"/image{{i}}.png") for i in range(4)]
        inputs = processor(text={texts!r}, images=images, return_tensors="pt")
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            dq = (model.encode_queries(**inputs) - expected["query"]).abs().max().item()
            dd = (model.encode_documents(**inputs) - expected["passage"]).abs().max().item()
        print("max diff", dq, dd)
        assert dq <= 1e-5 and dd <= 1e-5
        """,
    )
    assert "max diff" in out
