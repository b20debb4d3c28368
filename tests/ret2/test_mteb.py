"""ReT-2 in MTEB v2 (`ret2.mteb`): mteb's own harness, on retrieval tasks built from local M-BEIR files, scores a saved
model as `ret2-eval-mbeir` does, with the images reaching the model; the sentence-transformers files declare the
modalities; the model file for mteb's registry (docs/mteb_model_ret2.py) encodes as `Ret2Encoder` does."""

import importlib.util
import json

import mteb
import pytest
from conftest import REPO, pattern
from datasets import Dataset, Image
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb._create_dataloaders import create_dataloader
from mteb.models import ModelMeta, SentenceTransformerEncoderWrapper
from mteb.types import PromptType
from PIL import Image as PILImage

from ret2.data.mbeir import EVAL_ROWS, load_instructions, query_instruction, read_qrels
from ret2.data.synthetic import generate_mbeir
from ret2.eval.encoder import EncodeOptions
from ret2.eval.mbeir import evaluate_mbeir
from ret2.jsonl import read_json_lines
from ret2.mteb import Ret2Encoder, register
from ret2.tiny import tiny_model_and_processor, words_of

# a text -> image, an image -> text and a composed (image, text) -> image row, with mteb's category of each
ROWS = {"mbeir_mscoco_task0_test": "t2i", "mbeir_mscoco_task3_test": "i2t", "mbeir_cirr_task7_test": "it2i"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Generated M-BEIR: 12 queries and 24 candidates per row."""
    return generate_mbeir(tmp_path_factory.mktemp("mbeir"), n_per_task=12, pool_size=24, n_train_per_task=1, m2kr=False)


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory):
    """A tiny model over the data's words, with the gate priors of tests/eval (embeddings follow the inputs)."""
    texts = [p.read_text() for p in data.rglob("*") if p.suffix in (".jsonl", ".tsv")]
    model, processor = tiny_model_and_processor(words_of(texts), seed=0, forget_gate_bias_prior=-4.0,
                                                input_gate_bias_prior=4.0)  # fmt: skip
    folder = tmp_path_factory.mktemp("model") / "ret2-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def task_metadata(name: str, category: str, instruction: str) -> TaskMetadata:
    """A retrieval task's metadata: mteb's category (e.g. "it2i") says the modalities of queries and documents."""
    return TaskMetadata(
        name=name, description="a generated M-BEIR row", reference=None, dataset={"path": "NA", "revision": "NA"},
        type="Any2AnyRetrieval", category=category, eval_splits=["test"], eval_langs=["eng-Latn"],
        main_score="ndcg_at_10", date=None, domains=[], task_subtypes=[], license=None, annotations_creators="derived",
        dialect=[], modalities=["image", "text"], sample_creation="found", bibtex_citation="",
        prompt={"query": instruction},
    )  # fmt: skip


def local_task(row, root) -> AbsTaskRetrieval:
    """An mteb retrieval task over a row's query file, local pool and qrels, with the row's prompt_1 instruction as
    its query prompt (as MIEB's M-BEIR tasks carry UniIR's)."""
    category = ROWS[row.query_stem]
    queries = [record for _, record in read_json_lines(row.query_path(root))]
    candidates = [record for _, record in read_json_lines(row.pool_path(root))]
    instruction = query_instruction(queries[0], load_instructions(root / "instructions/query_instructions.tsv"))

    def table(records, id_key, text_key, image_key, modalities) -> Dataset:
        columns = {"id": [r[id_key] for r in records]}
        if "t" in modalities:
            columns["text"] = [r[text_key] for r in records]
        if "i" in modalities:
            columns["image"] = [str(root / r[image_key]) for r in records]
        dataset = Dataset.from_dict(columns)
        return dataset.cast_column("image", Image()) if "image" in columns else dataset

    query_side, doc_side = category.split("2")
    split = RetrievalSplitData(
        queries=table(queries, "qid", "query_txt", "query_img_path", query_side),
        corpus=table(candidates, "did", "txt", "img_path", doc_side),
        relevant_docs={qid: dict.fromkeys(dids, 1) for qid, dids in read_qrels(row.qrels_path(root)).items()},
        top_ranked=None,
    )

    def load_data(self, **kwargs):
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True

    metadata = task_metadata(f"Ret2Local{row.query_stem}", category, instruction)
    return type(f"Ret2Local{row.query_stem}", (AbsTaskRetrieval,), {"metadata": metadata, "load_data": load_data})()


@pytest.mark.slow
def test_mteb_scores_a_registered_folder_as_ret2_eval_mbeir(data, model_dir, tmp_path, monkeypatch):
    """`mteb.get_model` on a registered folder gives a `Ret2Encoder`; `mteb.evaluate` on the three local tasks gives,
    per row, the nDCG@10 of `ret2-eval-mbeir` on the same queries, pool and instructions; the model got the images."""
    rows = [row for row in EVAL_ROWS if row.query_stem in ROWS]
    ours = evaluate_mbeir(model_dir, data, tmp_path / "eval", pool="local", tasks=list(ROWS),
                          options=EncodeOptions(device="cpu", num_workers=0))["local"]  # fmt: skip

    register(model_dir)
    # mteb asks that torchvision be installed for an image model; PyPI's wheel (a CUDA build) cannot load beside the
    # CPU torch pinned here, and neither ret2 nor this path of mteb uses it
    monkeypatch.setattr(ModelMeta, "_check_requirements", lambda self: None)
    model = mteb.get_model(str(model_dir))
    assert isinstance(model, Ret2Encoder) and model.mteb_model_meta.modalities == ["image", "text"]
    seen = []
    encode = model.model.encode
    monkeypatch.setattr(model.model, "encode", lambda samples, **kw: seen.append((kw["kind"], samples)) or encode(samples, **kw))
    results = mteb.evaluate(model, [local_task(row, data) for row in rows], cache=None, show_progress_bar=False)

    scores = {r.task_name.removeprefix("Ret2Local"): r.get_score() for r in results.task_results}
    assert scores == pytest.approx({stem: round(ours[stem]["ndcg@10"], 5) for stem in ROWS})  # mteb keeps 5 decimals
    assert 0.05 < min(scores.values()) and max(scores.values()) < 0.95  # not degenerate
    # what reached the model: t2i and it2i documents are images, i2t queries images with the instruction alone,
    # it2i queries (instruction + text, image) pairs
    kinds = {(kind, text is not None, isinstance(image, PILImage.Image)) for kind, samples in seen for text, image in samples}
    assert kinds == {("query", True, False), ("query", True, True), ("document", False, True), ("document", True, False)}


def test_sentence_transformers_route_declares_and_uses_images(tiny_model_dir, monkeypatch):
    """mteb finds a Hub model's loader and modalities in its sentence-transformers files (`_resolve_loader`, fed here
    with the folder's files as `get_model` fetches them; no `modality_config` means text only): a saved folder
    declares text and image, and the images of a batch reach the model (the embeddings of `Ret2Encoder`)."""
    files = [json.loads((tiny_model_dir / name).read_text()) for name in
             ("config_sentence_transformers.json", "sentence_bert_config.json", "modules.json", "config.json")]
    loader, model_type, modalities = ModelMeta._resolve_loader(str(tiny_model_dir), *files)
    assert (loader, model_type, modalities) == (SentenceTransformerEncoderWrapper, "dense", ["image", "text"])
    monkeypatch.setattr(ModelMeta, "_check_requirements", lambda self: None)  # torchvision: see the test above
    meta = ModelMeta.create_empty(overwrites=dict(loader=loader, name=str(tiny_model_dir), modalities=modalities))
    model = meta.load_model(device="cpu", trust_remote_code=True)  # what mteb.get_model(hub_id, trust_remote_code=True) does

    metadata = task_metadata("Ret2Check", "t2i", "find the picture")
    images = Dataset.from_dict({"id": ["a", "b"], "image": [pattern(1), pattern(2)]}).cast_column("image", Image())
    kwargs = dict(task_metadata=metadata, hf_split="test", hf_subset="default", prompt_type=PromptType.document)
    embeddings = model.encode(create_dataloader(images, task_metadata=metadata, prompt_type=PromptType.document), **kwargs)
    expected = Ret2Encoder(str(tiny_model_dir), device="cpu").encode([{"image": [pattern(1), pattern(2)]}], **kwargs)
    assert embeddings == pytest.approx(expected, abs=1e-6)


def test_registry_model_file_encodes_as_ret2_encoder(tiny_model_dir):
    """docs/mteb_model_ret2.py (the file for mteb's registry, without the ret2 package) gives Ret2Encoder's
    embeddings, queries and documents, text and images."""
    spec = importlib.util.spec_from_file_location("mteb_model_ret2", REPO / "docs" / "mteb_model_ret2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    meta = module.ret2_clip_vit_b_32_mbeir
    assert meta.modalities == ["image", "text"] and meta.use_instructions and meta.loader is module.Ret2Wrapper

    ours, theirs = Ret2Encoder(str(tiny_model_dir), device="cpu"), module.Ret2Wrapper(str(tiny_model_dir), device="cpu")
    metadata = task_metadata("Ret2Check", "it2i", "find the picture")
    images = [PILImage.new("RGB", (20, 20), (200, 10, 10)), PILImage.new("RGB", (20, 20), (10, 10, 200))]
    for prompt_type, batch in ((PromptType.query, {"text": ["a red square", " blue "], "image": images}),
                               (PromptType.document, {"image": images}),
                               (PromptType.document, {"text": ["a red square", "blue"]})):
        kwargs = dict(task_metadata=metadata, hf_split="test", hf_subset="default", prompt_type=prompt_type)
        expected = ours.encode([batch], **kwargs)
        assert theirs.encode([batch], **kwargs) == pytest.approx(expected, abs=1e-6)


def test_prompts_by_task_name_replace_the_tasks_own(tiny_model_dir):
    """`prompts=` (e.g. UniIR's prompt_1 where a MIEB task words its instruction otherwise) wins over the task's."""
    metadata = task_metadata("Ret2Check", "t2i", "find the picture")
    batch = [{"text": ["a red square"]}]
    kwargs = dict(task_metadata=metadata, hf_split="test", hf_subset="default", prompt_type=PromptType.query)
    plain, other = Ret2Encoder(str(tiny_model_dir), device="cpu"), Ret2Encoder(str(tiny_model_dir), device="cpu",
                                                                               prompts={"Ret2Check": "find the photo"})
    assert other.encode(batch, **kwargs) == pytest.approx(plain.model.encode(["Find the photo a red square."],
                                                                             kind="query"), abs=1e-6)
    assert plain.encode(batch, **kwargs) == pytest.approx(plain.model.encode(["Find the picture a red square."],
                                                                             kind="query"), abs=1e-6)
