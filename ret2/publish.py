#!/usr/bin/env python
"""Publish a ReT-2 model to the Hugging Face Hub as a `trust_remote_code` repository.

    ret2-publish --model runs/ret2/checkpoint-500 --repo-id my-org/ret2-clip-b --dry-run staged/
    ret2-publish --model runs/lora --base runs/ret2 --repo-id my-org/ret2-lora --eval-results results.json
    ret2-publish --from-ret1 <ReT-1 checkpoint> --repo-id my-org/ret1-as-ret2

(from a checkout: `python hub_upload.py ...`; from Python: `publish(model, repo_id, ...)`.)

The model (a `save_pretrained` folder, a Trainer `checkpoint-N/`, or a LoRA adapter merged into its base) is
re-saved with `save_pretrained` into a flat folder: config with `auto_map`, safetensors weights, the remote-code files,
the processor, and a model card. That folder is loaded in a clean process the way a Hub user loads it (our packages
not importable, offline) and must give the source model's embeddings; only then are the repository (and branch)
created and the folder uploaded. The token comes from `HF_TOKEN` or `hf auth login`; it is never printed.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import CommitInfo, HfApi, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image

from modeling_ret2 import Ret2Model, Ret2Processor
from ret2.model import is_hub_id, model_fingerprint
from ret2.model_card import datasets_of, metrics_markdown, model_card, recipe_section
from ret2.options import RECIPE_FILE

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")
# Files a Trainer writes beside the model: never loaded here, never published.
TRAINER_STATE = re.compile(
    r"(optimizer|scheduler|scaler)\.pt|rng_state(_\d+)?\.pth|training_args\.bin|trainer_state\.json"
)
ADAPTER_FILE = re.compile(r"adapter_(config\.json|model\.\w+)")
REMOTE_CODE_FILES = ("configuration_ret2.py", "modeling_ret2.py", "processing_ret2.py", "sentence_ret2.py")
TOLERANCE = 1e-4  # max |difference| of L2-normalised embeddings (thread counts change float summation order)

# Prepended to every clean-process script: our packages are installed in editable mode, so without this hook a broken
# remote-code folder would silently load our local classes instead.
BLOCKER = """
import importlib.abc, sys
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"configuration_ret2", "modeling_ret2", "ret2", "hub_upload"}:
            raise ModuleNotFoundError(f"{name} must not be importable in this process")
sys.meta_path.insert(0, _Refuse())
"""

# Run in the clean process with argv = [folder, workdir]: encode the probe through AutoModel / AutoProcessor and write
# what differs from the source model's `expected.pt` into `report.json`.
VERIFY_SCRIPT = """
import json, sys, torch
from PIL import Image
from transformers import AutoModel, AutoProcessor
folder, work = sys.argv[1:3]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
expected = torch.load(f"{work}/expected.pt")
images = [None if name is None else Image.open(f"{work}/{name}") for name in expected["images"]]
inputs = processor(text=expected["texts"], images=images, return_tensors="pt")
with torch.no_grad():
    embeds = {"queries": model.encode_queries(**inputs), "documents": model.encode_documents(**inputs)}
report = {
    "classes": [f"{type(x).__module__}.{type(x).__name__}" for x in (model, processor)],
    "input_mismatch": sorted(k for k, v in expected["inputs"].items()
                             if k not in inputs or not torch.equal(inputs[k], v)),
    "max_abs_diff": {k: (v.float() - expected[k]).abs().max().item() if v.shape == expected[k].shape else float("inf")
                     for k, v in embeds.items()},
}
with open(f"{work}/report.json", "w") as f:
    json.dump(report, f)
