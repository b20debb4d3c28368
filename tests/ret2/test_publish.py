"""hub_upload.py, offline: assembling, checking and verifying a Hub repository, and uploading through a stand-in."""

import json
import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import processes
import torch
from conftest import REPO, WORDS, pattern
from huggingface_hub import ModelCard
from remote_code import load_in_clean_process

from ret2.model import model_fingerprint
from ret2.model_card import M2KR_ID, MBEIR_ID, datasets_of, metrics_markdown
from ret2.commands.publish import build_parser
from ret2.commands.publish import run as main
from ret2.publish import PublishError, publish, verify_in_clean_process
from modeling_ret2 import Ret2Model
from ret2.tiny import tiny_model_and_processor

TOKEN = "hf_secretTOKEN0123456789abcdef"
PUBLISHED = {
    "README.md", "config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    "configuration_ret2.py", "modeling_ret2.py", "processing_ret2.py", "sentence_ret2.py", "modules.json",
    "config_sentence_transformers.json", "sentence_bert_config.json",
}  # fmt: skip
RESULTS = {
    "local": {
        "mbeir_mscoco_task0_test": {
            "recall@1": 0.4321, "recall@5": 0.65, "recall@10": 0.8, "mrr@10": 0.5, "ndcg@10": 0.55,
        },  # fmt: skip
        "mbeir_cirr_task7_test": {"recall@5": 0.125},  # a pool with fewer metrics
        "average": 0.3875,
    },
    "global": {"mbeir_mscoco_task0_test": {"recall@5": 0.6125}},  # the other pools are missing
}
PROBE_TEXTS = ["a red circle on the left", None, "big blue square"]
CELL_ATTENTIONS = [f"cell.{a}.{p}" for a in ("self_attn", "text_attn", "vision_attn") for p in ("q_proj", "v_proj")]


class RecordingHub:
    """Stands in for `HfApi`: records each call (and the files of the uploaded folder); raises `error` at `fail_at`."""

    def __init__(self, fail_at: str | None = None, error: Exception | None = None):
        self.calls, self.fail_at, self.error = [], fail_at, error

    def _record(self, name: str, **kwargs) -> None:
        self.calls.append((name, kwargs))
        if name == self.fail_at:
            raise self.error

    def create_repo(self, repo_id, **kwargs):
        self._record("create_repo", repo_id=repo_id, **kwargs)
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self._record("create_branch", repo_id=repo_id, **kwargs)

    def upload_folder(self, **kwargs):
        self._record("upload_folder", files=sorted(p.name for p in Path(kwargs["folder_path"]).iterdir()), **kwargs)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123", oid="abc123")


def probe_inputs(processor):
    return processor(text=PROBE_TEXTS, images=[None, pattern(1), pattern(2)], return_tensors="pt")


