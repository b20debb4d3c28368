"""M-BEIR protocol: the 16 rows, text construction, instructions, validated readers, images."""

import json
import random

import pytest
from PIL import Image

from ret2.data.images import ImageLoader
from ret2.data.mbeir import (
    DATASET_IDS, DEFAULT_INSTRUCTIONS, EVAL_ROWS, INSTRUCTION_COLUMNS, TASK_IDS, build_global_pool,
    candidate_text, check_qrels, dataset_id_of, format_string, global_pool_stems, load_instructions,
    pick_instruction, query_instruction, query_text, read_candidates, read_qrels, read_queries,
)


def query(qid="9:1", txt="a dog on a couch", img=None, modality="text", pos=("9:2",), task_id=0):
    return {"qid": qid, "query_txt": txt, "query_img_path": img, "query_modality": modality,
            "query_src_content": None, "pos_cand_list": list(pos), "neg_cand_list": [], "task_id": task_id}


def write_jsonl(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


# ----------------------------------------------------------------------------- rows and ids

def test_the_16_rows():
    assert len(EVAL_ROWS) == 16 and len({r.label for r in EVAL_ROWS}) == 16
    assert sorted({r.task_id for r in EVAL_ROWS}) == sorted(TASK_IDS) == [0, 1, 2, 3, 4, 6, 7, 8]
    assert {r.dataset for r in EVAL_ROWS} == set(DATASET_IDS)
    coco = EVAL_ROWS[1]
    assert (coco.query_stem, coco.pool_stem, coco.label) == (
        "mbeir_mscoco_task0_test", "mbeir_mscoco_task0_test_cand_pool", "MSCOCO (t->i)")
    assert EVAL_ROWS[4].pool_stem == "mbeir_edis_task2_cand_pool" and EVAL_ROWS[4].label == "EDIS (t->(i,t))"
    assert EVAL_ROWS[10].label == "OVEN ((i,t)->t)" and EVAL_ROWS[10].cand_modality == "text"
    r10 = [r.label for r in EVAL_ROWS if r.primary_k == 10]
    assert r10 == ["Fashion200K (t->i)", "Fashion200K (i->t)", "FashionIQ ((i,t)->i)"]
    assert all(r.ks == ((10, 20, 50) if r.primary_k == 10 else (1, 5, 10)) for r in EVAL_ROWS)
    assert str(coco.qrels_path("R")) == "R/qrels/test/mbeir_mscoco_task0_test_qrels.txt"
    assert str(coco.pool_path("R")) == "R/cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"


def test_global_pool_is_the_concatenation_of_16_distinct_local_pools(tmp_path):
    stems = global_pool_stems()
    assert len(set(stems)) == 16  # no pool file serves two rows: nothing to deduplicate
    (tmp_path / "cand_pool" / "local").mkdir(parents=True)
    for i, stem in enumerate(stems):  # the last line of odd pools lacks its newline
        (tmp_path / "cand_pool" / "local" / f"{stem}.jsonl").write_text(f'{{"did": "0:{i}"}}' + "\n" * (i % 2))
    lines = build_global_pool(tmp_path).read_text().splitlines()
    assert lines == [f'{{"did": "0:{i}"}}' for i in range(16)]


def test_dataset_id_of():
    assert dataset_id_of("9:123") == 9
    with pytest.raises(ValueError, match="'abc'"):
        dataset_id_of("abc")


# ----------------------------------------------------------------------------- text and instructions

@pytest.mark.parametrize("raw, formatted", [
    (' "a dog on a couch" \r', "A dog on a couch."),
    ("what is this?", "What is this?"),
    ("wow!", "Wow!"),
    ("done.", "Done."),
    ("line\r\nbreak ", "Line\nbreak."),
    ('"', ""),
    ("", ""),
    (None, ""),
])
def test_format_string(raw, formatted):
    assert format_string(raw) == formatted


def test_default_instructions_cover_every_row():
    assert len(DEFAULT_INSTRUCTIONS) == 16
    assert DEFAULT_INSTRUCTIONS[(9, "text", "image")] == ["Find me an everyday image that matches the given caption."]
    assert DEFAULT_INSTRUCTIONS[(5, "image,text", "text")] == DEFAULT_INSTRUCTIONS[(6, "image,text", "text")]


@pytest.fixture
def tsv(tmp_path):
    path = tmp_path / "query_instructions.tsv"
    path.write_text("\t".join(INSTRUCTION_COLUMNS) + "\n"
                    "text\timage\tMSCOCO\t9\tfind a picture for this caption\tShow the photo.\t\t\n"
                    "image\ttext\tMSCOCO\t9\tFind a caption.\tDescribe it.\tCaption it.\tWrite one.\n")
    return path


def test_load_instructions_and_pick(tsv):
    table = load_instructions(tsv)
    assert table == {(9, "text", "image"): ["find a picture for this caption", "Show the photo."],  # empties dropped
                     (9, "image", "text"): ["Find a caption.", "Describe it.", "Caption it.", "Write one."]}
    # prompt_1 by default, formatted as UniIR formats prompts before joining them to the query
    assert pick_instruction(table, 9, "text", "image") == "Find a picture for this caption."
    prompts = table[(9, "image", "text")]
    rng, reference = random.Random(7), random.Random(7)  # the same seeded draws as UniIR's random.choice
    assert [pick_instruction(table, 9, "image", "text", rng) for _ in range(5)] == [
        reference.choice(prompts) for _ in range(5)]
    with pytest.raises(KeyError, match=r"\(9, 'text', 'text'\)"):
        pick_instruction(table, 9, "text", "text")


def test_load_instructions_errors(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("\t".join(INSTRUCTION_COLUMNS) + "\ntext\ttext,image\tWebQA\t2\tFind it.\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: cand_modality 'text,image'"):
        load_instructions(bad)
    bad.write_text("modality\tcand\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1: header"):
        load_instructions(bad)


def test_query_text_construction(tsv):
    table = load_instructions(tsv)
    instruction = query_instruction(query(), table)
    # Only the first letter of the whole text is capitalised (UniIR's format of instruction + " " + text).
    assert query_text(query(), instruction) == "Find a picture for this caption. a dog on a couch."
    image_only = query(txt=None, img="mbeir_images/x.png", modality="image", task_id=3)
    assert query_text(image_only, query_instruction(image_only, table)) == "Find a caption."  # instruction alone
    composed = query(qid="8:3", txt="make it blue", img="a.png", modality="image,text", task_id=7)
    assert query_text(composed, query_instruction(composed, DEFAULT_INSTRUCTIONS)) == (
        "Retrieve a day-to-day image that aligns with the modification instructions of the provided image. "
        "make it blue.")


def test_candidates_get_no_instruction_but_the_same_formatting():
    """Pins UniIR's candidate text: format_string(txt), never an instruction."""
    assert candidate_text({"txt": "a dog on a couch", "img_path": None}) == "A dog on a couch."
    assert candidate_text({"txt": ' "Is it?" ', "img_path": None}) == "Is it?"
    assert candidate_text({"txt": None, "img_path": "x.png"}) == ""


# ----------------------------------------------------------------------------- readers

def test_read_queries_and_candidates(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [query(), query("9:2", None, "i.png", "image", ("9:3",), 3)])
    for streaming in (False, True):
        records = list(read_queries(path, streaming=streaming, cache_dir=str(tmp_path / "cache")))
        assert [r["qid"] for r in records] == ["9:1", "9:2"] and records[1]["query_txt"] is None
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"txt": None, "img_path": "a.png", "modality": "image", "did": "9:2", "src_content": None},
        {"txt": "x", "img_path": "b.png", "modality": "image,text", "did": "9:3", "src_content": None}])
    assert read_candidates(pool, cache_dir=str(tmp_path / "cache"))["did"] == ["9:2", "9:3"]


