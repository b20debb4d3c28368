"""Convert a published ReT-1 checkpoint (Caffagni et al., CVPR 2025) into a ReT-2 folder that reproduces it.

ReT-1 (`model_type="retriever"`) has a query and a passage `RetModel`, each with per-tap adapters, a recurrent cell
(`ret_cell`) and a late projection, over one pair of CLIP towers stored under `query_model.` only (nested, as the
published checkpoints have them, or flat, as transformers 5.x saves them: both are read). It maps onto a
`Ret2Config(pooling="none", share_encoder=False)` model: same towers, taps from `layer_strategy`, the query cell in
`query_encoder` and the passage cell in `document_encoder`, scored by late interaction.

    ret2-convert-ret1 aimagelab/ReT-CLIP-ViT-L-14 --output-dir ./ret-clip-l      (checkout: python -m ret2.commands.convert_ret1)
    ret2-convert-ret1 ./ReT-CLIP-ViT-L-14 --output-dir ./ret-clip-l --tokenizer ./clip-l --image-processor ./clip-l

From Python (this is also what `hub_upload.py --from-ret1` calls): `convert_ret1(source, output)` writes the folder
(config, weights, remote code, processor) and returns its path; `ret1_config_to_ret2(config_dict)` maps the config
alone. Everything that would change the computation and has no ReT-2 equivalent is refused with the field named.
"""

import contextlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from PIL import Image
from safetensors import safe_open
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.initialization import no_init_weights
from transformers.utils import logging

from configuration_ret2 import Ret2Config
from modeling_ret2 import Ret2Model, Ret2Processor
from modeling_ret2.modeling_ret2 import sinusoidal_table

logger = logging.get_logger(__name__)

# ReT-1 `layer_strategy` values (its `RetLayerStrategy` enum) -> our presets with the same taps.
RET1_LAYER_STRATEGIES = {
    "clip_vit_b": "ret1-clip-b",
    "clip_vit_l": "ret1-clip-l",
    "openclip_vit_h": "ret1-openclip-h",
    "openclip_vit_g": "ret1-openclip-g",
}
# ReT-1 `RetConfig` defaults, used for fields a config.json leaves out.
RET1_DEFAULTS = {
    "is_text_frozen": True,
    "is_vision_frozen": True,
    "late_proj_output_size": 128,
    "layer_strategy": "clip_vit_b",
    "use_pooler_features": False,
    "num_queries": 32,
    "hidden_size": 1024,
    "dropout_p": 0.05,
    "attention_dropout": 0.05,
    "activation_fn": "gelu",
    "input_gate_bias_prior": 0.0,
    "forget_gate_bias_prior": 0.0,
    "use_tanh": False,
}
# Fields that define one side's encoder: the query and passage sides must agree on them (Ret2Config has one set).
CELL_FIELDS = [name for name in RET1_DEFAULTS if name not in ("is_text_frozen", "is_vision_frozen")]

