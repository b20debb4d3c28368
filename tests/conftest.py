import tomllib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from PIL import Image

from ret2.tiny import tiny_model_and_processor

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]  # the checkout: tests/ sits at its root
# The installed commands (pyproject's [project.scripts]): name -> the module of the command layer that runs it.
COMMANDS = {name: target.removesuffix(":main")
            for name, target in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"].items()}  # fmt: skip

WORDS = "red green blue yellow circle square triangle star left right top bottom small big".split()


def solid(color: tuple[int, int, int], size: int = 40, mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", (size, size), color).convert(mode)


def pattern(seed: int, size: int = 40) -> Image.Image:
    """A random RGB image (different seeds give different images)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="session")
def tiny():
    """A seeded tiny ReT-2 (CLIP towers of width 32, depth 4) and its processor, in eval mode."""
    return tiny_model_and_processor(WORDS, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny, tmp_path_factory) -> Path:
    """`tiny` (model and processor) saved to a folder, as a checkpoint on disk; tests only read it."""
    model, processor = tiny
    folder = tmp_path_factory.mktemp("tiny-model") / "ret2-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def mixed_batch(tiny):
    """Texts and images with every modality combination."""
    _, processor = tiny
    texts = ["a red circle on the left", None, "a big blue square", "green star", None, "small yellow triangle"]
    images = [pattern(1), pattern(2), None, pattern(3), pattern(4), None]
    return texts, images