def embeddings(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_queries(**inputs), model.encode_documents(**inputs)


@pytest.fixture(scope="module")
def source():
    """A tiny ReT-2 (seed 1) whose text tower names a Hub backbone, and its processor."""
    model, processor = tiny_model_and_processor(WORDS, seed=1)
    model.config.text_config._name_or_path = "openai/clip-vit-base-patch32"
    return model, processor


def save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(source, tmp_path_factory) -> Path:
    return save(*source, tmp_path_factory.mktemp("ckpt") / "ret2-tiny")


@pytest.fixture(scope="module")
def dry_run(checkpoint, tmp_path_factory) -> Path:
    """The folder of a dry run of `checkpoint` with eval results."""
    work = tmp_path_factory.mktemp("dry")
    model = {"name_or_path": "runs/ret2-tiny", "fingerprint": model_fingerprint(str(checkpoint))}
    data = {"root": "/data/M-BEIR", "generated": False}  # as an evaluation on the real benchmark records it
    (work / "results.json").write_text(json.dumps({"model": model, "data": data, **RESULTS}))
    out = work / "out"
    argv = ["--model", str(checkpoint), "--repo-id", "org/ret2-tiny", "--eval-results", str(work / "results.json")]
    assert main(argv + ["--dry-run", str(out)]) == 0
    return out


@pytest.mark.slow
def test_dry_run_folder_loads_in_clean_process_with_source_embeddings(dry_run, source, tmp_path):
    model, processor = source
    assert {p.name for p in dry_run.iterdir()} == PUBLISHED
    inputs = probe_inputs(processor)
    queries, docs = embeddings(model, inputs)
    torch.save({"inputs": dict(inputs), "queries": queries, "docs": docs}, tmp_path / "expected.pt")
    for i in (1, 2):
        pattern(i).save(tmp_path / f"image{i}.png")
    out = load_in_clean_process(
        tmp_path,
        f"""
        import torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(dry_run)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(dry_run)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        images = [None] + [Image.open({str(tmp_path)!r} + f"/image{{i}}.png") for i in (1, 2)]
        inputs = processor(text={PROBE_TEXTS!r}, images=images, return_tensors="pt")
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert all(torch.equal(inputs[k], v) for k, v in expected["inputs"].items())
        with torch.no_grad():
            dq = (model.encode_queries(**inputs) - expected["queries"]).abs().max().item()
            dd = (model.encode_documents(**inputs) - expected["docs"]).abs().max().item()
        print("max diff", dq, dd)
        """,
    )
    dq, dd = map(float, out.split("max diff")[1].split())
    assert dq < 1e-6 and dd < 1e-6


@pytest.mark.slow
def test_model_card_parses_with_metadata_and_eval_table(dry_run, source):
    card = ModelCard.load(dry_run / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "feature-extraction"
    assert {"ret2", "multimodal-retrieval", "image-text-retrieval"} <= set(data["tags"])
    assert data["base_model"] == ["openai/clip-vit-base-patch32"]  # the text tower's name; the vision tower has none
    assert data["datasets"] == [MBEIR_ID]
    text = card.text
    assert 'repo_id, revision = "org/ret2-tiny", "main"' in text and "trust_remote_code=True" in text
    assert "commit sha" in text
    assert "| mbeir_mscoco_task0_test | 43.21 | 65.00 | 80.00 | 50.00 | 55.00 |" in text
    assert "| mbeir_cirr_task7_test | – | 12.50 | – | – | – |" in text
    assert "- average: 38.75" in text and "| mbeir_mscoco_task0_test | 61.25 |" in text
    assert f"| Parameters | {sum(p.numel() for p in source[0].parameters()):,} " in text
    assert "[0, 2, 3] / [0, 2, 3]" in text and "32-d vector" in text
    assert "arXiv:2509.08897" in text and "Caffagni, Davide and Sarto, Sara and Cornia, Marcella" in text


def test_metrics_markdown_renders_any_nested_dict():
    """M2KR-style results (sub-dataset -> metrics, some without pseudo recall) give one table; ints stay counts."""
    m2kr = {"InfoSeek": {"recall@5": 0.5, "pseudo_recall@5": 0.625}, "WIT": {"recall@10": 0.25}, "num_queries": 100}
    assert metrics_markdown(m2kr).splitlines() == [
        "| dataset | recall@5 | pseudo_recall@5 | recall@10 |",
        "|---|---|---|---|",
        "| InfoSeek | 50.00 | 62.50 | – |",
        "| WIT | – | – | 25.00 |",
        "",
        "- num_queries: 100",
    ]
    real, generated = {"root": "/data", "generated": False}, {"root": "runs/demo/seed-42/data", "generated": True}
    assert datasets_of({"data": real, **m2kr}) == [M2KR_ID] and datasets_of({"data": real, **RESULTS}) == [MBEIR_ID]
    assert datasets_of({"data": generated, **RESULTS}) == [] and datasets_of(RESULTS) == []  # no record: not named
    assert metrics_markdown({"m2kr": {"E-VQA": {"recall@5": 1.0}}}).startswith("**m2kr**\n\n| dataset | recall@5 |")


def test_results_of_another_model_are_refused(checkpoint, tmp_path, capsys):
    """results.json names the model it was measured on (its fingerprint): results of another model, or naming none,
    are refused before anything is assembled, with the way out."""
    argv = ["--model", str(checkpoint), "--repo-id", "org/ret2-tiny", "--eval-results", str(tmp_path / "results.json"),
            "--dry-run", str(tmp_path / "out")]  # fmt: skip
    other = {"name_or_path": "runs/other", "fingerprint": "0" * 64}
    for results, message in (({"model": other, **RESULTS}, "was measured on 'runs/other' (fingerprint 000000000000)"),
                             (RESULTS, "does not name the model it was measured on")):
        (tmp_path / "results.json").write_text(json.dumps(results))
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and "--ignore-results-model" in err and not (tmp_path / "out").exists()


def test_converter_preprocessing_flags_pass_through(checkpoint, monkeypatch):
    """--tokenizer / --image-processor (which the converter's offline error asks for) reach `convert_ret1`."""
    args = build_parser().parse_args(["--from-ret1", "src", "--repo-id", "o/n", "--tokenizer", "tok",
                                      "--image-processor", "img"])  # fmt: skip
    assert (args.tokenizer, args.image_processor) == ("tok", "img")
    calls = []

    def convert_ret1(source_id, output, tokenizer=None, image_processor=None) -> Path:
        calls.append((source_id, tokenizer, image_processor))
        raise OSError("offline")

    monkeypatch.setitem(sys.modules, "ret2.conversion", SimpleNamespace(convert_ret1=convert_ret1))
    with pytest.raises(PublishError, match="offline"):
        publish(None, "o/n", from_ret1="src", tokenizer="tok", image_processor="img", dry_run="unused")
    assert calls == [("src", "tok", "img")]
    with pytest.raises(PublishError, match="are for --from-ret1"):
        publish(checkpoint, "o/n", tokenizer="tok")


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "org/bad name"])
def test_repo_id_is_validated(repo_id, checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(checkpoint), "--repo-id", repo_id, "--dry-run", "unused"])
    assert exit_info.value.code == 2 and repr(repo_id) in capsys.readouterr().err