# A key of our `Ret2Encoder` -> the ReT-1 key under `query_model.` / `passage_model.` it is read from.
_ENCODER_KEYS = [
    (r"text_adapters\.(\d+)\.(weight|bias)", r"text_adapter.\1.\2"),
    (r"vision_adapters\.(\d+)\.(weight|bias)", r"vision_adapter.\1.\2"),
    (r"projection\.weight", "late_proj.weight"),
    (r"cell\.latent_tokens", "ret_cell.query_hidden_states"),
    (r"cell\.self_attn\.out_proj\.(weight|bias)", r"ret_cell.sa.out_proj.\1"),
    (r"cell\.(text|vision)_attn\.out_proj\.weight", r"ret_cell.\1_xa.out_proj.weight"),
    (r"cell\.mlp\.fc1\.(weight|bias)", r"ret_cell.mlp.0.\1"),
    (r"cell\.mlp\.fc2\.(weight|bias)", r"ret_cell.mlp.3.\1"),
    (r"cell\.((?:text|vision)_(?:input|forget)_gate)\.(weight|bias)", r"ret_cell.\1_w.\2"),
    (r"cell\.((?:xa|text|vision|mlp)_ln)\.(weight|bias)", r"ret_cell.\1.\2"),
]
# Our separate q/k/v projections are the three row blocks, in that order, of ReT-1's `nn.MultiheadAttention`.
_QKV_KEY = re.compile(r"cell\.(self|text|vision)_attn\.([qkv])_proj\.(weight|bias)")
_RET1_ATTENTIONS = {"self": "sa", "text": "text_xa", "vision": "vision_xa"}
_SIDES = {"query_encoder": "query_model", "document_encoder": "passage_model"}
# ReT-1 tensors with no ReT-2 counterpart: an unused LayerNorm, and buffers that are checked against the config.
_DROPPED = (
    "ret_cell.sa_ln.weight",
    "ret_cell.sa_ln.bias",
    "ret_cell.query_state_ids",
    "ret_cell.input_gate_bias_prior",
    "ret_cell.forget_gate_bias_prior",
)
# ReT-1 feeds a black image of this size where an image is missing (the processor's own placeholder is equivalent).
RET1_PLACEHOLDER_SIZE = 336


def _side_settings(ret1_config: dict, name: str) -> dict:
    """One side's `RetConfig` fields (`query_config` / `passage_config`), ReT-1 defaults filled in."""
    side = ret1_config.get(name)
    if not isinstance(side, dict) or side.get("model_type") != "ret":
        found = side.get("model_type") if isinstance(side, dict) else side
        raise ValueError(f"{name} must be a ReT-1 `RetConfig` dict with model_type 'ret', got {found!r}.")
    for tower in ("text_config", "vision_config"):
        if not isinstance(side.get(tower), dict) or "model_type" not in side[tower]:
            raise ValueError(f"{name}.{tower}={side.get(tower)!r}: a ReT-1 model needs both towers' configs.")
    return {**RET1_DEFAULTS, **side}


def ret1_config_to_ret2(ret1_config: dict) -> Ret2Config:
    """The [`Ret2Config`] that computes what the ReT-1 model of this `config.json` dict computes.

    `share_query_passage_models=True` (one ReT-1 model for both sides) becomes `share_encoder=True`: the query and
    document encoders are then the same module, tied as in ReT-1, rather than two copies that fine-tuning would untie.
    Raises `ValueError` naming the field for settings that ReT-2 cannot reproduce: towers not shared between the
    sides, query and passage encoders of different shapes, an unknown `layer_strategy`, a ReLU MLP, no late projection.
    """
    if ret1_config.get("model_type") != "retriever":
        raise ValueError(
            f"model_type={ret1_config.get('model_type')!r}: expected a ReT-1 config (model_type 'retriever')."
        )
    shared = bool(ret1_config.get("share_query_passage_models", False))
    query = _side_settings(ret1_config, "query_config")
    if not shared:
        for flag in ("share_text_models", "share_vision_models"):
            if not ret1_config.get(flag, True):
                raise ValueError(
                    f"{flag}={ret1_config[flag]!r}: the query and passage sides have their own towers, but a ReT-2 "
                    "model has one text and one vision tower shared by both sides."
                )
        passage = _side_settings(ret1_config, "passage_config")
        differing = {name: (query[name], passage[name]) for name in CELL_FIELDS if query[name] != passage[name]}
        if differing:
            raise ValueError(
                f"query_config and passage_config differ in {differing} (query, passage); a ReT-2 model's query and "
                "document encoders share one configuration."
            )
    strategy = query["layer_strategy"]
    if strategy not in RET1_LAYER_STRATEGIES:
        raise ValueError(
            f"layer_strategy={strategy!r} is not a known ReT-1 strategy; known: {sorted(RET1_LAYER_STRATEGIES)}."
        )
    if query["activation_fn"] != "gelu":
        raise ValueError(
            f"activation_fn={query['activation_fn']!r} is not supported; the ReT-2 cell's MLP uses 'gelu'."
        )
    if not query["late_proj_output_size"]:
        raise ValueError(
            f"late_proj_output_size={query['late_proj_output_size']!r} (no late projection) is not supported; "
            "ReT-2 always projects."
        )
    return Ret2Config(
        text_config=dict(query["text_config"]),
        vision_config=dict(query["vision_config"]),
        layer_preset=RET1_LAYER_STRATEGIES[strategy],
        hidden_size=query["hidden_size"],
        num_attention_heads=query["hidden_size"] // 64,  # fixed in ReT-1, not a config field
        num_latent_tokens=query["num_queries"],
        embedding_dim=query["late_proj_output_size"],
        pooling="mean" if query["use_pooler_features"] else "none",
        share_encoder=shared,
        # With shared towers the passage side uses the query side's towers, so the query side's flags apply.
        freeze_text_tower=bool(query["is_text_frozen"]),
        freeze_vision_tower=bool(query["is_vision_frozen"]),
        input_gate_bias_prior=float(query["input_gate_bias_prior"]),
        forget_gate_bias_prior=float(query["forget_gate_bias_prior"]),
        use_tanh=bool(query["use_tanh"]),
        dropout=query["dropout_p"],
        attention_dropout=query["attention_dropout"],
        logit_scale_init=0.0,  # ReT-1's loss used the raw late-interaction scores: inverse temperature 1
    )


