"""Bad model inputs and incomplete saved folders: a clear error that names the argument, never a silent wrong result.

Each test pins one class of bad input (docs/reliability.md): non-finite or raw pixels, masks that are not 0/1 or not one entry
per sample, inputs that disagree on the batch size, an empty batch, an attention mask of another shape, token ids
outside the vocabulary, and a saved folder with a weight missing.
"""

import pytest
import torch
from conftest import pattern
from remote_code import load_in_clean_process
from safetensors.torch import load_file, save_file

from modeling_ret2 import Ret2Model


@pytest.fixture(scope="module")
def inputs(tiny):
    _, processor = tiny
    return dict(processor(text=["red circle", "blue star", None], images=[pattern(1), None, pattern(2)]))


def encode(model: Ret2Model, inputs: dict, **changes) -> torch.Tensor:
    merged = {**inputs, **changes}
    with torch.no_grad():
        return model.encode_queries(**{k: v for k, v in merged.items() if v is not None})


def with_value(tensor: torch.Tensor, index: tuple, value: float) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


def test_valid_inputs_still_encode(tiny, inputs):
    model, _ = tiny
    assert torch.isfinite(encode(model, inputs)).all()
    bool_masks = encode(model, inputs, text_mask=inputs["text_mask"].bool(), vision_mask=inputs["vision_mask"].float())
    assert torch.equal(bool_masks, encode(model, inputs))  # any dtype holding 0/1 is a mask


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_refused(tiny, inputs, value):
    """One NaN anywhere used to turn every embedding of the batch into NaN."""
    model, _ = tiny
    pixels = with_value(inputs["pixel_values"], (2, 1, 5, 7), value)
    with pytest.raises(ValueError, match=r"pixel_values of samples \[2\] hold NaN or inf"):
        encode(model, inputs, pixel_values=pixels)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_pixels_are_refused(tiny, inputs, dtype):
    """Raw 0..255 pixels used to be accepted and give another embedding."""
    model, _ = tiny
    raw = (inputs["pixel_values"] * 60 + 128).clamp(0, 255).to(dtype)
    message = rf"pixel_values must be a floating-point .*got {dtype} of shape \(3, 3, 32, 32\)"
    with pytest.raises(ValueError, match=message):
        encode(model, inputs, pixel_values=raw)


def test_raw_pixels_as_floats_are_refused(tiny, inputs):
    model, _ = tiny
    raw = (inputs["pixel_values"] * 60 + 128).clamp(0, 255)
    with pytest.raises(ValueError, match=r"pixel_values reach 255.0.*raw 0\.\.255 pixels"):
        encode(model, inputs, pixel_values=raw)


@pytest.mark.parametrize("name", ["text_mask", "vision_mask"])
@pytest.mark.parametrize("value", [2, -1, 0.5])
def test_masks_other_than_0_1_are_refused(tiny, inputs, name, value):
    """A presence mask of 2 or 0.5 used to scale the modality's gate and change the embedding."""
    model, _ = tiny
    mask = with_value(inputs[name].float(), (0,), value)
    message = rf"{name} holds \[{float(value)}\] at samples \[0\]; valid values are 0 and 1"
    with pytest.raises(ValueError, match=message):
        encode(model, inputs, **{name: mask})


def test_attention_mask_other_than_0_1_is_refused(tiny, inputs):
    model, _ = tiny
    mask = with_value(inputs["attention_mask"], (1, 0), 3)
    with pytest.raises(ValueError, match=r"attention_mask holds \[3\] at samples \[1\]; valid values are 0 and 1"):
        encode(model, inputs, attention_mask=mask)


def test_text_without_tokens_is_refused(tiny, inputs):
    """A sample marked as having text whose attention mask is all 0 would be encoded from padding alone."""
    model, _ = tiny
    mask = inputs["attention_mask"].clone()
    mask[1] = 0
    with pytest.raises(ValueError, match=r"attention_mask is all 0 for samples \[1\], which text_mask marks"):
        encode(model, inputs, attention_mask=mask)
    mask[0] = 0  # sample 0 has text too; sample 2 has none, so its row may be anything
    mask[2] = 0
    with pytest.raises(ValueError, match=r"samples \[0, 1\]"):
        encode(model, inputs, attention_mask=mask)


@pytest.mark.parametrize(
    "name,shape",
    [("text_mask", (3, 1)), ("vision_mask", (2,)), ("text_mask", (4,)), ("vision_mask", ())],
)
def test_masks_of_the_wrong_shape_are_refused(tiny, inputs, name, shape):
    model, _ = tiny
    mask = torch.ones(shape, dtype=torch.long)
    message = rf"{name} must have shape \(batch,\)" if len(shape) != 1 else r"disagree on the batch size"
    with pytest.raises(ValueError, match=message):
        encode(model, inputs, **{name: mask})


