import inspect
import json
import math

import numpy as np
import pytest
from transformers import BertConfig, CLIPTextConfig, CLIPVisionConfig, SiglipTextConfig, SiglipVisionConfig

from configuration_ret2 import LAYER_PRESETS, Ret2Config, default_layer_ids
from configuration_ret2.configuration_ret2 import FIELD_RULES


def test_defaults_are_clip_b32_with_three_taps():
    config = Ret2Config()
    assert isinstance(config.text_config, CLIPTextConfig) and isinstance(config.vision_config, CLIPVisionConfig)
    assert config.text_layer_ids == [3, 7, 11] and config.vision_layer_ids == [3, 7, 11]
    assert (config.hidden_size, config.num_latent_tokens, config.num_attention_heads) == (1024, 32, 16)
    assert config.pooling == "mean" and config.share_encoder and config.embedding_dim == 768


@pytest.mark.parametrize("depth,expected", [(12, [3, 7, 11]), (24, [7, 15, 23]), (4, [0, 2, 3]), (2, [0, 1])])
def test_default_taps_are_early_middle_late(depth, expected):
    assert default_layer_ids(depth) == expected


def test_towers_from_dicts_of_any_family():
    config = Ret2Config(
        text_config={"model_type": "bert", "num_hidden_layers": 6},
        vision_config={"model_type": "siglip_vision_model", "num_hidden_layers": 8},
    )
    assert isinstance(config.text_config, BertConfig) and isinstance(config.vision_config, SiglipVisionConfig)
    assert config.text_layer_ids == [1, 3, 5] and config.vision_layer_ids == [2, 4, 7]
    siglip = Ret2Config(text_config=SiglipTextConfig(num_hidden_layers=3), vision_config=SiglipVisionConfig())
    assert siglip.text_layer_ids == [0, 1, 2]


@pytest.mark.parametrize("preset", sorted(LAYER_PRESETS))
def test_ret1_presets(preset):
    text_ids, vision_ids = LAYER_PRESETS[preset]
    assert len(text_ids) == len(vision_ids) == (16 if preset.endswith("-g") else 12)
    depth = {"ret1-clip-b": (12, 12), "ret1-clip-l": (12, 24), "ret1-openclip-h": (24, 32), "ret1-openclip-g": (32, 48)}
    text_depth, vision_depth = depth[preset]
    config = Ret2Config(
        text_config=CLIPTextConfig(num_hidden_layers=text_depth),
        vision_config=CLIPVisionConfig(num_hidden_layers=vision_depth),
        layer_preset=preset,
    )
    assert config.text_layer_ids == text_ids and config.vision_layer_ids == vision_ids
    assert max(text_ids) < text_depth and max(vision_ids) < vision_depth


def test_ret1_strategies_match_the_spec():
    assert LAYER_PRESETS["ret1-openclip-h"][1] == [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 31]
    assert LAYER_PRESETS["ret1-openclip-g"][0][-2:] == [28, 31]
    assert LAYER_PRESETS["ret1-openclip-g"][1][:3] == [2, 5, 8] and LAYER_PRESETS["ret1-openclip-g"][1][-1] == 47


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(text_layer_ids=[0, 3, 12]), r"text_layer_ids=\[0, 3, 12\] has taps \[12\].*\[0, 11\]"),
        (dict(vision_layer_ids=[-1, 2, 3]), r"vision_layer_ids.*\[-1\].*\[0, 11\]"),
        (dict(text_layer_ids=[1, 2]), "text_layer_ids has 2 taps and vision_layer_ids has 3"),
        (dict(text_layer_ids=[], vision_layer_ids=[]), "text_layer_ids is empty"),
        (dict(hidden_size=100, num_attention_heads=3), "hidden_size=100 is not divisible by num_attention_heads=3"),
        (dict(pooling="max"), r"pooling='max'.*\['mean', 'none'\]"),
        (dict(layer_preset="ret3"), r"layer_preset='ret3' must be one of \['ret1-clip-b'"),
        (dict(num_latent_tokens=0), "num_latent_tokens=0 must be a positive integer"),
        (dict(dropout=1.5), r"dropout=1.5 must be in \[0, 1\)"),
    ],
)
def test_validation_names_field_value_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Ret2Config(**kwargs)