@pytest.mark.parametrize("bad_line, message", [
    (json.dumps({k: v for k, v in query("9:3").items() if k != "qid"}), "field 'qid' is missing or null"),
    (json.dumps(query("9:3", modality="img")), "query_modality 'img' is not one of"),
    (json.dumps(query("9:3", pos=())), "pos_cand_list is empty"),
    (json.dumps(query("9:3", txt=None)), "query_modality is 'text' but query_txt is null"),
    (json.dumps(query("9:3", task_id=3)), "query_modality 'text' does not match task_id 3"),
    (json.dumps(query("9:3", task_id="zero")), "field 'task_id' is 'zero'"),
    ('{"qid": "9:3", ', "not valid JSON"),
])
@pytest.mark.parametrize("streaming", [False, True])
def test_malformed_query_names_file_and_line(tmp_path, bad_line, message, streaming):
    # Line 2 is blank (skipped by the reader), so the bad record sits on line 4 of the file.
    path = write_jsonl(tmp_path / "queries.jsonl", [query("9:1"), "", query("9:2"), bad_line, query("9:4")])
    with pytest.raises(ValueError, match=rf"queries.jsonl:4: {message}"):
        list(read_queries(path, streaming=streaming, cache_dir=str(tmp_path / "cache")))


def test_malformed_candidate_names_file_and_line(tmp_path):
    good = {"txt": "x", "img_path": None, "modality": "text", "did": "2:1", "src_content": None}
    path = write_jsonl(tmp_path / "pool.jsonl", [good, {**good, "did": "2:2", "modality": "image"}])
    with pytest.raises(ValueError, match=r"pool.jsonl:2: modality is 'image' but img_path is null \(record '2:2'\)"):
        read_candidates(path, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_candidates(tmp_path / "missing.jsonl")


def test_duplicate_did_names_both_lines(tmp_path):
    """A pool listing a did twice would rank that document twice: refused, naming both places (line 2 is blank)."""
    good = {"txt": "x", "img_path": None, "modality": "text", "did": "2:1", "src_content": None}
    path = write_jsonl(tmp_path / "pool.jsonl", [good, "", {**good, "did": "2:2"}, {**good, "txt": "y"}])
    with pytest.raises(ValueError, match=rf"{path}:1 and {path}:4: did '2:1' appears twice in the candidate pool"):
        read_candidates(path, cache_dir=str(tmp_path / "cache"))


def test_qrels(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("9:1 0 9:2 1 0\n9:1 0 9:3 0 0\n9:2 0 9:4 1 0\n9:2 0 5:7 1 0\n")
    qrels = read_qrels(path)
    assert qrels == {"9:1": {"9:2"}, "9:2": {"9:4", "5:7"}}  # relevance 0 dropped
    check_qrels(qrels, {"9:2", "9:4", "5:7"}, path)
    with pytest.raises(ValueError, match=r"qrels.txt:4: did '5:7' of query '9:2' is not in the candidate pool"):
        check_qrels(qrels, {"9:2", "9:4"}, path)
    path.write_text("9:1 0 9:2 1 0\n9:1 9:2 1\n")
    with pytest.raises(ValueError, match=r"qrels.txt:2: expected"):
        read_qrels(path)


# ----------------------------------------------------------------------------- images

def test_image_loader(tmp_path):
    (tmp_path / "mbeir_images" / "x_images").mkdir(parents=True)
    Image.new("RGBA", (4, 4), (255, 0, 0, 128)).save(tmp_path / "mbeir_images" / "x_images" / "a.png")
    (tmp_path.parent / "secret.png").write_bytes(b"")
    images = ImageLoader(tmp_path)
    image = images("mbeir_images/x_images/a.png", "9:1")
    assert image.mode == "RGB" and image.size == (4, 4)
    with pytest.raises(ValueError, match=r"'\.\./secret\.png' resolves outside"):
        images("../secret.png")
    with pytest.raises(ValueError, match="resolves outside"):
        images(str(tmp_path.parent / "secret.png"))
    with pytest.raises(FileNotFoundError, match=r"'mbeir_images/x_images/b.png' of record '9:5'"):
        images("mbeir_images/x_images/b.png", "9:5")