"""


class PublishError(Exception):
    """A step of the publication failed; the message says which and why. `staging`: the assembled folder, kept for a
    look when the failure came after it was written (None before that)."""

    def __init__(self, message: str, staging: Path | None = None):
        super().__init__(message)
        self.staging = staging


@contextmanager
def step(name: str) -> Iterator[None]:
    """Log a step and turn any failure inside it into a `PublishError` that names the step."""
    logger.info("%s ...", name)
    try:
        yield
    except PublishError:
        raise
    except Exception as error:
        raise PublishError(f"{name} failed: {type(error).__name__}: {error}") from error


def redact(text: str) -> str:
    """`text` with the Hub token (environment or login) and anything shaped like a token replaced by `***`."""
    secrets = {os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN"), get_token()}
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


def run_in_clean_process(
    workdir: Path, script: str, *args: str, timeout: float = 600, python: str = sys.executable
) -> subprocess.CompletedProcess:
    """Run `script` (with `sys.argv[1:] == args`) the way a Hub user's Python would: `python -I`, cwd and HOME under
    `workdir`, a private HF cache, `HF_HUB_OFFLINE=1`, no token, and our packages refused at import. `python`: the
    interpreter (another virtual environment's, e.g. one with another transformers)."""
    workdir = Path(workdir)
    (workdir / "cwd").mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(workdir / "hf_home"),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [python, "-I", "-c", BLOCKER + script, *args], cwd=workdir / "cwd", env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def check_repo_id(value: str) -> str:
    """`value` if it is a repository to publish to, `ORG/NAME` with Hub-valid characters; else ValueError naming it."""
    try:
        validate_repo_id(value)
    except HFValidationError as error:
        raise ValueError(f"{value!r} is not a valid Hub repo id: {error}") from None
    if value.count("/") != 1:
        raise ValueError(f"{value!r} is not of the form ORG/NAME (a user or organisation, a name).")
    return value


def check_hub_model_id(value: str) -> str:
    """`value` if it reads as a Hub model id, not a local path (a card's `base_model`); else ValueError naming it."""
    if not is_hub_id(value):
        raise ValueError(f"{value!r} is not a Hub model id (e.g. openai/clip-vit-large-patch14).")
    return value


# --- loading ---------------------------------------------------------------------------------------------------------


def refuse_pickles(folders: list[Path], allow_pickle: bool) -> None:
    """Raise when a folder holds pickle weights (files a Trainer writes beside the model aside) and they are not
    explicitly allowed: unpickling runs arbitrary code."""
    pickles = [
        str(p)
        for folder in folders
        for p in sorted(folder.iterdir())
        if p.suffix in PICKLE_SUFFIXES and not TRAINER_STATE.fullmatch(p.name)
    ]
    if pickles and not allow_pickle:
        raise PublishError(
            f"pickle weights {pickles}: loading a pickle can run arbitrary code, so they are refused. Pass "
            "--allow-pickle if you trust them (they are re-saved as safetensors; no pickle is published)."
        )


def load_processor(candidates: list[str | Path]) -> Ret2Processor:
    """The processor of the first candidate (folder or Hub id) that has one."""
    for candidate in candidates:
        if Path(candidate).is_dir() and not (Path(candidate) / "processor_config.json").is_file():
            continue
        # trust_remote_code=False: the tokenizer loader reads config.json, whose auto_map would otherwise prompt.
        return Ret2Processor.from_pretrained(str(candidate), trust_remote_code=False)
    raise PublishError(
        f"no processor (processor_config.json) in {[str(c) for c in candidates]}; save one beside the model with "
        "processor.save_pretrained(folder)."
    )


def _recipe_of(checkpoint: Path) -> dict | None:
    """The `recipe.json` a `ret2-train --recipe` run wrote beside the model (its folder, or above a checkpoint-N)."""
    for folder in (checkpoint, *([checkpoint.parent] if checkpoint.name.startswith("checkpoint-") else [])):
        path = folder / RECIPE_FILE
        if path.is_file():
            with step(f"read {path}"):
                return json.loads(path.read_text())
    return None


def load_checkpoint(
    checkpoint: Path, base: str | None = None, allow_pickle: bool = False
) -> tuple[Ret2Model, Ret2Processor]:
    """Load a ReT-2 model and its processor from a `save_pretrained` folder, a Trainer `checkpoint-N/` folder, or a
    LoRA adapter folder merged into its base (`base`, else the adapter config's `base_model_name_or_path`)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise PublishError(f"--model {checkpoint} is not a folder.")
    adapter_config = checkpoint / "adapter_config.json"
    if adapter_config.is_file():
        base = base or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base:
            raise PublishError(f"{adapter_config} names no base_model_name_or_path; give the base model with --base.")
    elif base:
        raise PublishError(f"--base {base} is for LoRA adapters, but {checkpoint} has no adapter_config.json.")
    elif not (checkpoint / "config.json").is_file():
        raise PublishError(
            f"{checkpoint} is neither a ReT-2 model folder (config.json) nor a LoRA adapter (adapter_config.json)."
        )
    else:
        model_type = json.loads((checkpoint / "config.json").read_text()).get("model_type")
        if model_type != "ret2":
            raise PublishError(f"{checkpoint}/config.json has model_type={model_type!r}; expected 'ret2'.")
    local = [checkpoint] + ([Path(base)] if base and Path(base).is_dir() else [])
    refuse_pickles(local, allow_pickle)
    model = Ret2Model.from_pretrained(base or checkpoint, use_safetensors=None if allow_pickle else True)
    if base:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    return model.eval(), load_processor([checkpoint] + ([base] if base else []))


# --- assembling and checking -----------------------------------------------------------------------------------------


def check_staging(folder: Path) -> None:
    """Raise unless `folder` is a complete remote-code repository with safetensors weights and nothing else: no
    pickle, no optimizer or Trainer state, no adapter files."""
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    banned = [
        n for n in names
        if n.endswith(PICKLE_SUFFIXES) or TRAINER_STATE.fullmatch(Path(n).name) or ADAPTER_FILE.fullmatch(Path(n).name)
    ]  # fmt: skip
    if banned:
        raise PublishError(f"{folder} holds files that must not be published: {banned}.")
    required = ["config.json", "processor_config.json", "README.md", *REMOTE_CODE_FILES]
    missing = [n for n in required if n not in names]
    if not any(n.endswith(".safetensors") for n in names):
        missing.append("model.safetensors")
    if missing:
        raise PublishError(f"{folder} lacks {missing}; found {names}.")
    auto_maps = {
        "config.json": {"AutoConfig", "AutoModel"},
        "processor_config.json": {"AutoProcessor"},
    }
    for name, classes in auto_maps.items():
        auto_map = json.loads((folder / name).read_text()).get("auto_map", {})
        if not classes <= set(auto_map):
            raise PublishError(f"{folder / name} has auto_map {auto_map}; it needs entries for {sorted(classes)}.")


def assemble(model: Ret2Model, processor: Ret2Processor, folder: Path, card: str) -> None:
    """Write model, processor, remote code and model card into `folder` (flat), then `check_staging` it."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "README.md").write_text(card)
    check_staging(folder)


def probe() -> tuple[list[str | None], list[Image.Image | None]]:
    """A fixed small input with every modality combination (text only, image only, both), identical in any process."""
    ramp = Image.linear_gradient("L").resize((64, 64))
    images = [Image.merge("RGB", (ramp, ramp.rotate(90), ramp.rotate(180))), Image.radial_gradient("L").convert("RGB")]
    return ["a red circle on the left", None, "a big blue square"], [None, *images]


def verify_in_clean_process(folder: Path, model: Ret2Model, processor: Ret2Processor, workdir: Path) -> dict:
    """Load `folder` through AutoModel / AutoProcessor in a clean process (see `run_in_clean_process`), encode the
    probe, and raise unless the processed inputs are identical and the embeddings match `model`'s within
    `TOLERANCE`. Returns the clean process's report."""
    folder, workdir = Path(folder).resolve(), Path(workdir).resolve()  # the clean process runs elsewhere
    workdir.mkdir(parents=True, exist_ok=True)
    texts, images = probe()
    names = [None if image is None else f"probe{i}.png" for i, image in enumerate(images)]
    for name, image in zip(names, images):
        if image is not None:
            image.save(workdir / name)
    inputs = processor(text=texts, images=images, return_tensors="pt")
    with torch.no_grad():
        queries, documents = model.encode_queries(**inputs).float(), model.encode_documents(**inputs).float()
    expected = {"texts": texts, "images": names, "inputs": dict(inputs), "queries": queries, "documents": documents}
    torch.save(expected, workdir / "expected.pt")
    result = run_in_clean_process(workdir, VERIFY_SCRIPT, str(folder), str(workdir))
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise PublishError(f"{folder} does not load through AutoModel / AutoProcessor in a clean process:\n{tail}")
    report = json.loads((workdir / "report.json").read_text())
    local = [c for c in report["classes"] if not c.startswith("transformers_modules.")]
    if local:
        raise PublishError(f"the clean process loaded {local}, not the folder's remote code.")
    if report["input_mismatch"]:
        raise PublishError(f"{folder}'s AutoProcessor gives different {report['input_mismatch']} than the source.")
    worst = max(report["max_abs_diff"].values())
    if not worst <= TOLERANCE:
        raise PublishError(
            f"{folder} gives embeddings that differ from the source model's by up to {worst:.3g} "
            f"(tolerance {TOLERANCE}): {report['max_abs_diff']}."
        )
    return report


# --- upload ----------------------------------------------------------------------------------------------------------


def upload(api: HfApi, folder: Path, repo_id: str, private: bool, revision: str, commit_message: str) -> CommitInfo:
    """Create the repository (and the branch `revision` unless it is main) and upload `folder`; returns the
    CommitInfo."""
    with step(f"create repository {repo_id}"):
        logger.info("  %s", api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))
    if revision != "main":
        with step(f"create branch {revision}"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    with step(f"upload {folder} to {repo_id}@{revision}"):
        return api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, revision=revision, commit_message=commit_message,
            repo_type="model",
        )  # fmt: skip


