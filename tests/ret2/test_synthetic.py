"""The synthetic generator writes the exact M-BEIR layout, reads back through our readers, and is
deterministic, covering every task, with disjoint train / test splits and meaningful queries."""

import json
from pathlib import Path

import pytest

from ret2.data.m2kr import load_m2kr
from ret2.data.images import ImageLoader
from ret2.data.mbeir import (
    DEFAULT_INSTRUCTIONS, EVAL_ROWS, GLOBAL_POOL, INSTRUCTIONS, TASK_IDS, TRAIN_POOL, TRAIN_QUERIES,
    check_qrels, global_pool_stems, load_instructions, read_candidates, read_qrels, read_queries,
)
from ret2.metrics import compute_retrieval_metrics
from ret2.commands.synthetic import run as main
from ret2.data.synthetic import SCENES, caption, entity_name, generate_mbeir

SMALL = dict(n_per_task=6, pool_size=30, n_train_per_task=8)
WEBQA_QUESTIONS = {f"What is the name of the {s.size} {s.color} {s.shape} in the {s.position} on the {s.background} "
                   f"background?": i for i, s in enumerate(SCENES)}


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def scene_of(img_path):
    """Scene id from a generated image name, e.g. mbeir_images/cirr_images/0738_v1.png -> 738."""
    return int(Path(img_path).stem.split("_")[0])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_mbeir(tmp_path_factory.mktemp("mbeir"), seed=3, **SMALL)


