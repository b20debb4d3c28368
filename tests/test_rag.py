"""`ret2.rag`: a knowledge base of ReT-M2KR passages (with and without images), a question with an image, the top-k
passages and the prompt handed to a generator (no generator needed)."""

import pytest

from ret2.data.m2kr import read_ret_m2kr_queries
from ret2.data.synthetic import generate_mbeir
from ret2.rag import build_knowledge_base, build_prompt, passage_records, retrieve
from ret2.tiny import tiny_model_and_processor, words_of


@pytest.fixture(scope="module")
def m2kr(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_mbeir(root, n_per_task=4, pool_size=8, n_train_per_task=2, image_size=32)
    return root / "m2kr"


def test_rag_prompt_from_a_question_with_an_image(m2kr, tmp_path, capsys):
    files = [m2kr / "oven_passages_test.jsonl", m2kr / "infoseek_passages_test.jsonl"]  # with / without images
    records = passage_records(files)
    assert records[0]["image"] == "images/oven/" + records[0]["image"].split("/")[-1] and records[-1]["image"] is None
    model, processor = tiny_model_and_processor(words_of([r["text"] for r in records]), seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    kb = build_knowledge_base(tmp_path / "kb", files, tmp_path / "model", image_root=m2kr)
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

    from ret2.rag import main

    main([str(tmp_path / "kb"), "--question", question, "--image", str(image), "-k", "3"])
    assert capsys.readouterr().out.strip() == prompt