@dataclass
class Published:
    """What `publish` did: the assembled folder, and the commit (None for a dry run)."""

    folder: Path
    commit_url: str | None = None
    revision: str | None = None


def check_results_model(results: dict, path: str | Path, checkpoint: Path) -> None:
    """PublishError unless `results` (a `results.json`) was written for the model in `checkpoint`: the fingerprint
    it records under "model" (`ret2.model.model_fingerprint`) must be the folder's."""
    named = results.get("model") if isinstance(results.get("model"), dict) else {}
    if "fingerprint" not in named:
        raise PublishError(
            f"--eval-results {path} does not name the model it was measured on (no \"model\" fingerprint: written by "
            "hand or by an older ret2); re-run the evaluation on this model, or pass --ignore-results-model."
        )
    fingerprint = model_fingerprint(str(checkpoint))
    if named["fingerprint"] != fingerprint:
        raise PublishError(
            f"--eval-results {path} was measured on {named.get('name_or_path')!r} (fingerprint "
            f"{named['fingerprint'][:12]}), not on the model published here (fingerprint {fingerprint[:12]}: its "
            "config, weights, processor files or code differ); re-run the evaluation on this model, or pass "
            "--ignore-results-model if the scores apply to it anyway (e.g. a LoRA adapter evaluated merged)."
        )