def test_layout_and_every_task_covered(root):
    assert sorted({r["task_id"] for row in EVAL_ROWS for r in jsonl(row.query_path(root))}) == sorted(TASK_IDS)
    for row in EVAL_ROWS:
        queries = jsonl(row.query_path(root))
        assert len(queries) == SMALL["n_per_task"]
        assert all(list(q) == ["qid", "query_txt", "query_img_path", "query_modality", "query_src_content",
                               "pos_cand_list", "neg_cand_list", "task_id"] for q in queries)
        assert all(q["query_modality"] == row.query_modality and q["query_src_content"] is None for q in queries)
        assert all(q["qid"].startswith(f"{row.dataset_id}:") for q in queries)
        pool = jsonl(row.pool_path(root))
        assert all(list(c) == ["txt", "img_path", "modality", "did", "src_content"] for c in pool)
        assert all(c["modality"] == row.cand_modality for c in pool)
    assert (root / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl").exists()


def test_global_pool_is_exactly_the_local_pools_concatenated(root):
    local = b"".join((root / "cand_pool" / "local" / f"{stem}.jsonl").read_bytes() for stem in global_pool_stems())
    assert (root / GLOBAL_POOL).read_bytes() == local
    dids = [c["did"] for c in jsonl(root / GLOBAL_POOL)]
    assert len(dids) == len(set(dids))


def test_files_read_back_through_the_readers(root, tmp_path):
    cache = str(tmp_path)
    pool_dids = set(read_candidates(root / GLOBAL_POOL, cache_dir=cache)["did"])
    images = ImageLoader(root)
    for row in EVAL_ROWS:
        queries = read_queries(row.query_path(root), cache_dir=cache)
        local = set(read_candidates(row.pool_path(root), cache_dir=cache)["did"])
        qrels = read_qrels(row.qrels_path(root))
        check_qrels(qrels, pool_dids, row.qrels_path(root))  # every qrel points into the global pool
        for q in queries:
            assert qrels[q["qid"]] == set(q["pos_cand_list"])
            assert q["pos_cand_list"][0] in local  # the first positive is always in the local pool
            if q["query_img_path"]:
                assert images(q["query_img_path"], q["qid"]).size == (64, 64)
    assert sum(1 for _ in read_queries(root / TRAIN_QUERIES, streaming=True)) == 16 * SMALL["n_train_per_task"]
    train_pool = read_candidates(root / TRAIN_POOL, cache_dir=cache)
    assert all(Path(root, p).is_file() for p in train_pool["img_path"] if p)
    assert load_instructions(root / INSTRUCTIONS) == {  # prompt_1 from the doc, two paraphrases, empty prompt_4
        key: [p, f"Given the query, {p[0].lower()}{p[1:]}", f"{p[:-1]}, please."]
        for key, [p] in DEFAULT_INSTRUCTIONS.items()
    }


def test_train_and_test_are_disjoint(root):
    test_queries = [q for row in EVAL_ROWS for q in jsonl(row.query_path(root))]
    test_pool, train_pool = jsonl(root / GLOBAL_POOL), jsonl(root / TRAIN_POOL)
    train_queries = jsonl(root / TRAIN_QUERIES)
    assert not {q["qid"] for q in test_queries} & {q["qid"] for q in train_queries}
    assert not {c["did"] for c in test_pool} & {c["did"] for c in train_pool}
    images = lambda records, key: {scene_of(r[key]) for r in records if r[key]}  # noqa: E731
    test_scenes = images(test_queries, "query_img_path") | images(test_pool, "img_path")
    assert not test_scenes & (images(train_queries, "query_img_path") | images(train_pool, "img_path"))
    assert not {c["txt"] for c in test_pool if c["txt"]} & {c["txt"] for c in train_pool if c["txt"]}
    # hard negatives: in the training pool, never a positive
    train_dids = {c["did"] for c in train_pool}
    negatives = [(q, n) for q in train_queries for n in q["neg_cand_list"]]
    assert len(negatives) > len(train_queries) // 2
    assert all(n in train_dids and n not in q["pos_cand_list"] for q, n in negatives)
    assert all(not q["neg_cand_list"] for q in test_queries)


def test_queries_are_meaningful(root):
    by_did = {c["did"]: c for c in jsonl(root / GLOBAL_POOL)}
    for row in EVAL_ROWS:
        for q in jsonl(row.query_path(root)):
            positive = by_did[q["pos_cand_list"][0]]
            if row.query_stem == "mbeir_mscoco_task0_test":  # the caption describes the positive image
                assert q["query_txt"] == caption(SCENES[scene_of(positive["img_path"])])
            if row.query_stem == "mbeir_mscoco_task3_test":
                assert positive["txt"] == caption(SCENES[scene_of(q["query_img_path"])])
            if row.task_id == 4:  # NIGHTS: the same scene drawn a few pixels off
                assert scene_of(positive["img_path"]) == scene_of(q["query_img_path"])
                assert positive["img_path"].endswith("_v1.png")
            if row.task_id == 7:  # the target is the reference with exactly the edited attribute changed
                ref, target = SCENES[scene_of(q["query_img_path"])], SCENES[scene_of(positive["img_path"])]
                changed = [a for a in ref._fields if getattr(ref, a) != getattr(target, a)]
                assert len(changed) == 1 and getattr(target, changed[0]) in q["query_txt"]
            if row.task_id == 1:  # the passage names the entity whose attributes the question lists
                assert positive["txt"].startswith(entity_name(WEBQA_QUESTIONS[q["query_txt"]]))
            if row.task_id in (6, 8):  # the passage names the entity shown in the query image
                assert positive["txt"].startswith(entity_name(scene_of(q["query_img_path"])))
            if row.dataset in ("OVEN", "InfoSeek") and row.task_id in (6, 8):  # the other dataset's did too
                assert {d.split(":")[0] for d in q["pos_cand_list"]} == {"5", "6"}


def test_deterministic_per_seed(root, tmp_path):
    again = generate_mbeir(tmp_path / "again", seed=3, **SMALL)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = generate_mbeir(tmp_path / "other", seed=4, m2kr=False, **SMALL)
    assert (other / GLOBAL_POOL).read_bytes() != (root / GLOBAL_POOL).read_bytes()


def test_big_pool_for_one_row_via_cli(tmp_path, capsys):
    main(["--output-dir", str(tmp_path), "--seed", "0", "--n-per-task", "2", "--pool-size", "10",
          "--n-train-per-task", "2", "--row-pool-size", "mbeir_webqa_task1_test=3000", "--no-m2kr"])
    assert capsys.readouterr().out.strip() == str(tmp_path)
    pool = jsonl(EVAL_ROWS[3].pool_path(tmp_path))
    assert len(pool) == 3000 and len({c["did"] for c in pool}) == 3000
    assert len(jsonl(tmp_path / GLOBAL_POOL)) == 3000 + 15 * 10
    with pytest.raises(ValueError, match="unknown rows \\['nope'\\]"):
        generate_mbeir(tmp_path, row_pool_sizes={"nope": 5})


def test_m2kr_copy_reads_back_and_gold_passages_answer(root):
    for name in ("OVEN", "InfoSeek", "E-VQA"):
        queries, passages = load_m2kr(name, root / "m2kr")
        assert len(queries) == SMALL["n_per_task"]
        by_id = {p["pid"]: p for p in passages}
        assert all(set(q["pos_ids"]) <= set(by_id) for q in queries)
        assert all(Path(root, "m2kr", q["img_path"]).is_file() for q in queries)
        gold = [[by_id[q["pos_ids"][0]]["text"]] for q in queries]
        if name != "OVEN":  # answered datasets: the gold passage contains the answer
            metrics = compute_retrieval_metrics([q["pos_ids"] for q in queries], [set(q["pos_ids"]) for q in queries],
                                                [1], ranked_texts=gold, answers=[q["answers"] for q in queries])
            assert metrics["pseudo_recall@1"] == 1.0
