"""Training data and collator: M-BEIR query text (instruction on queries only), seeded positives and hard negatives,
streaming = map-style, ReT-M2KR, the collator's keys / shapes / masks / ids, and image paths confined to the root."""

import json

import pytest
import torch

from ret2.data.mbeir import (
    INSTRUCTIONS, TASK_IDS, TRAIN_POOL, TRAIN_QUERIES, dataset_id_of, format_string, load_instructions, query_text,
)
from ret2.data.synthetic import generate_mbeir
from ret2.training.collator import ContrastiveCollator, stable_id
from ret2.training.dataset import CandidatePool, Query, make_example, m2kr_training_sets, mbeir_training_sets
from ret2.tiny import tiny_processor, words_of


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_mbeir(tmp_path_factory.mktemp("mbeir"), seed=0, n_per_task=4, pool_size=12, n_train_per_task=8,
                          image_size=32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets_cache"))


def mbeir(root, cache, **kwargs):
    table = load_instructions(root / INSTRUCTIONS)
    return mbeir_training_sets(root / TRAIN_QUERIES, root / TRAIN_POOL, table, cache_dir=cache, **kwargs)


def records(path, key="qid"):
    return {r[key]: r for r in map(json.loads, path.read_text().splitlines())}


def test_query_text_follows_the_mbeir_protocol(root, cache):
    """Training draws one of the row's TSV prompts (seeded); evaluation uses prompt_1; candidates get none."""
    train, evaluation = mbeir(root, cache, eval_fraction=0.25)
    table = load_instructions(root / INSTRUCTIONS)
    queries, pool = records(root / TRAIN_QUERIES), records(root / TRAIN_POOL, "did")
    for dataset, deterministic in ((train, False), (evaluation, True)):
        drawn = set()
        for i in range(len(dataset)):
            example = dataset[i]
            record = queries[example["query"]["id"]]
            key = (dataset_id_of(record["qid"]), record["query_modality"], TASK_IDS[record["task_id"]][1])
            prompts = [format_string(p) for p in table[key]]
            texts = [query_text(record, p) for p in prompts]
            assert example["query"]["text"] in (texts[:1] if deterministic else texts)
            drawn.add(texts.index(example["query"]["text"]))
            assert example["query"]["img_path"] == record["query_img_path"]
            doc = pool[example["doc"]["id"]]
            assert example["doc"]["text"] == format_string(doc["txt"]) and example["doc"]["img_path"] == doc["img_path"]
        assert drawn == ({0} if deterministic else {0, 1, 2})


def test_positives_and_negatives_are_seeded_per_epoch(root, cache):
    train, _ = mbeir(root, cache, num_hard_negatives=2, seed=5)
    queries = records(root / TRAIN_QUERIES)
    two_positives = [i for i in range(len(train)) if len(queries[train[i]["query"]["id"]]["pos_cand_list"]) == 2]
    assert len(two_positives) >= 16

    def draws(epoch):
        train.set_epoch(epoch)
        return [json.dumps(train[i]) for i in range(len(train))]

    epoch0 = draws(0)
    assert draws(0) == epoch0 and draws(1) != epoch0
    assert mbeir(root, cache, num_hard_negatives=2, seed=5)[0][3] == json.loads(epoch0[3])  # same seed, same draws
    chosen = set()
    for epoch in range(4):
        train.set_epoch(epoch)
        chosen |= {(i, train[i]["doc"]["id"]) for i in two_positives}
        for i in range(len(train)):
            example, record = train[i], queries[train[i]["query"]["id"]]
            assert example["doc"]["id"] in record["pos_cand_list"]
            negatives = [n["id"] for n in example["negatives"]]
            assert len(set(negatives)) == 2 and not set(negatives) & set(record["pos_cand_list"])
            assert set(record["neg_cand_list"]) <= set(negatives)  # its one hard negative first, then random ones
    assert len(chosen) > len(two_positives)  # both positives get drawn


def test_streaming_gives_the_map_style_examples(root, cache):
    mapped, _ = mbeir(root, cache, num_hard_negatives=1)
    streamed, _ = mbeir(root, cache, num_hard_negatives=1, streaming=True)
    assert list(streamed) == [mapped[i] for i in range(len(mapped))]
    shuffled, _ = mbeir(root, cache, streaming=True, shuffle_buffer=64)
    order = [e["query"]["id"] for e in shuffled]
    assert sorted(order) == sorted(e["query"]["id"] for e in streamed) and order != [e["query"]["id"] for e in streamed]
    assert [e["query"]["id"] for e in shuffled] == order
    shuffled.set_epoch(1)
    assert [e["query"]["id"] for e in shuffled] != order


def test_eval_fraction_holds_out_a_seeded_disjoint_split(root, cache):
    train, evaluation = mbeir(root, cache, eval_fraction=0.25, seed=1)
    train_ids = {train[i]["query"]["id"] for i in range(len(train))}
    eval_ids = {evaluation[i]["query"]["id"] for i in range(len(evaluation))}
    assert len(eval_ids) == 32 and len(train_ids) == 96 and not train_ids & eval_ids
    assert {mbeir(root, cache, eval_fraction=0.25, seed=1)[1][i]["query"]["id"] for i in range(32)} == eval_ids
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        mbeir(root, cache, eval_fraction=1.5)


def test_m2kr_training_data(root):
    m2kr = root / "m2kr"
    train, _ = m2kr_training_sets(m2kr / "infoseek_test.jsonl", m2kr / "infoseek_passages_test.jsonl", num_hard_negatives=1)
    first = json.loads((m2kr / "infoseek_test.jsonl").read_text().splitlines()[0])
    example = train[0]
    assert example["query"] == {"id": first["data_id"], "text": f"{first['instruction']} {first['question']}",
                                "img_path": first["image_path"]}
    assert example["doc"]["id"] == str(first["passage_id"][0]) and example["negatives"][0]["id"] != example["doc"]["id"]


def test_pool_rejects_duplicate_dids():
    import datasets

    table = datasets.Dataset.from_list([{"did": "1:1", "img": None}, {"did": "1:2", "img": None},
                                        {"did": "1:1", "img": None}])
    with pytest.raises(ValueError, match="records 0 and 2: did '1:1' appears twice"):
        CandidatePool(table, "did", "img", lambda r: "")


def test_missing_positive_is_named(root, cache, tmp_path):
    queries = tmp_path / "queries.jsonl"
    record = next(iter(records(root / TRAIN_QUERIES).values()))
    queries.write_text(json.dumps({**record, "pos_cand_list": ["9:99999"]}) + "\n")
    train, _ = mbeir_training_sets(queries, root / TRAIN_POOL, cache_dir=cache)
    with pytest.raises(ValueError, match=rf"query '{record['qid']}': none of its positives \['9:99999'\]"):
        train[0]


@pytest.fixture(scope="module")
def collator_and_batch(root, cache):
    train, _ = mbeir(root, cache, num_hard_negatives=2)
    processor = tiny_processor(words_of(list(train.texts())))
    collator = ContrastiveCollator(processor, root, num_hard_negatives=2)
    examples = [train[i] for i in range(0, len(train), 8)]  # one query of every row: all modality combinations
    return collator, examples, collator(examples)


def test_collator_keys_shapes_and_masks(collator_and_batch):
    _, examples, batch = collator_and_batch
    n = len(examples)
    # the doc_ side holds the positives, then the hard negatives grouped by query
    sides = {"query_": [e["query"] for e in examples],
             "doc_": [e["doc"] for e in examples] + [neg for e in examples for neg in e["negatives"]]}
    expected = {f"{p}{k}" for p in sides for k in ("input_ids", "attention_mask", "pixel_values", "text_mask",
                                                   "vision_mask")} | {"doc_ids", "neg_doc_ids", "truncated_texts"}
    assert set(batch) == expected and "labels" not in batch
    for prefix, items in sides.items():
        assert batch[f"{prefix}text_mask"].tolist() == [int(bool(item["text"])) for item in items]
        assert batch[f"{prefix}vision_mask"].tolist() == [int(item["img_path"] is not None) for item in items]
        assert batch[f"{prefix}pixel_values"].shape == (len(items), 3, 32, 32)
        ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
        assert ids.shape == mask.shape and ids.shape[0] == len(items)
        assert (mask.sum(1) == (ids != 0).sum(1)).all()  # <pad> is id 0
    assert batch["doc_ids"].dtype == torch.int64 and batch["doc_ids"].tolist() == [
        stable_id(e["doc"]["id"]) for e in examples]
    assert batch["neg_doc_ids"].shape == (2 * n,)
    assert batch["neg_doc_ids"].tolist() == [stable_id(neg["id"]) for e in examples for neg in e["negatives"]]


def test_collator_decodes_the_texts(collator_and_batch):
    collator, examples, batch = collator_and_batch
    tokenizer = collator.processor.tokenizer
    decoded = tokenizer.batch_decode(batch["query_input_ids"], skip_special_tokens=True)
    assert [d.replace(" ", "") for d in decoded] == [e["query"]["text"].lower().replace(" ", "") for e in examples]


def test_doc_ids_are_stable_and_equal_for_equal_dids(collator_and_batch):
    collator, examples, _ = collator_and_batch
    batch = collator([examples[0], examples[1], examples[0]])
    ids = batch["doc_ids"].tolist()
    assert ids[0] == ids[2] != ids[1]
    assert stable_id("9:1") == -1236985220298506052  # a fixed function of the string: the same on every rank and run
    assert len({stable_id(f"{d}:{n}") for d in range(10) for n in range(1000)}) == 10_000


def test_collator_without_images_or_negatives(root, collator_and_batch):
    collator, examples, _ = collator_and_batch
    text_only = [e for e in examples if e["query"]["img_path"] is None and e["doc"]["img_path"] is None][:2]
    batch = ContrastiveCollator(collator.processor, root)(text_only)
    assert set(batch) == {f"{p}{k}" for p in ("query_", "doc_") for k in ("input_ids", "attention_mask", "text_mask",
                                                                           "vision_mask")} | {"doc_ids", "truncated_texts"}
    with pytest.raises(ValueError, match=r"expected 3 negatives per example \(num_hard_negatives\), got \[2"):
        ContrastiveCollator(collator.processor, root, num_hard_negatives=3)(examples)


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd", "mbeir_images/../../outside.png"])
def test_image_paths_outside_the_root_are_refused(root, collator_and_batch, path):
    collator, examples, _ = collator_and_batch
    (root.parent / "outside.png").write_bytes(b"")
    example = {**examples[0], "query": {"id": "0:1", "text": "a query", "img_path": path}}
    with pytest.raises(ValueError, match="resolves outside the dataset root"):
        collator([example])


def test_several_positives_are_drawn_without_replacement_and_stacked_after_the_negatives(root, cache, collator_and_batch):
    """num_positives: the example's extra positives (distinct while the query has enough, then repeated) follow the
    hard negatives in the doc_ rows, their ids in neg_doc_ids; positive_ids lists every positive of each query."""
    import random

    collator, examples, _ = collator_and_batch
    train, _ = mbeir(root, cache)
    pool = train.pool
    dids = [pool.item(row)["id"] for row in range(4)]
    query = Query("q", "a query", None, dids[:3], [])
    example = make_example(query, pool, 1, random.Random(0), num_positives=3)
    drawn = [example["doc"]["id"]] + [p["id"] for p in example["positives"]]
    assert sorted(drawn) == sorted(dids[:3]) and example["positive_ids"] == dids[:3]
    assert example["negatives"][0]["id"] not in dids[:3]
    single = make_example(Query("r", "a query", None, dids[3:], []), pool, 1, random.Random(0), num_positives=3)
    assert [p["id"] for p in single["positives"]] == [dids[3], dids[3]]  # repeats: the loss counts them once
    # the single-positive draw is unchanged by the option's existence
    assert make_example(query, pool, 1, random.Random(5))["doc"] == make_example(query, pool, 1, random.Random(5), 1)["doc"]

    two = ContrastiveCollator(collator.processor, root, num_hard_negatives=1, num_positives=3)
    batch = two([example, single])
    assert batch["doc_input_ids"].shape[0] == 2 + 2 * 1 + 2 * 2
    assert batch["neg_doc_ids"].tolist() == [stable_id(n["id"]) for e in (example, single) for n in e["negatives"]] + [
        stable_id(p["id"]) for e in (example, single) for p in e["positives"]]
    assert batch["positive_ids"].tolist() == [[stable_id(d) for d in dids[:3]], [stable_id(dids[3])] * 3]
    with pytest.raises(ValueError, match=r"expected 2 extra positives per example \(num_positives\), got \[0"):
        ContrastiveCollator(collator.processor, root, num_positives=3)(examples[:1])


def test_collator_counts_the_texts_cut_to_the_token_limit(root, collator_and_batch):
    """truncated_texts: how many of the batch's texts (queries, positives, negatives) exceed max_length tokens."""
    collator, examples, batch = collator_and_batch
    assert batch["truncated_texts"].item() == 0
    tokenizer = collator.processor.tokenizer
    texts = [item["text"] for e in examples for item in [e["query"], e["doc"], *e["negatives"]] if item["text"]]
    lengths = sorted(len(tokenizer(t)["input_ids"]) for t in texts)
    limit = lengths[len(lengths) // 2]  # the median length: some texts fit, some do not
    longer = sum(length > limit for length in lengths)
    assert 0 < longer < len(texts)
    short = ContrastiveCollator(collator.processor, root, num_hard_negatives=2, max_length=limit)
    assert short(examples)["truncated_texts"].item() == longer
