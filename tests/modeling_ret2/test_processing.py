import numpy as np
import pytest
import torch
from conftest import pattern
from PIL import Image

from modeling_ret2 import to_rgb


def uint16_image(values: np.ndarray) -> Image.Image:
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16", "I", "F", "1"])
def test_any_pil_mode_becomes_rgb(mode):
    if mode == "I;16":
        image = uint16_image(np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40)
    else:
        image = pattern(0).convert(mode)
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (40, 40)


def test_high_bit_depth_is_rescaled_not_clipped():
    values = np.array([[0, 1000], [30000, 60000]], dtype=np.uint16)
    rgb = np.asarray(to_rgb(uint16_image(values)))
    assert rgb[0, 0, 0] == 0 and rgb[1, 1, 0] == 255 and 100 < rgb[1, 0, 0] < 140  # 30000/60000*255 = 127.5


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0))[0] == pytest.approx(127, abs=1)


def test_masks_and_placeholders(tiny):
    _, processor = tiny
    out = processor(text=["red circle", None, ""], images=[None, pattern(1), pattern(2)], return_tensors="pt")
    assert out["text_mask"].tolist() == [1, 0, 0] and out["vision_mask"].tolist() == [0, 1, 1]
    assert out["pixel_values"].shape == (3, 3, 32, 32)
    black = processor(images=[Image.new("RGB", (77, 51))], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(out["pixel_values"][0], black)  # a missing image is a black image
    assert out["input_ids"].shape[0] == 3 and out["attention_mask"][1].sum() == 2  # "" -> <bos> <eos>


def test_pixel_values_only_when_needed(tiny):
    _, processor = tiny
    out = processor(text=["red", "blue"], return_tensors="pt")
    assert "pixel_values" not in out and out["vision_mask"].tolist() == [0, 0]
    padded = processor(text=["red", "blue"], return_tensors="pt", pad_missing_images=True)
    assert padded["pixel_values"].shape == (2, 3, 32, 32)


def test_same_pixels_as_the_image_processor(tiny):
    _, processor = tiny
    images = [pattern(3), pattern(4).convert("RGBA")]
    out = processor(text=[None, None], images=images, return_tensors="pt")
    direct = processor.image_processor([to_rgb(i) for i in images], return_tensors="pt")["pixel_values"]
    assert torch.equal(out["pixel_values"], direct)


def test_errors_name_the_sample(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match=r"Samples \[1\] have neither text nor an image"):
        processor(text=["red", None], images=[None, None])
    with pytest.raises(ValueError, match="Got 2 texts and 1 images"):
        processor(text=["red", "blue"], images=[pattern(1)])
    with pytest.raises(TypeError, match="got str"):
        processor(text=["red"], images=["not an image"])


def test_truncates_to_the_tokenizer_limit(tiny):
    _, processor = tiny
    out = processor(text=["red " * 500], return_tensors="pt")
    assert out["input_ids"].shape[1] == processor.tokenizer.model_max_length


@pytest.mark.parametrize("size", [(0, 0), (5, 0), (0, 7)])
def test_zero_area_images_are_refused_by_index(tiny, size):
    """A 0x0 image used to divide by zero inside the image processor."""
    _, processor = tiny
    with pytest.raises(ValueError, match=rf"images\[1\] is {size[0]}x{size[1]} pixels"):
        processor(text=["red", None], images=[pattern(1), Image.new("RGB", size)])
    with pytest.raises(ValueError, match=r"images\[0\] is 0x3 pixels"):
        processor(images=[np.zeros((3, 0, 3), dtype=np.uint8)])


def test_empty_batch_is_an_error(tiny):
    _, processor = tiny
    for kwargs in (dict(text=[]), dict(images=[]), dict(text=[], images=[])):
        with pytest.raises(ValueError, match="Empty batch: got 0 samples"):
            processor(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(images=[pattern(1), 3]), r"images\[1\]: expected a PIL image, a numpy array or None, got int"),
        (dict(images=[pattern(1), "cat.jpg"]), r"images\[1\]: expected .* got str"),
        (dict(text=["red", 5]), r"text\[1\]: expected a string or None, got int"),
        (dict(text=["red", b"blue"]), r"text\[1\]: expected a string or None, got bytes"),
        (dict(text=7), r"text: expected a string or a list of strings, got int"),
    ],
)
def test_non_inputs_are_named_with_index_and_type(tiny, kwargs, message):
    _, processor = tiny
    with pytest.raises(TypeError, match=message):
        processor(**kwargs)