def ret1_source_of(key: str, nested_towers: bool = True) -> tuple[str, int | None]:
    """The ReT-1 tensor a `Ret2Model` state-dict key is read from, and which third of it (q, k, v) if it is split.

    Towers live once, under `query_model.`: nested as the published checkpoints store them (transformers 4.x,
    `query_model.text_model.text_model.<key>`), or flat as transformers 5.x saves them (`query_model.text_model.<key>`,
    `nested_towers=False`)."""
    if key.startswith(("text_model.", "vision_model.")):
        return (f"query_model.{key.split('.')[0]}.{key}" if nested_towers else f"query_model.{key}"), None
    encoder, _, rest = key.partition(".")
    if encoder in _SIDES:
        side = _SIDES[encoder]
        qkv = _QKV_KEY.fullmatch(rest)
        if qkv:
            return f"{side}.ret_cell.{_RET1_ATTENTIONS[qkv[1]]}.in_proj_{qkv[3]}", "qkv".index(qkv[2])
        for pattern, template in _ENCODER_KEYS:
            if re.fullmatch(pattern, rest):
                return f"{side}.{re.sub(pattern, template, rest)}", None
    raise KeyError(f"The converter has no ReT-1 source for the model key {key!r}.")


def _has_nested_towers(keys: Iterable[str]) -> bool:
    """Whether a checkpoint's towers use the nested layout. A flat CLIP tower has no `text_model.` / `vision_model.`
    inside, so any such key decides; a checkpoint mixing both layouts is then refused by its missing keys."""
    nested = ("query_model.text_model.text_model.", "query_model.vision_model.vision_model.")
    return any(key.startswith(nested) for key in keys)


