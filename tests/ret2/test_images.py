"""Reading image files (`ret2.data.images.ImageLoader`): one RGB conversion shared with the processor, the same EXIF
orientation rule as `Ret2Model.encode`, and an unreadable file named with its record."""

import numpy as np
import pytest
import torch
from conftest import pattern
from PIL import Image

from ret2.data.images import ImageLoader


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "I;16", "LA"])
def test_one_rgb_conversion_for_the_loader_and_the_processor(tmp_path, tiny, mode):
    """The same file gives identical pixel values through the dataset loader (training, evaluation) and through
    the Hub processor given the opened file."""
    _, processor = tiny
    if mode == "I;16":
        image = Image.fromarray((np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 37))
    else:
        image = pattern(3).convert("RGBA")
        image.putalpha(Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1))))  # a real alpha ramp
        image = image.convert(mode) if mode != "RGBA" else image
    path = tmp_path / ("image.tiff" if mode in ("CMYK", "I;16") else "image.png")
    image.save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode
        direct = processor(images=[opened], return_tensors="pt")["pixel_values"]
    loaded = processor(images=[ImageLoader(tmp_path)(path.name, "doc-1")], return_tensors="pt")["pixel_values"]
    assert torch.equal(direct, loaded)


def test_exif_rotated_file_gets_the_same_pixels_through_the_loader_and_encode(tmp_path, tiny):
    """A phone photo stored sideways with an EXIF orientation: with the same rule, the dataset / index loader and
    `Ret2Model.encode`'s loader read the same pixels, so a document indexed from disk (upright) matches the same file
    given as a query (docs/images.md)."""
    from modeling_ret2.processing_ret2 import load_image

    _, processor = tiny
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    pattern(5, size=48).crop((0, 0, 48, 30)).save(tmp_path / "photo.jpg", exif=exif)
    for orientation, size in (("upright", (30, 48)), ("stored", (48, 30))):  # upright: the stored 48 x 30 turned
        loaded = ImageLoader(tmp_path, orientation)("photo.jpg", "doc-1")
        assert loaded.size == size
        direct = processor(images=[load_image(tmp_path / "photo.jpg", orientation)], return_tensors="pt")
        assert torch.equal(processor(images=[loaded], return_tensors="pt")["pixel_values"], direct["pixel_values"])


def test_truncated_image_names_the_file_and_the_record(tmp_path):
    pattern(1).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"image 'cut.png' of record 'q7' at .*cut.png cannot be read"):
        ImageLoader(tmp_path)("cut.png", "q7")
