"""`ret2.rag`: a knowledge base of ReT-M2KR passages (with and without images), a question with an image, the top-k
passages and the prompt handed to a generator (no generator needed)."""

import json
import sys

import pytest
import processes

from ret2.data.m2kr import read_ret_m2kr_queries
from ret2.data.synthetic import generate_mbeir
from ret2.index.filters import FilterError
from ret2.rag import build_knowledge_base, build_prompt, passage_records, retrieve
from ret2.tiny import tiny_model_and_processor, words_of


@pytest.fixture(scope="module")
def m2kr(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_mbeir(root, n_per_task=4, pool_size=8, n_train_per_task=2, image_size=32)
    return root / "m2kr"


@pytest.fixture(scope="module")
def passage_files(m2kr):
    return [m2kr / "oven_passages_test.jsonl", m2kr / "infoseek_passages_test.jsonl"]  # with / without images


@pytest.fixture(scope="module")
def model_dir(passage_files, tmp_path_factory):
    """A tiny ReT-2 over the passages' words, saved to a folder."""
    model, processor = tiny_model_and_processor(words_of([r["text"] for r in passage_records(passage_files)]), seed=0)
    folder = tmp_path_factory.mktemp("rag") / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_rag_prompt_from_a_question_with_an_image(m2kr, passage_files, model_dir, tmp_path, capsys):
    files = passage_files
    records = passage_records(files)
    assert records[0]["image"] == "images/oven/" + records[0]["image"].split("/")[-1] and records[-1]["image"] is None
    assert (records[0]["source"], records[-1]["source"]) == ("oven_passages_test", "infoseek_passages_test")
    kb = build_knowledge_base(tmp_path / "kb", files, model_dir, image_root=m2kr)
    assert len(kb) == 16
    query = read_ret_m2kr_queries(m2kr / "infoseek_test.jsonl")[0]
    question, image = "What is this star called?", m2kr / query["img_path"]
    passages = retrieve(kb, question, image, k=3)
    assert [p.id for p in passages] == [h.id for h in kb.search({"text": question, "image": image}, k=3)]
    prompt = build_prompt(question, passages)
    by_id = {r["id"]: r for r in records}
    lines = prompt.splitlines()
    for rank, p in enumerate(passages, 1):
        image_note = f" [image: {by_id[p.id]['image']}]" if by_id[p.id]["image"] else ""
        assert lines[1 + rank] == f"Passage {rank} ({p.id}){image_note}: {by_id[p.id]['text']}"
    assert lines[-2:] == [f"Question: {question}", "Answer:"]

    from ret2.commands.rag import run as main

    main([str(tmp_path / "kb"), "--question", question, "--image", str(image), "-k", "3"])
    assert capsys.readouterr().out.strip() == prompt


@pytest.mark.processes
def test_rag_command_builds_the_knowledge_base_from_passage_files_with_no_field_flags(m2kr, passage_files, model_dir,
                                                                                      tmp_path):
    """`python -m ret2.commands.rag KB --passages FILE... --model M ...` reads ReT-M2KR passage files as they are (no
    --id-field / --text-field / --image-field; images relative to the files' folder, the ReT-M2KR root), prints the
    prompt, and a later call without --passages asks the same knowledge base."""
    files = passage_files
    question, image = "What is this star called?", m2kr / read_ret_m2kr_queries(m2kr / "oven_test.jsonl")[0]["img_path"]
    ask = [sys.executable, "-m", "ret2.commands.rag", str(tmp_path / "kb"), "--question", question, "--image", str(image), "-k",
           "3"]  # fmt: skip
    first = processes.run([*ask, "--passages", *files, "--model", model_dir], timeout=300)
    assert first.returncode == 0, first.stderr
    kb = build_knowledge_base(tmp_path / "kb-here", files, model_dir, image_root=m2kr)
    prompt = build_prompt(question, retrieve(kb, question, image, k=3))
    assert first.stdout.strip() == prompt
    again = processes.run(ask, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == prompt


def test_rag_retrieves_with_a_filter_and_a_mode_as_the_index_searches(m2kr, passage_files, model_dir, tmp_path, capsys):
    """`retrieve(..., filter=, mode=)` and `ret2-rag --filter --mode --fusion --weights` search the knowledge base as
    `Ret2Index.search` does with the same arguments: a filter on the passages' `source` keeps one file's passages, a
    question equal to a passage's text finds it first by keyword, a bad filter is refused naming its operator."""
    pytest.importorskip("bm25s")
    kb = build_knowledge_base(tmp_path / "kb", passage_files, model_dir, image_root=m2kr)
    question, image = "What is this star called?", m2kr / read_ret_m2kr_queries(m2kr / "oven_test.jsonl")[0]["img_path"]
    infoseek = {"source": "infoseek_passages_test"}
    filtered = retrieve(kb, question, image, k=3, filter=infoseek)
    assert len(filtered) == 3 and all(p.id.startswith("infoseek_") for p in filtered)
    assert [p.id for p in filtered] == [h.id for h in kb.search({"text": question, "image": image}, k=3, filter=infoseek)]
    target = passage_records(passage_files)[5]
    assert retrieve(kb, target["text"], k=3, mode="keyword")[0].id == target["id"]
    hybrid = retrieve(kb, question, image, k=4, mode="hybrid", fusion="weighted", weights=(0.3, 0.7),
                      filter={"source": {"$ne": "infoseek_passages_test"}})  # fmt: skip
    assert [p.id for p in hybrid] == [h.id for h in kb.search({"text": question, "image": image}, k=4, mode="hybrid",
                                                               fusion="weighted", weights=(0.3, 0.7),
                                                               filter={"source": {"$ne": "infoseek_passages_test"}})]  # fmt: skip
    assert all(p.id.startswith("oven_") for p in hybrid)
    with pytest.raises(FilterError, match=r"\$regex"):
        retrieve(kb, question, filter={"source": {"$regex": "oven"}})

    from ret2.commands.rag import run as main

    prompt = main([str(tmp_path / "kb"), "--question", question, "--image", str(image), "-k", "3", "--mode", "hybrid",
                   "--filter", json.dumps(infoseek)])  # fmt: skip
    assert prompt == build_prompt(question, retrieve(kb, question, image, k=3, mode="hybrid", filter=infoseek))
    assert capsys.readouterr().out.strip() == prompt
