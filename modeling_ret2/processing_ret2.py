"""Processor for ReT-2: tokenises text, preprocesses images, and marks which modality each sample has.

Also the raw-input side of `Ret2Model.encode` and of the sentence-transformers module: what counts as text or as an
image (`split_input`), image loading (`load_image`), and batches preprocessed on access, so that DataLoader workers
decode and preprocess while the model encodes (`Ret2InputBatches`).
"""

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import BatchFeature, ProcessorMixin

# The image file extensions of the package: a string ending in one (with the file existing) is an image path to the
# sentence-transformers module, and a folder's files with one are its images to `ret2.records`.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")

# How the pixels of an image file are read (docs/images.md). "stored": as the file stores them, EXIF orientation not
# applied, as the M-BEIR and M2KR benchmarks (UniIR, ReT) read their images; evaluation and training on them use it.
# "upright": turned by the file's EXIF orientation, as a photo viewer shows it; `Ret2Model.encode`, the index and
# anything serving user images use it.
IMAGE_ORIENTATIONS = ("stored", "upright")

MAX_TEXT_TOKENS = 4096  # a tokenizer without a real limit reports ~1e30 as its model_max_length


def check_orientation(orientation: str) -> str:
    """`orientation` if it is one of `IMAGE_ORIENTATIONS`, else a ValueError naming it and the valid ones."""
    if orientation not in IMAGE_ORIENTATIONS:
        raise ValueError(f"image orientation {orientation!r} is not valid; valid: {list(IMAGE_ORIENTATIONS)}.")
    return orientation


