"""Images of a dataset, opened by their path relative to the dataset root with the processor's own file loader
(`load_image`) and converted to RGB exactly as the processor converts them (`modeling_ret2.to_rgb`: transparency
composited on white, high bit depth rescaled), so training, evaluation, the index and the Hub processor see the same
pixels for the same orientation rule.

The orientation rule (`IMAGE_ORIENTATIONS`, docs/images.md) is explicit: "stored" (EXIF orientation not applied) is
the benchmarks' protocol, used to evaluate and train on M-BEIR and M2KR; "upright" (EXIF applied) is what
`Ret2Model.encode` and the index use for user images."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from modeling_ret2 import to_rgb
from modeling_ret2.processing_ret2 import IMAGE_ORIENTATIONS, check_orientation, load_image

__all__ = ["IMAGE_ORIENTATIONS", "ImageLoader", "check_orientation", "open_rgb"]


class ImageLoader:
    """Opens images by their path relative to the dataset root, on demand, as RGB, read with `orientation` (one of
    `IMAGE_ORIENTATIONS`; default "stored", the benchmarks' protocol: datasets are read as their benchmark reads them).

    Refuses a path that leaves the root (absolute, or `..` escaping). The check is on the normalised path, not the
    symlink-resolved one, so an image folder symlinked to another disk still works. A file that is missing, truncated
    or not an image raises an error naming the path and the record.
    """

    def __init__(self, root: str | Path, orientation: str = "stored"):
        self.root = os.path.normpath(os.path.abspath(root))
        self.orientation = check_orientation(orientation)

    def path(self, rel_path: str) -> str:
        """Absolute path of `rel_path` under the root; ValueError if it lies outside."""
        full = os.path.normpath(os.path.join(self.root, rel_path))
        if os.path.isabs(rel_path) or not full.startswith(self.root + os.sep):
            raise ValueError(f"image path {rel_path!r} resolves outside the dataset root {self.root}")
        return full

    def __call__(self, rel_path: str, record_id: str | None = None) -> Image.Image:
        """Load `rel_path` as an RGB image; `record_id` (qid / did) is named if the file is missing or unreadable."""
        return open_rgb(self.path(rel_path), f"image {rel_path!r} of record {record_id!r}", self.orientation)


def open_rgb(path: str | os.PathLike, what: str = "image", orientation: str = "stored") -> Image.Image:
    """Open the image file at `path` (anywhere: no root check) as RGB, decoded now, read with `orientation`; `what`
    names it in errors.

    The file is read by the processor's own loader (`modeling_ret2.load_image`), so a document indexed from disk and
    the same file given to `Ret2Model.encode` (both "upright") get the same pixels."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found at {path}")
    try:
        return to_rgb(load_image(path, orientation))  # decoded now: a truncated file fails here, not in the processor
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{what} at {path} cannot be read: {err}") from err


def image_problem(path: str | os.PathLike) -> str | None:
    """Why the image file at `path` cannot be indexed ("missing", "empty file", "not an image or an unsupported
    format: ...", "truncated or corrupt: ..."), or None when it decodes. JPEGs decode in draft mode (at 1/8 scale),
    which reads every byte of the file, so a truncated one fails as in a full decode at a fraction of its cost."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
    except FileNotFoundError:
        return "missing"
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except (Image.UnidentifiedImageError, Image.DecompressionBombError) as err:
        return f"not an image or an unsupported format: {err}"
    except (OSError, ValueError, SyntaxError) as err:
        return f"truncated or corrupt: {err}"
    return None


def find_unreadable(paths: list[str | os.PathLike], workers: int = 4) -> dict[str, str]:
    """{path: why} for every file of `paths` that cannot be indexed (`image_problem`), found in one pass (threads:
    Pillow releases the GIL while it decodes), so that every bad file of a collection is reported at once."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = pool.map(image_problem, paths)
    return {str(path): why for path, why in zip(paths, problems) if why is not None}
