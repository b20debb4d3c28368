import pytest
from transformers import BertConfig, CLIPTextConfig, CLIPVisionConfig, SiglipTextConfig, SiglipVisionConfig

from configuration_ret2 import LAYER_PRESETS, Ret2Config, default_layer_ids


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
        (dict(text_layer_ids=[0, 12, 3]), r"text_layer_ids=\[0, 12, 3\] has taps \[12\].*\[0, 11\]"),
        (dict(vision_layer_ids=[-1, 2, 3]), r"vision_layer_ids.*\[-1\].*\[0, 11\]"),
        (dict(text_layer_ids=[1, 2]), "text_layer_ids has 2 taps and vision_layer_ids has 3"),
        (dict(text_layer_ids=[], vision_layer_ids=[]), "text_layer_ids is empty"),
        (dict(hidden_size=100, num_attention_heads=3), "hidden_size=100 is not divisible by num_attention_heads=3"),
        (dict(pooling="max"), r"pooling='max'.*\['mean', 'none'\]"),
        (dict(layer_preset="ret3"), "layer_preset='ret3' is not a known preset"),
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
