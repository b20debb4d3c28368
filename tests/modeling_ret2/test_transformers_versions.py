"""A saved ReT-2 folder loads, encodes and saves again on every supported transformers line, as a Hub user gets it.

Each supported line gets its own virtual environment under `$RET2_VENV_CACHE/transformers-<version>/` (default
`~/.cache/ret2/venvs`, outside the checkout, so a fresh clone, CI's included, reuses it while it imports): torch pinned as `run.sh` pins it, that transformers, safetensors, pillow, and the
sentence-transformers version pip picks for that line; never our package. The folder, saved by the package, is
loaded there with `AutoModel` / `AutoProcessor` (`trust_remote_code=True`) from a cwd where our package is not
importable, and must give the package's embeddings. Building one environment took about 4 minutes on the 2-core
machine shared with other jobs (245 s for 5.24.0; torch comes from a local wheel); a reused one costs nothing, and the
round trip itself takes about 40 s per line.
"""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import WORDS, pattern
from remote_code import load_in_clean_process

from configuration_ret2.configuration_ret2 import MIN_TRANSFORMERS_VERSION, check_transformers_version
from ret2.tiny import tiny_model_and_processor

logger = logging.getLogger(__name__)

TORCH = "torch==2.13.0"  # as run.sh pins it: an unpinned torch resolves to a multi-GB CUDA build
SUPPORTED = ["4.57.6", "5.24.0"]  # the last 4.x release and the newest 5.x this index serves

SAMPLES = [
    {"text": "a red circle on the left"},
    {"image": "image1.png"},
    {"text": "big blue square", "image": "image2.png"},
]

# Runs in the other environment with argv = [folder, workdir]; writes what it measured into workdir/report.json.
CHECK = """
import json, sys, torch, transformers
from transformers import AutoModel, AutoProcessor
folder, work = sys.argv[1:3]
expected = torch.load(f"{work}/expected.pt")
samples = [{k: (f"{work}/{v}" if k == "image" else v) for k, v in s.items()} for s in json.load(open(f"{work}/samples.json"))]

def max_diff(a, b):
    return (torch.as_tensor(a).float() - b).abs().max().item()

def encode_all(model, processor):
    return {kind: model.encode(samples, kind=kind, processor=processor, convert_to="torch") for kind in ("query", "document")}

model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
report = {"transformers": transformers.__version__, "model_module": type(model).__module__}
report["encode"] = max(max_diff(v, expected[k]) for k, v in encode_all(model, processor).items())
from PIL import Image
inputs = processor(text=[s.get("text") for s in samples],
                   images=[Image.open(s["image"]) if "image" in s else None for s in samples], return_tensors="pt")
with torch.no_grad():
    report["tensors"] = max_diff(model.encode_queries(**inputs), expected["query"])

again = f"{work}/saved-again"
model.save_pretrained(again)
processor.save_pretrained(again)
report["tokenizer_class"] = json.load(open(f"{again}/tokenizer_config.json")).get("tokenizer_class")
reloaded = AutoModel.from_pretrained(again, trust_remote_code=True).eval()
reprocessor = AutoProcessor.from_pretrained(again, trust_remote_code=True)
report["reloaded"] = max(max_diff(v, expected[k]) for k, v in encode_all(reloaded, reprocessor).items())

try:
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
except ImportError:
    report["sentence_transformers"] = None
else:
    st = SentenceTransformer(folder, trust_remote_code=True)
    st_embeddings = {"query": st.encode_query(samples, convert_to_tensor=True),
                     "document": st.encode_document(samples, convert_to_tensor=True)}
    report["sentence_transformers"] = sentence_transformers.__version__
    report["sentence_transformers_diff"] = max(max_diff(v, expected[k]) for k, v in st_embeddings.items())
json.dump(report, open(f"{work}/report.json", "w"))
"""


def _pip(python: Path, *requirements: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip


VENV_CACHE = Path(os.environ.get("RET2_VENV_CACHE", Path.home() / ".cache" / "ret2" / "venvs"))


def transformers_venv(version: str) -> Path:
    """The python of `VENV_CACHE/transformers-<version>`, built unless it already imports torch 2.13.0 and that
    transformers. sentence-transformers is added where pip finds a release compatible with that transformers."""
    folder = VENV_CACHE / f"transformers-{version}"
    python = folder / "bin" / "python"
    probe = f"import torch, transformers, safetensors, PIL; assert transformers.__version__ == {version!r}"
    if python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0:
        return python
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    core = _pip(python, TORCH, f"transformers=={version}", "safetensors", "pillow")
    if core.returncode != 0:
        raise RuntimeError(f"cannot install transformers {version} into {folder}:\n{core.stderr[-3000:]}")
    optional = _pip(python, TORCH, f"transformers=={version}", "sentence-transformers")
    if optional.returncode != 0:
        logger.warning("no sentence-transformers for transformers %s: %s", version, optional.stderr[-500:])
    logger.warning("built %s in %.0f s", folder, time.monotonic() - start)
    return python


def test_an_old_transformers_gets_one_line_naming_both_versions():
    check_transformers_version(MIN_TRANSFORMERS_VERSION)
    check_transformers_version("5.24.0.dev0")
    with pytest.raises(ImportError) as error:
        check_transformers_version("4.56.2")
    message = str(error.value)
    assert "\n" not in message
    assert f"needs transformers >= {MIN_TRANSFORMERS_VERSION}" in message and "transformers 4.56.2 is installed" in message


@pytest.mark.slow
@pytest.mark.parametrize("version", SUPPORTED)
def test_saved_folder_loads_and_encodes_identically_in_a_clean_venv(version, tmp_path):
    """Pins the supported range: a folder saved by the package (transformers 5.x) loads with AutoModel /
    AutoProcessor and sentence-transformers in a clean environment of each supported transformers, encodes text,
    images and both as the package does (<= 1e-5), saves again there, and that folder loads there and here."""
    python = transformers_venv(version)
    model, processor = tiny_model_and_processor(WORDS, seed=3)
    folder = tmp_path / "ret2-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for i in (1, 2):
        pattern(i).save(tmp_path / f"image{i}.png")
    (tmp_path / "samples.json").write_text(json.dumps(SAMPLES))
    samples = [{k: (str(tmp_path / v) if k == "image" else v) for k, v in s.items()} for s in SAMPLES]
    expected = {kind: model.encode(samples, kind=kind, processor=processor, convert_to="torch") for kind in
                ("query", "document")}  # fmt: skip
    torch.save(expected, tmp_path / "expected.pt")

    load_in_clean_process(tmp_path, CHECK, str(folder), str(tmp_path), python=str(python), timeout=900)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["transformers"] == version
    assert report["model_module"].startswith("transformers_modules")
    assert report["encode"] <= 1e-5 and report["tensors"] <= 1e-5 and report["reloaded"] <= 1e-5, report
    assert report["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert report["sentence_transformers"] is not None, "sentence-transformers did not install for this line"
    assert report["sentence_transformers_diff"] <= 1e-5, report

    # The folder that line saved loads here (the package's transformers) with the same embeddings.
    from transformers import AutoModel

    again = AutoModel.from_pretrained(tmp_path / "saved-again", trust_remote_code=True).eval()
    embeddings = again.encode(samples, kind="query", processor=processor, convert_to="torch")
    assert (embeddings - expected["query"]).abs().max().item() <= 1e-5