@pytest.mark.parametrize("name", ["input_ids", "pixel_values", "text_mask", "vision_mask"])
def test_batch_sizes_must_agree(tiny, inputs, name):
    model, _ = tiny
    changes = {name: inputs[name][:2]}
    if name == "input_ids":
        changes["attention_mask"] = inputs["attention_mask"][:2]
    with pytest.raises(ValueError, match=rf"disagree on the batch size: .*'{name}': 2"):
        encode(model, inputs, **changes)


def test_attention_mask_shape_must_match_input_ids(tiny, inputs):
    model, _ = tiny
    short = inputs["attention_mask"][:, :2]
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 2\) but input_ids has \(3, 4\)"):
        encode(model, inputs, attention_mask=short)
    with pytest.raises(ValueError, match="attention_mask is given without input_ids"):
        encode(model, {"pixel_values": inputs["pixel_values"], "attention_mask": inputs["attention_mask"]})


def test_empty_batch_is_an_error(tiny, inputs):
    model, _ = tiny
    with pytest.raises(ValueError, match="Empty batch: the inputs have 0 samples"):
        encode(model, {k: v[:0] for k, v in inputs.items()})
    with pytest.raises(ValueError, match="Empty batch"):
        model(query_input_ids=inputs["input_ids"][:0])


def test_token_ids_outside_the_vocabulary_are_refused(tiny, inputs):
    model, _ = tiny
    vocab = model.text_model.get_input_embeddings().num_embeddings
    ids = with_value(inputs["input_ids"], (0, 1), vocab)
    with pytest.raises(ValueError, match=rf"input_ids holds token ids in \[\d+, {vocab}\].*\[0, {vocab - 1}\]"):
        encode(model, inputs, input_ids=ids)
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor .*got torch.float32"):
        encode(model, inputs, input_ids=inputs["input_ids"].float())


def test_masked_garbage_pixels_are_still_accepted(tiny, inputs):
    """Finite values of any plausible size in a slot whose vision_mask is 0 stay allowed (and change nothing)."""
    model, _ = tiny
    pixels = inputs["pixel_values"].clone()
    pixels[1] = torch.randn_like(pixels[1]) * 3
    torch.testing.assert_close(encode(model, inputs, pixel_values=pixels), encode(model, inputs), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- saved folders with a weight missing


def drop_weight(folder, key: str) -> None:
    state = load_file(folder / "model.safetensors")
    del state[key]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


MISSING = ["query_encoder.cell.text_forget_gate.weight", "vision_model.post_layernorm.bias", "logit_scale"]


@pytest.mark.parametrize("key", MISSING)
def test_missing_weight_is_an_error(tiny, tmp_path, key):
    """A missing tensor used to be randomly initialised with only the load report as a warning."""
    model, _ = tiny
    model.save_pretrained(tmp_path)
    drop_weight(tmp_path, key)
    message = rf"is missing 1 weight\(s\) of Ret2Model: \['{key}'\].*allow_missing_weights"
    with pytest.raises(ValueError, match=message):
        Ret2Model.from_pretrained(tmp_path)


def test_missing_weights_load_when_asked(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    drop_weight(tmp_path, MISSING[0])
    loaded, info = Ret2Model.from_pretrained(tmp_path, allow_missing_weights=True, output_loading_info=True)
    assert info["missing_keys"] == {MISSING[0]}
    cell, original = loaded.query_encoder.cell, model.query_encoder.cell
    assert torch.equal(cell.text_input_gate.weight, original.text_input_gate.weight)  # the rest is loaded
    assert isinstance(Ret2Model.from_pretrained(tmp_path, allow_missing_weights=True), Ret2Model)


def test_complete_folder_loads_with_loading_info(tiny, tiny_model_dir):
    model, _ = tiny
    loaded, info = Ret2Model.from_pretrained(tiny_model_dir, output_loading_info=True)
    assert info["missing_keys"] == set() and isinstance(loaded, Ret2Model)
    assert torch.equal(loaded.logit_scale, model.logit_scale)


@pytest.mark.slow
def test_missing_weight_is_an_error_in_clean_process(tiny, tmp_path):
    """The check lives in the remote code: `AutoModel.from_pretrained(..., trust_remote_code=True)` refuses too."""
    model, _ = tiny
    folder = tmp_path / "ret2-missing"
    model.save_pretrained(folder)
    drop_weight(folder, MISSING[0])
    out = load_in_clean_process(
        tmp_path,
        f"""
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
            raise SystemExit("loaded a folder with a missing weight")
        except ValueError as err:
            print("refused:", err)
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True, allow_missing_weights=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        print("opt-in loaded")
        """,
    )
    assert f"refused: {folder} is missing 1 weight(s) of Ret2Model: ['{MISSING[0]}']" in out
    assert "opt-in loaded" in out
