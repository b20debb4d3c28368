"""M2KR: both layouts (ReT-M2KR jsonl, original parquet) normalise to the same records."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ret2.data.m2kr import (
    M2KR_DATASETS, load_m2kr, m2kr_dataset, read_m2kr_parquet_passages, read_ret_m2kr_passages, read_ret_m2kr_queries,
)

INSTRUCTION = "Using the provided image, obtain documents that address the subsequent question:"
EXPECTED_QUERIES = [
    {"qid": "q0", "text": f"{INSTRUCTION} Who is this?", "img_path": "a.jpg", "pos_ids": ["7"], "answers": ["Ada"]},
    {"qid": "q1", "text": INSTRUCTION, "img_path": "b.jpg", "pos_ids": ["8", "9"], "answers": None},
]
EXPECTED_PASSAGES = [{"pid": "7", "text": "Ada Lovelace wrote notes.", "img_path": None},
                     {"pid": "8", "text": "", "img_path": None}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_table():
    assert list(M2KR_DATASETS) == ["WIT", "IGLUE", "KVQA", "OVEN", "LLaVA", "InfoSeek", "E-VQA", "OKVQA"]
    assert M2KR_DATASETS["WIT"].metric_names == ["recall@10"]
    assert M2KR_DATASETS["IGLUE"].metric_names == ["recall@1"]
    assert M2KR_DATASETS["E-VQA"].metric_names == ["recall@5", "pseudo_recall@5"]
    evqa = M2KR_DATASETS["E-VQA"]
    assert [p.name for p in evqa.ret_paths("r")] == ["evqa_test_m2kr.jsonl", "evqa_passages_test.jsonl"]
    assert [p.name for p in M2KR_DATASETS["OKVQA"].ret_paths("r")] == ["okvqa_test.jsonl", "okvqa_passages_test.jsonl"]
    with pytest.raises(ValueError, match=r"'MSMARCO'.*valid names: \['WIT'"):
        m2kr_dataset("MSMARCO")


def test_ret_jsonl_layout(tmp_path):
    write_jsonl(tmp_path / "okvqa_test.jsonl", [
        {"data_id": "q0", "instruction": INSTRUCTION, "question": "Who is this?", "image_path": "a.jpg",
         "passage_id": 7, "answer": ["Ada"]},  # scalar int id -> ["7"]
        {"data_id": "q1", "instruction": INSTRUCTION, "question": None, "image_path": "b.jpg",
         "passage_id": ["8", 9], "answer": None},  # null question: the instruction alone
    ])
    write_jsonl(tmp_path / "okvqa_passages_test.jsonl", [
        {"passage_id": 7, "passage_text": "Ada Lovelace wrote notes.", "passage_image_path": None},
        {"passage_id": "8", "passage_text": None, "passage_image_path": None},
    ])
    assert load_m2kr("OKVQA", tmp_path) == (EXPECTED_QUERIES, EXPECTED_PASSAGES)
    # paths are overridable
    (tmp_path / "okvqa_test.jsonl").rename(tmp_path / "mine.jsonl")
    queries, _ = load_m2kr("OKVQA", tmp_path, queries=tmp_path / "mine.jsonl")
    assert queries == EXPECTED_QUERIES


def test_duplicate_passage_ids_are_refused(tmp_path):
    """Ids are compared as strings (7 and "7" are one passage), named with both lines (jsonl) or records (parquet)."""
    path = tmp_path / "okvqa_passages_test.jsonl"
    write_jsonl(path, [{"passage_id": 7, "passage_text": "a", "passage_image_path": None},
                       {"passage_id": "8", "passage_text": "b", "passage_image_path": None},
                       {"passage_id": "7", "passage_text": "c", "passage_image_path": None}])
    with pytest.raises(ValueError, match=rf"{path}:1 and {path}:3: passage_id '7' appears twice"):
        read_ret_m2kr_passages(path)
    parquet = tmp_path / "passages.parquet"
    pq.write_table(pa.table({"passage_id": ["1", "2", "2"], "passage_content": ["a", "b", "c"]}), parquet)
    with pytest.raises(ValueError, match=rf"records 1 and 2 of {parquet}: passage_id '2' appears twice"):
        read_m2kr_parquet_passages([parquet])


def test_parquet_layout(tmp_path):
    (tmp_path / "OKVQA_data").mkdir()
    (tmp_path / "OKVQA_passages").mkdir()
    pq.write_table(pa.table({
        "question_id": ["q0", "q1"], "question": ["Who is this?", None], "instruction": [INSTRUCTION] * 2,
        "img_path": ["a.jpg", "b.jpg"], "pos_item_ids": [["7"], ["8", "9"]], "answers": [["Ada"], None],
    }), tmp_path / "OKVQA_data" / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"passage_id": ["7", "8"], "passage_content": ["Ada Lovelace wrote notes.", None]}),
                   tmp_path / "OKVQA_passages" / "test_passages-00000-of-00001.parquet")
    assert load_m2kr("OKVQA", tmp_path, layout="parquet") == (EXPECTED_QUERIES, EXPECTED_PASSAGES)
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        load_m2kr("WIT", tmp_path, layout="parquet")
    with pytest.raises(ValueError, match="layout 'csv'"):
        load_m2kr("WIT", tmp_path, layout="csv")


def test_errors_name_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"data_id": "q0", "instruction": "x", "question": null, "image_path": null, "passage_id": 1}\n'
                    '{"data_id": "q1", "instruction": "x", "image_path": null, "passage_id": 1}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: missing field\(s\) \['question'\]"):
        read_ret_m2kr_queries(path)
    path.write_text('{"data_id": "q0", "instruction": "x", "question": null, "image_path": null, "passage_id": []}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:1: query 'q0' has no passage_id"):
        read_ret_m2kr_queries(path)
    path.write_text('\n{"data_id": \n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: not valid JSON"):
        read_ret_m2kr_queries(path)
