"""Reading request bodies: limits, the OpenAI embedding request, the search request and images given inline.

Every refusal is a `RequestError` carrying the HTTP status and a message that names the bad value or the limit:
400 for malformed JSON or base64, unknown fields, empty input, and images given as a URL (or a path without an allowed
image root); 413 for a body, an image's bytes or its pixels over the limit; 422 for too many items or too long a text.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

INPUT_TYPES = ("query", "document")
ENCODING_FORMATS = ("float", "base64")
EMBEDDING_FIELDS = ("model", "input", "encoding_format", "input_type", "dimensions", "user")
SEARCH_FIELDS = ("text", "image", "k", "engine", "filter", "mode", "fusion", "weights")
DELETE_FIELDS = ("ids", "filter")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Defaults fit a multimodal retriever: a batch of photos, captions of any length the
    tokenizer truncates anyway."""

    max_body_bytes: int = 32 * 2**20
    max_items: int = 256
    max_text_chars: int = 20_000
    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 40_000_000
    max_k: int = 1000


class RequestError(Exception):
    """A request the server refuses: `status` (400, 413, 422) and a message naming what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_json(body: bytes) -> dict:
    """The JSON object of a request body; 400 for anything else."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise RequestError(400, f"the body must be a JSON object, got a {type(value).__name__}")
    return value


def _check_fields(body: dict, valid: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(valid))
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; valid fields: {list(valid)}")


def _choice(body: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(name, default)
    if value not in choices:
        raise RequestError(400, f"{name} {value!r} is not one of {list(choices)}")
    return value


def _text(value: object, where: str, limits: Limits) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(400, f"{where}: text must be a string, got {type(value).__name__}")
    if len(value) > limits.max_text_chars:
        raise RequestError(422, f"{where}: text of {len(value)} characters is over the limit max_text_chars="
                                f"{limits.max_text_chars}")  # fmt: skip
    return value or None


def decode_image(
    value: object, where: str, limits: Limits, orientation: str = "upright", image_root: Path | None = None
) -> Image.Image:
    """An image given as base64 or a data URL (or, with `image_root`, a path under it), checked against the limits
    before its pixels are decoded, turned upright by its EXIF orientation unless `orientation` is "stored"."""
    if not isinstance(value, str) or not value:
        raise RequestError(400, f"{where}: image must be a non-empty base64 string or data URL")
    if _URL.match(value):
        raise RequestError(400, f"{where}: image URLs are not fetched; send the image as base64 or a data URL")
    data = _base64_image(value, where, limits)
    if data is None:
        data = _image_file(value, where, limits, image_root)
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: the size is known before any pixel is decoded
    except Image.DecompressionBombError as err:  # PIL's own refusal, past twice its MAX_IMAGE_PIXELS
        raise RequestError(413, f"{where}: image is over the limit max_image_pixels={limits.max_image_pixels} "
                                f"({err})") from None  # fmt: skip
    except (UnidentifiedImageError, OSError) as err:
        raise RequestError(400, f"{where}: the image bytes are not an image PIL can read ({err})") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise RequestError(413, f"{where}: image of {width}x{height} pixels is over the limit max_image_pixels="
                                f"{limits.max_image_pixels}")  # fmt: skip
    try:
        image.load()
    except (OSError, ValueError) as err:
        raise RequestError(400, f"{where}: the image could not be decoded ({err})") from None
    return ImageOps.exif_transpose(image) if orientation == "upright" else image


def _base64_image(value: str, where: str, limits: Limits) -> bytes | None:
    """The bytes of a data URL or a base64 string; None when `value` is neither (it may then be a path)."""
    data_url = _DATA_URL.match(value)
    payload = value[data_url.end():] if data_url else value
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise RequestError(413, f"{where}: image of about {len(payload) * 3 // 4} bytes is over the limit "
                                f"max_image_bytes={limits.max_image_bytes}")  # fmt: skip
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        if data_url or value.startswith("data:"):
            raise RequestError(400, f"{where}: the data URL is not 'data:image/<type>;base64,<valid base64>'") from None
        return None


def _image_file(value: str, where: str, limits: Limits, image_root: Path | None) -> bytes:
    if image_root is None:
        raise RequestError(400, f"{where}: image is neither valid base64 nor a data URL (file paths are refused: the "
                                "server was started without --image-root)")  # fmt: skip
    root = image_root.resolve()
    path = (root / value).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise RequestError(400, f"{where}: image path {value!r} is not a file under the allowed image root")
    if path.stat().st_size > limits.max_image_bytes:
        raise RequestError(413, f"{where}: image file of {path.stat().st_size} bytes is over the limit "
                                f"max_image_bytes={limits.max_image_bytes}")  # fmt: skip
    return path.read_bytes()


def _sample(text: object, image: object, where: str, limits: Limits, orientation: str, image_root: Path | None):
    text = _text(text, where, limits)
    image = None if image is None else decode_image(image, where, limits, orientation, image_root)
    if text is None and image is None:
        raise RequestError(400, f"{where}: empty input: give a non-empty text, an image, or both")
    return text, image


@dataclass
class EmbeddingRequest:
    samples: list  # (text or None, PIL image or None) per input, in order
    input_type: str
    encoding_format: str
    dimensions: int | None = None  # a Matryoshka size: the embeddings' re-normalised prefixes; None: the full size


def parse_embedding_request(
    body: dict, limits: Limits, sizes: tuple[int, ...], orientation: str = "upright", image_root: Path | None = None
) -> EmbeddingRequest:
    """An OpenAI embedding request (`input`: a string, a list of strings, or a list of `{"text", "image"}` objects)
    plus `input_type` (default "query"); `dimensions`, if given, must be one of `sizes` (the embedding sizes served)."""
    _check_fields(body, EMBEDDING_FIELDS)
    if "model" in body and not isinstance(body["model"], str):
        raise RequestError(400, "model must be a string")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions not in sizes):
        raise RequestError(400, f"dimensions={dimensions!r} is not a size this model serves: valid sizes are "
                                f"{list(sizes)} (its embedding size and the Matryoshka sizes it was trained for)")  # fmt: skip
    encoding_format = _choice(body, "encoding_format", ENCODING_FORMATS, "float")
    input_type = _choice(body, "input_type", INPUT_TYPES, "query")
    if "input" not in body:
        raise RequestError(400, "missing field 'input': a string, a list of strings or of {text, image} objects")
    inputs = body["input"]
    inputs = [inputs] if isinstance(inputs, (str, dict)) else inputs
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "empty input: 'input' must be a non-empty string or a non-empty list")
    if len(inputs) > limits.max_items:
        raise RequestError(422, f"{len(inputs)} inputs are over the limit max_items={limits.max_items}")
    samples = []
    for i, item in enumerate(inputs):
        where = f"input[{i}]"
        if isinstance(item, str):
            samples.append(_sample(item, None, where, limits, orientation, image_root))
        elif isinstance(item, dict):
            unknown = sorted(set(item) - {"text", "image"})
            if unknown:
                raise RequestError(400, f"{where}: unknown field(s) {unknown}; valid fields: ['image', 'text']")
            samples.append(_sample(item.get("text"), item.get("image"), where, limits, orientation, image_root))
        else:
            raise RequestError(400, f"{where}: a {type(item).__name__} is not an input (token ids are not accepted); "
                                    "give a string or a {text, image} object")  # fmt: skip
    return EmbeddingRequest(samples, input_type, encoding_format, dimensions)