def _listing(keys: list[str], limit: int = 20) -> str:
    keys = sorted(keys)
    return str(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _resolve_source(source: str | Path) -> Path:
    if Path(source).is_dir():
        return Path(source)
    try:
        return Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors"]))
    except (OSError, ValueError) as err:
        raise OSError(
            f"{str(source)!r} is not a local folder and could not be downloaded from the Hub ({type(err).__name__}: "
            f"{err}). Pass a local folder holding the ReT-1 config.json and safetensors."
        ) from err


def _weight_files(folder: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it (one file, or shards listed in an index)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{folder} has neither model.safetensors nor model.safetensors.index.json.")
    with safe_open(single, framework="pt") as handle:
        return {key: single for key in handle.keys()}


def _check_dropped(name: str, tensor: torch.Tensor, config: Ret2Config) -> None:
    """Refuse a checkpoint whose dropped buffers say the cell computes something else than the config says."""
    if name.endswith("query_state_ids"):
        expected = sinusoidal_table(config.num_latent_tokens, config.hidden_size)[None]  # (1, K, H)
        # A half-precision checkpoint stores the table rounded: allow one unit in the last place.
        tolerance = max(1e-5, torch.finfo(tensor.dtype).eps)
        if tensor.shape != expected.shape or (tensor.float() - expected).abs().max() > tolerance:
            raise ValueError(
                f"{name} is not the sinusoidal table (K={config.num_latent_tokens}, H={config.hidden_size}) that "
                "ReT-2 adds to the latent tokens: the checkpoint uses another positional scheme."
            )
    elif name.endswith("gate_bias_prior"):
        field = name.rsplit(".", 1)[-1]
        value = getattr(config, field)
        if not torch.equal(tensor, torch.tensor(value).to(tensor.dtype)):
            raise ValueError(f"{name}={tensor.item()} differs from the config's {field}={value}.")


def _load_ret1_weights(model: Ret2Model, folder: Path, config: Ret2Config) -> torch.dtype | None:
    """Copy every ReT-1 tensor into `model` (in place), after checking that the keys and shapes match exactly.

    Returns the checkpoint's floating dtype when all its tensors share one (else None)."""
    files = _weight_files(folder)
    targets = {key: value for key, value in model.state_dict().items() if key != "logit_scale"}  # ReT-1 has no scale
    nested_towers = _has_nested_towers(files)
    sources = {key: ret1_source_of(key, nested_towers) for key in targets}
    sides = {_SIDES[key.split(".")[0]] for key in targets if key.split(".")[0] in _SIDES}
    dropped = {f"{side}.{name}" for side in sides for name in _DROPPED} & set(files)
    missing = sorted({name for name, _ in sources.values() if name not in files})
    unexpected = sorted(set(files) - {name for name, _ in sources.values()} - dropped)
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint in {folder} does not have the ReT-1 layout of its config "
            f"(share_query_passage_models={config.share_encoder}, {config.num_steps} taps, "
            f"{'nested' if nested_towers else 'flat'} tower keys): "
            f"missing keys {_listing(missing)}; unexpected keys {_listing(unexpected)}."
        )
    dtypes = set()
    with contextlib.ExitStack() as stack:
        handles = {path: stack.enter_context(safe_open(path, framework="pt")) for path in set(files.values())}
        for name in sorted(dropped):
            _check_dropped(name, handles[files[name]].get_tensor(name), config)
        for key, target in logging.tqdm(targets.items(), desc="Copying ReT-1 weights", unit="tensor"):
            name, third = sources[key]
            tensor = handles[files[name]].get_tensor(name)
            dtypes.add(tensor.dtype)
            if third is not None:
                tensor = tensor.chunk(3)[third]
                name = f"{name} (row block {third} of 3)"
            if tensor.shape != target.shape:
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)}, but {key} needs {tuple(target.shape)} under the config."
                )
            with torch.no_grad():
                target.copy_(tensor)
    logger.info(f"Copied {len(targets)} tensors; checked and dropped {len(dropped)} ({', '.join(sorted(dropped))}).")
    return dtypes.pop() if len(dtypes) == 1 else None