def test_save_and_load_round_trip(tmp_path):
    config = Ret2Config(text_config={"model_type": "bert", "num_hidden_layers": 6}, hidden_size=128, pooling="none")
    config.save_pretrained(tmp_path)
    loaded = Ret2Config.from_pretrained(tmp_path)
    assert isinstance(loaded.text_config, BertConfig) and loaded.text_config.num_hidden_layers == 6
    assert loaded.to_dict() == config.to_dict()
    assert "temperature" not in loaded.to_dict()


def test_every_field_has_a_rule():
    """The typed table covers every field Ret2Config's `__init__` takes, so a new field cannot skip validation."""
    fields = set(inspect.signature(Ret2Config.__init__).parameters) - {"self", "kwargs"}
    assert set(FIELD_RULES) == fields


@pytest.mark.parametrize("name", sorted(FIELD_RULES))
def test_every_field_refuses_a_wrong_type(name):
    value = 3 if FIELD_RULES[name].kind == "str" else "3"  # a number for strings, a string for everything else
    with pytest.raises(TypeError, match=rf"{name}={value!r} must be .*got {type(value).__name__}"):
        Ret2Config(**{name: value})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(hidden_size="64"), r"hidden_size='64' must be an int, got str"),
        (dict(hidden_size=64.0), r"hidden_size=64.0 must be an int, got float"),
        (dict(hidden_size=True), r"hidden_size=True must be an int, got bool"),
        (dict(dropout="0.1"), r"dropout='0.1' must be a float \(or int\), got str"),
        (dict(dropout=None), r"dropout=None must be a float \(or int\), got NoneType"),
        (dict(text_layer_ids=3), r"text_layer_ids=3 must be a list of ints, got int"),
        (dict(text_layer_ids=[3, "7", 11]), r"text_layer_ids=\[3, '7', 11\] must be a list of ints, got list with a str"),
        (dict(vision_layer_ids=[3, 7.0, 11]), r"vision_layer_ids=\[3, 7.0, 11\] must be a list of ints"),
        (dict(share_encoder="no"), r"share_encoder='no' must be a bool \(True or False\), got str"),
        (dict(use_tanh=1), r"use_tanh=1 must be a bool \(True or False\), got int"),
        (dict(pooling=None), r"pooling=None must be a str, got NoneType"),
        (dict(text_config="clip"), r"text_config='clip' must be a dict or a PretrainedConfig, got str"),
    ],
)  # fmt: skip
def test_wrong_types_name_field_value_and_type(kwargs, message):
    """These used to be accepted (share_encoder="no" read as True) or fail with a TypeError from deep inside."""
    with pytest.raises(TypeError, match=message):
        Ret2Config(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(text_layer_ids=[7, 3, 11]), r"text_layer_ids=\[7, 3, 11\] must be strictly increasing"),
        (dict(vision_layer_ids=[3, 3, 11]), r"vision_layer_ids=\[3, 3, 11\] must be strictly increasing"),
        (dict(logit_scale_init=math.nan), r"logit_scale_init=nan must be a finite number"),
        (dict(forget_gate_bias_prior=-math.inf), r"forget_gate_bias_prior=-inf must be a finite number"),
        (dict(latent_init_std=0), r"latent_init_std=0.0 must be > 0"),
        (dict(attention_dropout=-0.1), r"attention_dropout=-0.1 must be in \[0, 1\)"),
    ],
)
def test_wrong_values_name_field_value_and_range(kwargs, message):
    """Unsorted or duplicated taps used to be accepted although the cell walks them shallow to deep, once each."""
    with pytest.raises(ValueError, match=message):
        Ret2Config(**kwargs)