def publish(
    model: str | Path | None,
    repo_id: str,
    *,
    from_ret1: str | None = None,
    base: str | None = None,
    private: bool = False,
    revision: str = "main",
    commit_message: str = "Upload ReT-2 model",
    eval_results: str | Path | None = None,
    ignore_results_model: bool = False,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    base_model: list[str] | None = None,
    allow_pickle: bool = False,
    dry_run: str | Path | None = None,
    tokenizer: str | None = None,
    image_processor: str | None = None,
    api: HfApi | None = None,
) -> Published:
    """Assemble, verify in a clean process and (unless `dry_run`) upload a ReT-2 model; see the module docstring.

    Args:
        model: a `save_pretrained` folder, a Trainer `checkpoint-N/` or a LoRA adapter folder (merged into `base`);
            None with `from_ret1`.
        repo_id: the target repository, `org/name`.
        from_ret1: a ReT-1 checkpoint (folder or Hub id) to convert and publish instead of `model`.
        eval_results: a `results.json` of `ret2-eval-mbeir` / `ret2-eval-m2kr`, rendered in the model card. It must
            name the published model (its "model" fingerprint), unless `ignore_results_model`.
        tokenizer, image_processor: with `from_ret1`, where the converter loads the towers' tokenizer and image
            processor (local folder or Hub id; default: the towers' `_name_or_path`, which needs the network).
        dry_run: a new or empty folder to assemble and verify into; nothing is uploaded.
        api: replaces `HfApi()` (tests pass a recording stand-in).

    Raises:
        PublishError: naming the step that failed; an assembled folder is kept.
    """
    if (model is None) == (from_ret1 is None):
        raise PublishError("give exactly one of a model folder and from_ret1")
    if from_ret1 is None and (tokenizer or image_processor):
        raise PublishError("--tokenizer / --image-processor are for --from-ret1 (the converter's preprocessing) only")
    try:
        repo_id = check_repo_id(repo_id)
    except ValueError as error:
        raise PublishError(str(error)) from None
    staging = Path(dry_run) if dry_run is not None else None
    if staging is not None and staging.exists() and (not staging.is_dir() or any(staging.iterdir())):
        raise PublishError(f"--dry-run {staging} is not an empty folder; give a new or empty one.")
    results = None
    if eval_results is not None:
        with step(f"read {eval_results}"):
            results = json.loads(Path(eval_results).read_text())
        if not isinstance(results, dict) or not metrics_markdown(results):
            raise PublishError(f"--eval-results {eval_results} holds no nested dict of metrics.")
    with tempfile.TemporaryDirectory(prefix="ret2-hub-") as scratch:
        checkpoint, source_note = Path(model) if model is not None else None, None
        if from_ret1:
            with step(f"convert ReT-1 checkpoint {from_ret1}"):
                from ret2.conversion import convert_ret1  # only this path needs the converter

                checkpoint = convert_ret1(from_ret1, Path(scratch) / "converted", tokenizer, image_processor)
            name = f" `{from_ret1}`" if is_hub_id(from_ret1) else ""
            source_note = f"Converted from the official ReT-1 checkpoint{name}."
        if results is not None and not ignore_results_model:
            check_results_model(results, eval_results, checkpoint)
        with step(f"load {checkpoint}"):
            net, processor = load_checkpoint(checkpoint, base, allow_pickle)
        towers = (net.config.text_config._name_or_path, net.config.vision_config._name_or_path)
        base_model = base_model or [name for name in dict.fromkeys(towers) if is_hub_id(name)]
        datasets = datasets or (datasets_of(results) if results else None)
        recipe = _recipe_of(checkpoint)
        card = model_card(net, repo_id, revision, license, base_model, datasets, results, source_note,
                          recipe_section(recipe) if recipe else None)  # fmt: skip
        staging = staging or Path(tempfile.mkdtemp(prefix="ret2-upload-"))
        try:
            with step(f"assemble {staging}"):
                staging.mkdir(parents=True, exist_ok=True)
                assemble(net, processor, staging, card)
            with step("verify: load the folder in a clean process and compare embeddings"):
                verify_in_clean_process(staging, net, processor, Path(scratch) / "verify")
        except PublishError as error:
            raise PublishError(str(error), staging) from error
    if dry_run is not None:
        return Published(staging)
    try:
        info = upload(api or HfApi(), staging, repo_id, private, revision, commit_message)
    except PublishError as error:
        raise PublishError(str(error), staging) from error
    shutil.rmtree(staging)
    return Published(staging, info.commit_url, info.oid)
