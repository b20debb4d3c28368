"""`ModelArguments.config_overrides`: typed `key=value` Ret2Config fields for a new model, checked against a saved
one."""

import pytest

from ret2.data.synthetic import generate_mbeir
from ret2.tiny import tiny_model_and_processor
from ret2.training.arguments import DataArguments, ModelArguments
from ret2.training.train import build_datasets, load_training_model
from ret2.training.train import parse_config_overrides


def test_values_are_typed_by_the_config_field_rules():
    overrides = parse_config_overrides(
        "gated=false, recurrent=False,text_layer_ids=[1,3],vision_layer_ids=[3],hidden_size=64,dropout=0,"
        "pooling=mean,layer_preset=none"
    )
    assert overrides == {
        "gated": False, "recurrent": False, "text_layer_ids": [1, 3], "vision_layer_ids": [3], "hidden_size": 64,
        "dropout": 0.0, "pooling": "mean", "layer_preset": None,
    }  # fmt: skip
    assert isinstance(overrides["dropout"], float) and parse_config_overrides("  ") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gated=maybe", "config override gated='maybe' must be true or false"),
        ("hidden_size=1.5", "config override hidden_size='1.5' must be an int"),
        ("text_layer_ids=3", "text_layer_ids=3 must be a list of ints"),
        ("text_layer_ids=[3,1]", "text_layer_ids=[3, 1] must be strictly increasing"),
        ("dropout=1.5", "dropout=1.5 must be in [0, 1)"),
        ("pooling=max", "pooling='max' must be one of"),
        ("gates=false", "config override 'gates' is not a Ret2Config field; valid: ["),
        ("text_config={}", "config override 'text_config' is not a Ret2Config field"),
        ("freeze_text_tower=true", "config override 'freeze_text_tower': set it with --freeze_text_tower"),
        ("gated=false,gated=true", "config override 'gated' is given twice"),
        ("gated", "config override 'gated' is not key=value"),
    ],
)
def test_bad_overrides_name_the_key_and_what_is_valid(text, message):
    with pytest.raises((ValueError, TypeError)) as error:
        parse_config_overrides(text)
    assert message in str(error.value)


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    root = generate_mbeir(tmp_path_factory.mktemp("data"), n_per_task=1, pool_size=4, n_train_per_task=1, m2kr=False)
    return build_datasets(DataArguments(data_root=str(root)), seed=0)[0]


def test_a_new_tiny_model_gets_the_overrides(train_set):
    overrides = "gated=false,recurrent=false,text_layer_ids=[3],vision_layer_ids=[3]"
    model, _ = load_training_model(ModelArguments(model="tiny", config_overrides=overrides), train_set, seed=0)
    config = model.config
    assert (config.gated, config.recurrent, config.text_layer_ids, config.vision_layer_ids) == (False, False, [3], [3])
    default = load_training_model(ModelArguments(model="tiny"), train_set, seed=0)[0].config
    assert (default.gated, default.recurrent, default.text_layer_ids) == (True, True, [0, 2, 3])


def test_a_saved_ret2_folder_accepts_only_its_own_values(tmp_path, train_set):
    model, processor = tiny_model_and_processor(seed=0, gated=False)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    same = ModelArguments(model=str(tmp_path), config_overrides="gated=false")
    assert load_training_model(same, train_set, seed=0)[0].config.gated is False
    other = ModelArguments(model=str(tmp_path), config_overrides="gated=true,recurrent=true")
    with pytest.raises(ValueError, match="cannot change the trained ReT-2 model .*: gated is False there, not True$"):
        load_training_model(other, train_set, seed=0)