def test_numbers_of_compatible_types_are_accepted_and_normalised():
    config = Ret2Config(
        dropout=0, logit_scale_init=3, hidden_size=np.int64(128), text_layer_ids=(1, 5, 11),
        vision_layer_ids=list(np.array([2, 6, 10])), latent_init_std=np.float32(0.5), share_encoder=False,
    )  # fmt: skip
    assert (config.dropout, config.logit_scale_init, config.latent_init_std) == (0.0, 3.0, 0.5)
    assert all(type(v) is float for v in (config.dropout, config.logit_scale_init, config.latent_init_std))
    assert type(config.hidden_size) is int and config.hidden_size == 128 and config.num_attention_heads == 2
    assert config.text_layer_ids == [1, 5, 11] and config.vision_layer_ids == [2, 6, 10]
    assert all(type(i) is int for i in config.text_layer_ids + config.vision_layer_ids)
    assert config.share_encoder is False


def test_hand_edited_config_json_with_ints_for_floats_loads(tmp_path):
    """config.json values pass through from_pretrained: a valid file (e.g. `"dropout": 0`) keeps loading."""
    Ret2Config(hidden_size=128).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.update(dropout=0, attention_dropout=0, logit_scale_init=2)
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = Ret2Config.from_pretrained(tmp_path)
    assert (loaded.dropout, loaded.logit_scale_init, loaded.hidden_size) == (0.0, 2.0, 128)
    data["share_encoder"] = "false"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(TypeError, match="share_encoder='false' must be a bool"):
        Ret2Config.from_pretrained(tmp_path)


def test_fields_are_checked_when_set_after_construction(tmp_path):
    """from_pretrained applies its keyword overrides with setattr, after __init__: they are checked too."""
    Ret2Config(hidden_size=128).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="freeze_text_tower='yes' must be a bool"):
        Ret2Config.from_pretrained(tmp_path, freeze_text_tower="yes")
    config = Ret2Config.from_pretrained(tmp_path, freeze_text_tower=True)
    assert config.freeze_text_tower is True
    with pytest.raises(ValueError, match=r"dropout=2.0 must be in \[0, 1\)"):
        config.dropout = 2


def test_matryoshka_dims_round_trip_and_old_configs_load_without_them(tmp_path):
    Ret2Config(embedding_dim=64, matryoshka_dims=(64, 32, 8)).save_pretrained(tmp_path / "new")
    assert Ret2Config.from_pretrained(tmp_path / "new").matryoshka_dims == [64, 32, 8]
    Ret2Config(embedding_dim=64).save_pretrained(tmp_path / "old")
    data = json.loads((tmp_path / "old" / "config.json").read_text())
    data.pop("matryoshka_dims", None)  # a config saved before the field existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(data))
    assert Ret2Config.from_pretrained(tmp_path / "old").matryoshka_dims is None


@pytest.mark.parametrize(
    "dims, message",
    [([64, 128], r"matryoshka_dims=\[64, 128\] has sizes \[128\] above embedding_dim=64"),
     ([], "non-empty list of distinct positive sizes"), ([32, 0], "non-empty list of distinct positive sizes"),
     ([32, 32], "non-empty list of distinct positive sizes")],
)  # fmt: skip
def test_matryoshka_dims_are_checked(dims, message):
    with pytest.raises(ValueError, match=message):
        Ret2Config(embedding_dim=64, matryoshka_dims=dims)


def test_check_truncate_dim_refuses_bad_sizes_and_warns_off_the_trained_ones(caplog):
    config = Ret2Config(embedding_dim=64, matryoshka_dims=[64, 16])
    for bad in (0, 65, 2.5, "16"):
        with pytest.raises(ValueError, match=rf"truncate_dim={bad!r} is not valid.*\[1, 64\]"):
            config.check_truncate_dim(bad)
    with caplog.at_level("WARNING"):
        config.check_truncate_dim(16)
        config.check_truncate_dim(None)
        assert not caplog.records
        config.check_truncate_dim(32)
    assert "truncate_dim=32: this model was trained for the sizes [64, 16]" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        Ret2Config(embedding_dim=64).check_truncate_dim(64)  # full size: what every model is trained for
    assert not caplog.records