@dataclass
class SearchRequest:
    sample: tuple  # (text or None, PIL image or None)
    k: int
    engine: str
    filter: dict | None = None  # a metadata filter (`ret2.index.filters`)
    mode: str = "vector"  # vector, keyword or hybrid
    fusion: str = "rrf"
    weights: tuple[float, float] = (0.5, 0.5)


def parse_search_request(
    body: dict, limits: Limits, engines: tuple[str, ...], orientation: str = "upright", image_root: Path | None = None
) -> SearchRequest:
    """A search request: `text`, `image` (base64 or data URL) or both, `k` (default 10), `engine` (default exact)."""
    _check_fields(body, SEARCH_FIELDS)
    k = body.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise RequestError(400, f"k={k!r} must be a positive integer")
    if k > limits.max_k:
        raise RequestError(422, f"k={k} is over the limit max_k={limits.max_k}")
    engine = _choice(body, "engine", engines, "exact")
    from ret2.options import FUSIONS, SEARCH_MODES

    mode, fusion = _choice(body, "mode", SEARCH_MODES, "vector"), _choice(body, "fusion", FUSIONS, "rrf")
    weights = body.get("weights", [0.5, 0.5])
    if (not isinstance(weights, list) or len(weights) != 2
            or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights)):  # fmt: skip
        raise RequestError(400, f"weights={weights!r} must be two numbers >= 0 (vector, keyword)")
    sample = _sample(body.get("text"), body.get("image"), "query", limits, orientation, image_root)
    if mode != "vector" and sample[0] is None:
        raise RequestError(400, f"mode {mode!r} ranks by the query's text: give a text")
    return SearchRequest(sample, k, engine, _filter(body.get("filter")), mode, fusion, tuple(weights))


def _filter(value: object) -> dict | None:
    """A metadata filter as `Ret2Index.search` takes it; 400 naming the bad part."""
    if value is None:
        return None
    from ret2.index.filters import FilterError, check_filter

    try:
        check_filter(value)
    except FilterError as err:
        raise RequestError(400, str(err)) from None
    return value


@dataclass
class Document:
    """A document to upsert: its id, text, image (decoded) and metadata (the other JSON fields)."""

    id: str
    text: str | None
    image: Image.Image | None
    metadata: dict


def parse_documents(body: dict, limits: Limits, orientation: str = "upright") -> list[Document]:
    """`{"documents": [{"id", "text", "image" (base64 or data URL), any other field: metadata}, ...]}`."""
    _check_fields(body, ("documents",))
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise RequestError(400, "documents must be a non-empty list of {id, text, image, ...} objects")
    if len(documents) > limits.max_items:
        raise RequestError(422, f"{len(documents)} documents are over the limit max_items={limits.max_items}")
    out, seen = [], set()
    for n, doc in enumerate(documents):
        where = f"documents[{n}]"
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc["id"]:
            raise RequestError(400, f"{where}: a document is an object with a non-empty string id")
        if doc["id"] in seen:
            raise RequestError(400, f"{where}: id {doc['id']!r} is given twice")
        seen.add(doc["id"])
        text, image = _sample(doc.get("text"), doc.get("image"), where, limits, orientation, None)
        metadata = {k: v for k, v in doc.items() if k not in ("id", "text", "image")}
        out.append(Document(doc["id"], text, image, metadata))
    return out


def parse_delete(body: dict) -> tuple[list[str] | None, dict | None]:
    """`{"ids": [...]}` or `{"filter": {...}}`: (ids, None) or (None, filter)."""
    _check_fields(body, DELETE_FIELDS)
    if ("ids" in body) == ("filter" in body):
        raise RequestError(400, "give exactly one of ids (a list of document ids) and filter (a metadata filter)")
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise RequestError(400, "ids must be a non-empty list of document ids (strings)")
        return ids, None
    return None, _filter(body["filter"])