def _ret1_processor(
    ret1_config: dict, config: Ret2Config, tokenizer: str | None, image_processor: str | None
) -> Ret2Processor:
    """The ReT-1 preprocessing: the towers' own tokenizer (truncating at its limit) and image processor."""
    towers = ret1_config["query_config"]
    loaded = {}
    for arg, loader, tower, explicit in (
        ("tokenizer", AutoTokenizer, "text_config", tokenizer),
        ("image_processor", AutoImageProcessor, "vision_config", image_processor),
    ):
        source = explicit or towers[tower].get("_name_or_path")
        flag = "--" + arg.replace("_", "-")
        hint = f"pass {arg}= (CLI: {flag}) with a local folder holding the {tower[:-7]} tower's {arg}"
        if not source:
            raise ValueError(f"The ReT-1 config names no {arg} (query_config.{tower}._name_or_path is empty); {hint}.")
        try:
            loaded[arg] = loader.from_pretrained(str(source))
        except (OSError, ValueError) as err:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise OSError(f"Could not load the {arg} from {str(source)!r} ({reason}); {hint}.") from err
        logger.info(f"{arg} from {source}")
    size = config.vision_config.image_size
    black = Image.new("RGB", (RET1_PLACEHOLDER_SIZE, RET1_PLACEHOLDER_SIZE))
    produced = tuple(loaded["image_processor"]([black], return_tensors="pt")["pixel_values"].shape[-2:])
    if produced != (size, size):
        raise ValueError(
            f"The image processor makes {produced[0]}x{produced[1]} images, but the vision tower takes {size}x{size} "
            "(vision_config.image_size); pass image_processor= the vision tower's own image processor."
        )
    limit, positions = loaded["tokenizer"].model_max_length, config.text_config.max_position_embeddings
    if limit > positions:
        raise ValueError(
            f"The tokenizer truncates at model_max_length={limit} tokens, but the text tower embeds at most "
            f"max_position_embeddings={positions}; pass tokenizer= the text tower's own tokenizer."
        )
    return Ret2Processor(image_processor=loaded["image_processor"], tokenizer=loaded["tokenizer"])


def convert_ret1(
    source: str | Path, output: str | Path, tokenizer: str | None = None, image_processor: str | None = None
) -> Path:
    """Convert a ReT-1 checkpoint into a ReT-2 folder (`save_pretrained` weights, config, remote code, processor).

    Args:
        source: a local folder with the ReT-1 `config.json` and safetensors (one file or shards with an index), or a
            Hub id such as `aimagelab/ReT-CLIP-ViT-L-14` (downloaded with `huggingface_hub.snapshot_download`).
        output: the folder to write; loads with `AutoModel/AutoProcessor.from_pretrained(output,
            trust_remote_code=True)`.
        tokenizer, image_processor: where to load the towers' tokenizer and image processor from (local folder or Hub
            id). Default: the towers' `_name_or_path` in the ReT-1 config (e.g. `openai/clip-vit-large-patch14`).

    Returns:
        The output folder. Raises on anything that would make the converted model differ from ReT-1: keys missing
        from or unexpected in the checkpoint (listed), shapes, positional table or gate priors that disagree with the
        config, an image processor whose output size is not the vision tower's.
    """
    folder = _resolve_source(source)
    ret1_config = json.loads((folder / "config.json").read_text())
    config = ret1_config_to_ret2(ret1_config)
    logger.info(
        f"ReT-1 {ret1_config['query_config'].get('layer_strategy', RET1_DEFAULTS['layer_strategy'])} from {folder}: "
        f"{config.num_steps} taps ({config.layer_preset}), K={config.num_latent_tokens}, H={config.hidden_size}, "
        f"{config.embedding_dim}-d tokens, pooling={config.pooling!r}, "
        f"{'one encoder for both sides' if config.share_encoder else 'separate query and document encoders'}."
    )
    processor = _ret1_processor(ret1_config, config, tokenizer, image_processor)
    with no_init_weights():  # every tensor is overwritten from the checkpoint
        model = Ret2Model(config)
    dtype = _load_ret1_weights(model, folder, config)
    if dtype is not None and dtype != torch.float32:
        model.to(dtype)  # keep the checkpoint's precision (loading upcast it exactly; this casts back exactly)
    output = Path(output)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    logger.info(f"Wrote {output} (model with remote code, and processor).")
    return output