def to_rgb(image: "Image.Image | np.ndarray") -> Image.Image:
    """Any PIL mode (RGBA, LA, P, L, CMYK, I;16, I, F, ...) or an HxW / HxWxC uint8 array -> an RGB image.

    Transparent pixels are composited onto white (their stored colour is often arbitrary); high bit-depth greyscale
    is rescaled to 8 bits from its own value range rather than clipped.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image or a numpy array, got {type(image).__name__}.")
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check_image(index: int, image: object) -> None:
    """Refuse what is not an image (named by its type) and images without pixels (which would divide by zero)."""
    if image is None:
        return
    if isinstance(image, Image.Image):
        width, height = image.size
    elif isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"images[{index}] is an array of shape {image.shape}; expected HxW or HxWxC.")
        height, width = image.shape[:2]
    else:
        raise TypeError(f"images[{index}]: expected a PIL image, a numpy array or None, got {type(image).__name__}.")
    if width == 0 or height == 0:
        raise ValueError(f"images[{index}] is {width}x{height} pixels; an image needs at least 1x1 (or pass None).")


class Ret2Processor(ProcessorMixin):
    r"""
    Wraps a tokenizer and an image processor (e.g. CLIP's). Each sample may have text, an image, or both.

    `processor(text=[...], images=[...], return_tensors="pt")` takes two lists of equal length whose entries may be
    `None` (or `""` for text) where a sample lacks that modality, and returns `input_ids`, `attention_mask`,
    `pixel_values`, `text_mask` and `vision_mask` (1 where the sample has the modality). Missing text is tokenised as
    an empty string and a missing image is a black image: the model's masks make both contribute nothing, and the
    model skips a tower for samples that lack its modality. `pixel_values` is omitted when no sample has an image
    (unless `pad_missing_images=True`). An empty batch, a sample with neither modality, an entry that is not a string /
    image, and an image without pixels raise an error naming the sample's index.
    """

    if not hasattr(ProcessorMixin, "get_attributes"):  # transformers 4.x; 5.x reads the parts from `__init__`
        attributes = ["image_processor", "tokenizer"]
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    @property
    def text_limit(self) -> int:
        """The most tokens of a text this processor encodes, special tokens included: the tokenizer's
        `model_max_length`, at most `MAX_TEXT_TOKENS`. Longer texts are truncated to it."""
        return min(self.tokenizer.model_max_length, MAX_TEXT_TOKENS)

    def save_pretrained(self, save_directory: "str | os.PathLike", *args, **kwargs):
        """`ProcessorMixin.save_pretrained`, with a tokenizer class every supported transformers loads: 5.x names a
        generic fast tokenizer `TokenizersBackend`, which 4.x does not know; `PreTrainedTokenizerFast` loads in both."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        path = Path(save_directory) / "tokenizer_config.json"
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            if config.get("tokenizer_class") == "TokenizersBackend":
                config["tokenizer_class"] = "PreTrainedTokenizerFast"
                path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return saved

    def __call__(
        self,
        text: "str | list[str | None] | None" = None,
        images: "Image.Image | list[Image.Image | None] | None" = None,
        return_tensors: str = "pt",
        pad_missing_images: bool = False,
        max_length: int | None = None,
    ) -> BatchFeature:
        if text is None and images is None:
            raise ValueError("Give text, images, or both.")
        if isinstance(text, str):
            text = [text]
        if text is not None and not isinstance(text, (list, tuple)):
            raise TypeError(f"text: expected a string or a list of strings, got {type(text).__name__}.")
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        size = len(text) if text is not None else len(images)
        text = list(text) if text is not None else [None] * size
        images = list(images) if images is not None else [None] * size
        if len(text) != len(images):
            raise ValueError(f"Got {len(text)} texts and {len(images)} images; give one entry (or None) per sample.")
        if size == 0:
            raise ValueError("Empty batch: got 0 samples (empty lists); give at least one text or image.")
        for i, entry in enumerate(text):
            if entry is not None and not isinstance(entry, str):
                raise TypeError(f"text[{i}]: expected a string or None, got {type(entry).__name__}.")
        for i, image in enumerate(images):
            _check_image(i, image)

        text_mask = [t is not None and t != "" for t in text]
        vision_mask = [image is not None for image in images]
        empty = [i for i in range(size) if not (text_mask[i] or vision_mask[i])]
        if empty:
            raise ValueError(f"Samples {empty} have neither text nor an image.")

        max_length = max_length or self.text_limit
        data = dict(
            self.tokenizer(
                [t if has else "" for t, has in zip(text, text_mask)],
                padding=True, truncation=True, max_length=max_length, return_token_type_ids=False, return_tensors="pt",
            )  # fmt: skip
        )
        if any(vision_mask) or pad_missing_images:
            data["pixel_values"] = self._pixel_values(images, vision_mask)
        data["text_mask"] = torch.tensor(text_mask, dtype=torch.long)
        data["vision_mask"] = torch.tensor(vision_mask, dtype=torch.long)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _pixel_values(self, images: list, vision_mask: list[bool]) -> torch.Tensor:
        """(B, 3, H, W): the present images preprocessed in one call, a preprocessed black image elsewhere."""
        present = [to_rgb(image) for image, has in zip(images, vision_mask) if has]
        pixels = self.image_processor(present, return_tensors="pt")["pixel_values"] if present else None
        if all(vision_mask):
            return pixels
        # A constant image stays constant through resizing and cropping, so its size does not matter.
        black = self.image_processor([Image.new("RGB", (224, 224))], return_tensors="pt")
        out = black["pixel_values"].expand(len(images), -1, -1, -1).clone()  # (B, 3, H, W)
        if pixels is not None:
            out[torch.tensor(vision_mask)] = pixels
        return out


def is_image_file(text: str) -> bool:
    """Whether a string names an existing local file with an image extension (sentence-transformers' rule)."""
    return text.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(text)


def split_input(item: object, detect_image_paths: bool = False) -> tuple[str | None, object | None]:
    """One raw query or document -> (text or None, image source or None).

    - `str`: text. With `detect_image_paths`, a string naming an existing image file (`IMAGE_EXTENSIONS`) is an
      image path instead, as in sentence-transformers.
    - `pathlib.Path` (any `os.PathLike`), `PIL.Image.Image`, `numpy.ndarray` (H x W or H x W x C): an image.
    - `(text, image)` tuple or `{"text": ..., "image": ...}` dict (either key may be missing or None): both; the image
      may then also be a plain `str` path.
    An empty text counts as no text. An item with neither raises.
    """
    if isinstance(item, dict):
        unknown = set(item) - {"text", "image"}
        if unknown:
            raise ValueError(f"Input dict has keys {sorted(unknown)}; valid keys: ['image', 'text'].")
        text, image = item.get("text"), item.get("image")
    elif isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError(f"A tuple input is (text, image); got a tuple of {len(item)} entries.")
        text, image = item
    elif isinstance(item, str):
        text, image = (None, item) if detect_image_paths and is_image_file(item) else (item, None)
    elif isinstance(item, (os.PathLike, Image.Image, np.ndarray)):
        text, image = None, item
    else:
        raise TypeError(
            f"Cannot encode a {type(item).__name__}; give a str (text), a pathlib.Path, PIL image or numpy array "
            "(image), a (text, image) tuple or a {'text': ..., 'image': ...} dict."
        )
    if text is not None and not isinstance(text, str):
        raise TypeError(f"Text must be a str or None, got {type(text).__name__}.")
    if image is not None and not isinstance(image, (str, os.PathLike, Image.Image, np.ndarray)):
        raise TypeError(f"An image must be a path, a PIL image or a numpy array, got {type(image).__name__}.")
    text = text or None
    if text is None and image is None:
        raise ValueError(f"Input {item!r} has neither text nor an image.")
    return text, image


def load_image(
    source: "str | os.PathLike | Image.Image | np.ndarray", orientation: str = "upright"
) -> "Image.Image | np.ndarray":
    """An image given as a local file path is opened and read, turned upright by its EXIF orientation or not
    (`orientation`, one of `IMAGE_ORIENTATIONS`); a PIL image or an array is returned as is (the processor converts
    every mode to RGB)."""
    check_orientation(orientation)
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Image file {str(path)!r} does not exist (URLs are not fetched: download first).")
    with Image.open(path) as image:  # both return a loaded copy: the file closes here
        return ImageOps.exif_transpose(image) if orientation == "upright" else image.copy()


class Ret2InputBatches(torch.utils.data.Dataset):
    """Batches of raw samples, each loaded and preprocessed when it is accessed (in a DataLoader worker when the
    loader has workers). Item `i` is the processor's output for the samples `batches[i]`; image files are read with
    `orientation` (see `IMAGE_ORIENTATIONS`), or by `open_image(sample index, image)` when given."""

    def __init__(
        self,
        processor: "Ret2Processor",
        samples: list[tuple[str | None, object | None]],
        batches: list,
        orientation: str = "upright",
        open_image: "Callable[[int, object], object] | None" = None,
    ):
        # `Image.open` reads pixels on first use; read them here: forked workers would share the open file's position.
        for _, image in samples:
            if isinstance(image, Image.Image):
                image.load()
        self.processor = processor
        self.samples = samples
        self.batches = batches
        self.orientation = check_orientation(orientation)
        self.open_image = open_image

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        texts, images = [], []
        for j in self.batches[i]:
            text, image = self.samples[j]
            if image is not None:
                image = self.open_image(j, image) if self.open_image is not None else load_image(image, self.orientation)
            texts.append(text)
            images.append(image)
        return dict(self.processor(text=texts, images=images, return_tensors="pt"))


__all__ = [
    "IMAGE_ORIENTATIONS", "Ret2InputBatches", "Ret2Processor", "check_orientation", "is_image_file", "load_image",
    "split_input", "to_rgb",
]  # fmt: skip
