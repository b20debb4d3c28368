"""Hard-negative mining (ret2/training/mining.py): the filters on hand-made rankings, a mined file in the training format, and
an interrupted run resumed into the same negatives."""

import json

import pytest

from ret2.data.mbeir import TRAIN_POOL, TRAIN_QUERIES
from ret2.data.synthetic import generate_mbeir
from ret2.commands.mine import run as main
from ret2.training.arguments import MiningOptions
from ret2.training.mining import mine_hard_negatives, select_negatives, write_mined
from ret2.training.dataset import mbeir_training_sets

RANKED = [("p", 0.9), ("a", 0.85), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("e", 0.5)]
KINDS = {"p": "image", "a": "image", "b": "text", "c": "image", "d": "text", "e": "image"}


@pytest.mark.parametrize(("options", "expected"), [
    (MiningOptions(num_negatives=3), ["a", "b", "c"]),  # the top, positives excluded
    (MiningOptions(num_negatives=2, range_min=1), ["b", "c"]),  # the best non-positive skipped
    (MiningOptions(num_negatives=5, range_max=3), ["a", "b", "c"]),  # no deeper than rank 3
    (MiningOptions(num_negatives=2, margin=0.1), ["b", "c"]),  # at most 0.9 - 0.1 (a: 0.85 is too close)
    (MiningOptions(num_negatives=3, max_score=0.75), ["c", "d", "e"]),
    (MiningOptions(num_negatives=3, same_modality=True), ["a", "c", "e"]),  # images, as the positive
])  # fmt: skip
def test_filters_on_a_ranking(options, expected):
    assert select_negatives(RANKED, {"p"}, 0.9, options, KINDS, {"image"}) == expected


def test_options_are_checked():
    with pytest.raises(ValueError, match="range_max \\(2\\) must be above range_min \\(2\\)"):
        MiningOptions(range_min=2, range_max=2)
    with pytest.raises(ValueError, match="num_negatives must be a positive integer, got 0"):
        MiningOptions(num_negatives=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_mbeir(tmp_path_factory.mktemp("mbeir"), seed=0, n_per_task=4, pool_size=12, n_train_per_task=4,
                          image_size=32)  # fmt: skip


@pytest.mark.slow
def test_mined_file_trains_and_a_resumed_run_mines_the_same(root, tiny_model_dir, tmp_path, monkeypatch):
    """The command writes the query file with mined negatives (never a positive, at most N, ranked by the model);
    a run killed after its first part resumes from it and writes the same file as an uninterrupted run."""
    output = tmp_path / "mined.jsonl"
    args = ["--model", str(tiny_model_dir), "--data-root", str(root), "--output", str(output), "--num-negatives", "2",
            "--part-size", "20", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(args) == 0
    mined = [json.loads(line) for line in output.read_text().splitlines()]
    source = [json.loads(line) for line in (root / TRAIN_QUERIES).read_text().splitlines()]
    assert [m["qid"] for m in mined] == [s["qid"] for s in source] and len(mined) == 64
    for m, s in zip(mined, source):
        assert {k: v for k, v in m.items() if k != "neg_cand_list"} == {k: v for k, v in s.items() if k != "neg_cand_list"}
        assert len(m["neg_cand_list"]) == 2 and not set(m["neg_cand_list"]) & set(m["pos_cand_list"])
    assert not (tmp_path / "mined.jsonl.parts").exists()
    train, _ = mbeir_training_sets(output, root / TRAIN_POOL, num_hard_negatives=2, cache_dir=str(tmp_path / "ds"))
    assert {n["id"] for n in train[0]["negatives"]} == set(mined[0]["neg_cand_list"])

    # killed while mining the second of four parts, then run again
    import ret2.training.mining

    real, calls = ret2.training.mining._mine_part, []

    def dies_on_the_second_part(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ret2.training.mining, "_mine_part", dies_on_the_second_part)
    resumed = tmp_path / "resumed.jsonl"
    argv = [*args[:4], "--output", str(resumed), *args[6:]]
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert sorted(p.name for p in (tmp_path / "resumed.jsonl.parts").glob("part-*")) == ["part-00000.json"]
    main(argv)
    assert [c.start for c in calls] == [0, 20, 20, 40, 60]  # the finished part is not mined again
    assert resumed.read_text() == output.read_text()


def test_mining_by_function_with_filters(root, tiny_model_dir, tmp_path):
    """`mine_hard_negatives` + `write_mined`: same-modality negatives have a positive's modality."""
    train, _ = mbeir_training_sets(root / TRAIN_QUERIES, root / TRAIN_POOL, cache_dir=str(tmp_path / "ds"))
    options = MiningOptions(num_negatives=3, range_min=1, range_max=200, same_modality=True)  # the whole pool
    mined = mine_hard_negatives(train, tiny_model_dir, root, tmp_path / "parts", options, cache_dir=tmp_path / "cache")
    modality = {train.pool.item(r)["id"]: train.pool.table[r]["modality"] for r in range(len(train.pool))}
    for row in range(len(train.queries)):
        record = train.queries[row]
        allowed = {modality[p] for p in record["pos_cand_list"]}
        assert mined[record["qid"]] and {modality[n] for n in mined[record["qid"]]} <= allowed
    with pytest.raises(ValueError, match="format 'csv' is not one of"):
        write_mined(root / TRAIN_QUERIES, tmp_path / "x.jsonl", mined, "csv")


def test_m2kr_queries_get_mined_passage_negatives(root, tiny_model_dir, tmp_path):
    """ReT-M2KR: the mined file adds `neg_passage_id`, which the ReT-M2KR training reader takes as hard negatives."""
    from ret2.training.dataset import m2kr_training_sets

    m2kr, output = root / "m2kr", tmp_path / "mined.jsonl"
    main(["--model", str(tiny_model_dir), "--format", "m2kr", "--m2kr-queries", str(m2kr / "infoseek_test.jsonl"),
          "--m2kr-passages", str(m2kr / "infoseek_passages_test.jsonl"), "--image-root", str(m2kr), "--output",
          str(output), "--num-negatives", "1"])  # fmt: skip
    first = json.loads(output.read_text().splitlines()[0])
    positives = first["passage_id"] if isinstance(first["passage_id"], list) else [first["passage_id"]]
    assert len(first["neg_passage_id"]) == 1 and first["neg_passage_id"][0] not in map(str, positives)
    train, _ = m2kr_training_sets(output, m2kr / "infoseek_passages_test.jsonl", num_hard_negatives=1)
    assert train[0]["negatives"][0]["id"] == first["neg_passage_id"][0]