def pickle_checkpoint(source, folder: Path) -> Path:
    """`source` saved with its weights as `pytorch_model.bin` only."""
    save(*source, folder)
    (folder / "model.safetensors").unlink()
    torch.save(source[0].state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickle_weights_are_refused_without_the_flag(source, tmp_path, capsys):
    folder = pickle_checkpoint(source, tmp_path / "pickled")
    assert main(["--model", str(folder), "--repo-id", "org/x", "--dry-run", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "--allow-pickle" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_allowed_pickle_weights_are_published_as_safetensors(source, tmp_path):
    folder = pickle_checkpoint(source, tmp_path / "pickled")
    out = tmp_path / "out"
    assert main(["--model", str(folder), "--repo-id", "org/x", "--allow-pickle", "--dry-run", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == PUBLISHED


@pytest.mark.slow
def test_lora_adapter_is_merged_and_published_as_plain_model(source, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base_folder = save(*source, tmp_path / "base")
    peft_model = get_peft_model(Ret2Model.from_pretrained(base_folder), LoraConfig(r=4, target_modules=CELL_ATTENTIONS))
    with torch.no_grad():  # LoRA's B starts at zero; random factors make the merge change the embeddings
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.5, generator=torch.Generator().manual_seed(len(name)))
    peft_model.save_pretrained(tmp_path / "adapter")  # records base_model_name_or_path = base_folder
    out = tmp_path / "out"
    assert main(["--model", str(tmp_path / "adapter"), "--repo-id", "org/lora", "--dry-run", str(out)]) == 0

    assert {p.name for p in out.iterdir()} == PUBLISHED  # no adapter_config.json / adapter_model.safetensors
    inputs = probe_inputs(source[1])
    published = embeddings(Ret2Model.from_pretrained(out).eval(), inputs)
    peft_model = PeftModel.from_pretrained(Ret2Model.from_pretrained(base_folder), tmp_path / "adapter").eval()
    adapted = embeddings(peft_model, inputs)
    original = embeddings(source[0], inputs)
    for got, want, before in zip(published, adapted, original):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert (got - before).abs().max() > 1e-2


def trainer_checkpoint(checkpoint: Path, tmp_path: Path) -> Path:
    """`checkpoint` plus the state files a Trainer writes beside the model."""
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    for file in checkpoint.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"python": 0}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    return folder


@pytest.mark.slow
def test_trainer_checkpoint_uploads_without_its_state(checkpoint, tmp_path, capsys):
    hub = RecordingHub()
    argv = ["--model", str(trainer_checkpoint(checkpoint, tmp_path)), "--repo-id", "org/ret2-tiny", "--private"]
    assert main(argv + ["--revision", "v1", "--commit-message", "first"], api=hub) == 0
    assert [name for name, _ in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    (_, repo), (_, branch), (_, upload) = hub.calls
    assert repo == {"repo_id": "org/ret2-tiny", "private": True, "exist_ok": True, "repo_type": "model"}
    assert branch == {"repo_id": "org/ret2-tiny", "branch": "v1", "exist_ok": True, "repo_type": "model"}
    assert upload["repo_id"] == "org/ret2-tiny" and upload["repo_type"] == "model"
    assert upload["revision"] == "v1" and upload["commit_message"] == "first"
    assert set(upload["files"]) == PUBLISHED  # no optimizer.pt, rng_state.pth, trainer_state.json
    assert not Path(upload["folder_path"]).exists()  # the staging folder is removed after a successful upload
    assert "https://huggingface.co/org/ret2-tiny/commit/abc123" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("fail_at", ["create_repo", "upload_folder"])
def test_network_error_names_the_step_keeps_the_folder_and_hides_the_token(fail_at, checkpoint, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = RecordingHub(fail_at, ConnectionError(f"connection reset while sending Authorization: Bearer {TOKEN}"))
    assert main(["--model", str(checkpoint), "--repo-id", "org/ret2-tiny"], api=hub) == 1
    out, err = capfd.readouterr()
    assert TOKEN not in out + err and "Bearer ***" in err
    step = {"create_repo": "create repository org/ret2-tiny failed", "upload_folder": "upload "}[fail_at]
    assert step in err and "ConnectionError" in err
    kept = Path(err.split("the assembled folder is kept at ")[1].strip())
    assert {p.name for p in kept.iterdir()} == PUBLISHED
    assert all(TOKEN not in p.read_text() for p in kept.iterdir() if p.suffix != ".safetensors")
    shutil.rmtree(kept)


@pytest.mark.slow
def test_verify_refuses_a_folder_whose_embeddings_differ(checkpoint, tmp_path):
    other, processor = tiny_model_and_processor(WORDS, seed=2)
    with pytest.raises(PublishError, match="differ from the source model's"):
        verify_in_clean_process(checkpoint, other, processor, tmp_path / "verify")


@pytest.mark.slow
def test_from_ret1_converts_then_publishes(source, tmp_path, monkeypatch):
    """The wiring of --from-ret1, with a stand-in for `ret2.conversion.convert_ret1`."""
    calls = []

    def convert_ret1(source_id, output, tokenizer=None, image_processor=None) -> Path:
        calls.append((source_id, Path(output).name))
        return save(*source, Path(output))

    monkeypatch.setitem(sys.modules, "conversion", ModuleType("conversion"))
    monkeypatch.setitem(sys.modules, "ret2.conversion", SimpleNamespace(convert_ret1=convert_ret1))
    out = tmp_path / "out"
    assert main(["--from-ret1", "aimagelab/ReT-CLIP-ViT-L-14", "--repo-id", "org/ret1", "--dry-run", str(out)]) == 0
    assert calls == [("aimagelab/ReT-CLIP-ViT-L-14", "converted")]
    text = ModelCard.load(out / "README.md").text
    assert "Converted from the official ReT-1 checkpoint `aimagelab/ReT-CLIP-ViT-L-14`" in text
    assert "Recurrence-Enhanced Vision-and-Language Transformers" in text


def fake_ret1_checkpoint(folder: Path) -> tuple[Ret2Model, object]:
    """A tiny random model written in the ReT-1 layout (config.json with query/passage `RetConfig`s, safetensors keys
    by inverting `ret2.conversion`'s key map); the towers' `_name_or_path` is a local tokenizer / image processor.
    Returns the model and its processor."""
    from ret2.conversion import ret1_source_of
    from safetensors.torch import save_file

    model, processor = tiny_model_and_processor(
        WORDS, seed=3, depth=12, layer_preset="ret1-clip-b", pooling="none", share_encoder=False, num_attention_heads=1
    )
    towers = folder / "towers"
    processor.tokenizer.save_pretrained(towers)
    processor.image_processor.save_pretrained(towers)
    config = model.config
    side = {
        "model_type": "ret", "layer_strategy": "clip_vit_b", "num_queries": config.num_latent_tokens,
        "hidden_size": config.hidden_size, "late_proj_output_size": config.embedding_dim, "use_pooler_features": False,
        **{name: {**getattr(config, name).to_dict(), "_name_or_path": str(towers)}
           for name in ("text_config", "vision_config")},
    }  # fmt: skip
    ret1_config = {"model_type": "retriever", "share_query_passage_models": False, "query_config": side,
                   "passage_config": side}  # fmt: skip
    tensors = {}
    for key, value in model.state_dict().items():
        if key != "logit_scale":
            name, third = ret1_source_of(key)
            tensors.setdefault(name, [None] * 3)[third or 0] = value  # q, k, v blocks of one in_proj
    save_file({name: torch.cat([t for t in parts if t is not None]) for name, parts in tensors.items()},
              folder / "model.safetensors")  # fmt: skip
    (folder / "config.json").write_text(json.dumps(ret1_config))
    return model, processor


@pytest.mark.slow
def test_from_ret1_with_the_real_converter_publishes_the_same_model(tmp_path):
    model, processor = fake_ret1_checkpoint(tmp_path)
    out = tmp_path / "out"
    assert main(["--from-ret1", str(tmp_path), "--repo-id", "org/ret1", "--dry-run", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == PUBLISHED
    inputs = probe_inputs(processor)
    for got, want in zip(embeddings(Ret2Model.from_pretrained(out).eval(), inputs), embeddings(model, inputs)):
        assert got.shape == want.shape == (3, model.config.num_latent_tokens, model.config.embedding_dim)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    text = ModelCard.load(out / "README.md").text
    assert "Converted from the official ReT-1 checkpoint." in text  # a local path is not published
    assert "late interaction" in text and "separate (ReT-1)" in text


@pytest.mark.slow
def test_card_of_scores_on_generated_data_names_no_benchmark_and_its_examples_run(source, tmp_path, monkeypatch):
    """Scores an evaluation measured on `ret2-synthetic` data are published as such: no benchmark in the card's
    `datasets`, and a sentence saying where they come from. The card's usage examples (tensor calls, one-call
    `encode`, sentence-transformers) run as written on the published folder."""
    import re

    from ret2.data.synthetic import generate_mbeir
    from ret2.eval.report import write_report

    checkpoint = save(*source, tmp_path / "ret2-tiny")
    data = generate_mbeir(tmp_path / "data", n_per_task=1, pool_size=2, n_train_per_task=1, image_size=16)
    write_report(tmp_path / "eval", RESULTS, "", checkpoint, model_fingerprint(str(checkpoint)), data)
    out = tmp_path / "out"
    assert main(["--model", str(checkpoint), "--repo-id", "org/ret2-tiny", "--eval-results",
                 str(tmp_path / "eval" / "results.json"), "--dry-run", str(out)]) == 0  # fmt: skip
    card = ModelCard.load(out / "README.md")
    assert "datasets" not in card.data.to_dict() and MBEIR_ID not in card.content
    assert "Measured on data generated by `ret2.data.synthetic`" in card.text
    blocks = re.findall(r"```python\n(.*?)```", card.text, re.S)
    assert len(blocks) == 2 and "model.encode(" in blocks[0] and "SentenceTransformer(" in blocks[1]
    monkeypatch.chdir(tmp_path)
    for name, i in (("query.jpg", 1), ("tower.jpg", 2), ("dress.jpg", 3)):
        pattern(i).save(name)
    namespace = {}
    for block in blocks:
        exec(block.replace('"org/ret2-tiny"', repr(str(out))), namespace)
    assert namespace["scores"].shape == (2, 2)
    model, processor = source
    expected = model.encode(["a red dress with long sleeves", {"text": "which building is this?", "image": "query.jpg"}],
                            kind="query", processor=processor, convert_to="torch")  # fmt: skip
    torch.testing.assert_close(torch.as_tensor(namespace["queries"]), expected, atol=1e-5, rtol=0)


def test_publishing_loads_the_processor_without_a_model_type_warning(checkpoint, tmp_path):
    """`python hub_upload.py ... --dry-run` (a new process, as a user runs it) loads the folder's processor with the
    local classes without transformers' "You are using a model of type `ret2` to instantiate a model of type ``"
    (the tokenizer loader read config.json as a bare config: `ret2` was unknown to AutoConfig)."""
    run = processes.run([sys.executable, "hub_upload.py", "--model", checkpoint, "--repo-id", "org/x", "--dry-run",
                         tmp_path / "out"], cwd=REPO, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "dry run: the repository is assembled in" in run.stdout
    assert "to instantiate a model of type" not in run.stdout + run.stderr


@pytest.mark.slow
def test_the_recipe_a_model_was_trained_with_is_in_its_card(checkpoint, dry_run, tmp_path):
    """recipe.json beside the model (ret2-train --recipe writes it) becomes the card's training table, each value with
    its source, a flag's change from the recipe shown; a model trained without a recipe has no such section."""
    from ret2.training.recipes import get_recipe, record

    folder = Path(shutil.copytree(checkpoint, tmp_path / "trained"))
    recipe = get_recipe("ret2-mbeir-frozen")
    used = {setting.flag: setting.value for setting in recipe.settings} | {"learning_rate": 3e-4}
    record(recipe, used, folder)
    assert main(["--model", str(folder), "--repo-id", "org/ret2-tiny", "--dry-run", str(tmp_path / "out")]) == 0
    text = ModelCard.load(tmp_path / "out" / "README.md").text
    assert "## Training" in text and "`ret2-train --recipe ret2-mbeir-frozen`" in text
    assert "| `learning_rate` | `0.0003` (recipe: `0.0001`) | *not published* |" in text
    assert "| `stop_at_step` | `75000` | https://github.com/aimagelab/ReT-2/issues/3:" in text
    assert "## Training" not in ModelCard.load(dry_run / "README.md").text
