"""`python -m ret2.bench.filtered_search` at a tiny size: the scale run prints its tables with the filters' known
selectivities, and the demo run scores vector, keyword and hybrid search on the text-query rows of a generated data
root with a tiny model laid out as `ret2-demo` lays out its seeds. No timing is asserted."""

import pytest

from ret2.bench.filtered_search import main, text_query_rows, word_texts
from ret2.data.mbeir import read_candidates
from ret2.data.synthetic import generate_mbeir
from ret2.tiny import tiny_model_and_processor, words_of

pytest.importorskip("bm25s")


def test_the_scale_run_prints_every_selectivity_and_mode(tmp_path, capsys):
    """2,000 documents: the filters keep exactly 0.1%, 1%, 10% and 50% of them; filters keeping at most
    `EXACT_FILTER_ROWS` rows are answered by the exact scan (recall 1); every mode is timed unfiltered and at 10%."""
    result = main(["--num-docs", "2000", "--dim", "32", "--clusters", "20", "--nlist", "16", "--pq-m", "8",
                   "--num-queries", "4", "--recall-queries", "8", "--repeats", "1", "--folder", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and " cores, CPU flags " in out
    for column in ("| filter keeps | documents matching | filter ms/batch | exact ms/query | vs unfiltered exact | "
                   "IVF-PQ ms/query | IVF-PQ recall@10 vs filtered exact | IVF-PQ answered by |",
                   "| mode | filter keeps | documents | ms/query (Ret2Index.search) |"):  # fmt: skip
        assert column in out
    assert [r["matching"] for r in result["vector"]] == [2000, 2, 20, 200, 1000]
    assert [r["ivfpq_path"] for r in result["vector"]] == ["IVF-PQ"] + ["exact scan of the allowed rows"] * 4
    assert [r["ivfpq_recall_at_10"] for r in result["vector"][1:]] == [1.0] * 4
    assert result["vector"][0]["exact_vs_unfiltered"] == 1.0 and result["vector"][0]["filter_ms"] == 0.0
    assert [(r["mode"], r["selectivity"]) for r in result["text"]] == [
        (mode, s) for mode in ("vector", "keyword", "hybrid") for s in (None, 0.1)]  # fmt: skip
    assert "| hybrid | 10% | 2,000 |" in out and "| 50% | 1,000 |" in out


def test_word_texts_are_seeded_and_of_the_asked_lengths():
    texts = word_texts(50, seed=4, length=(3, 5))
    assert texts == word_texts(50, seed=4, length=(3, 5)) and texts != word_texts(50, seed=5, length=(3, 5))
    assert {len(t.split()) for t in texts} <= {3, 4, 5} and all(t.replace(" ", "").isalpha() for t in texts)


def test_the_demo_run_scores_each_mode_on_the_text_query_rows(tmp_path, capsys):
    """One seed folder (`seed-7/data`, `seed-7/ret2-model`): every text-query row in each mode, recalls in [0, 1];
    where the candidates are images only, keyword search finds nothing and hybrid ranks as vector search does."""
    seed = tmp_path / "demo" / "seed-7"
    generate_mbeir(seed / "data", seed=7, n_per_task=4, pool_size=8, n_train_per_task=2, image_size=32)
    texts = [c["txt"] or "" for row in text_query_rows() for c in read_candidates(row.pool_path(seed / "data"))]
    model, processor = tiny_model_and_processor(words_of(texts), seed=0)
    model.save_pretrained(seed / "ret2-model")
    processor.save_pretrained(seed / "ret2-model")
    result = main(["--num-docs", "0", "--demo-dir", str(tmp_path / "demo"), "--seeds", "7", "--folder",
                   str(tmp_path / "work")])  # fmt: skip
    out = capsys.readouterr().out
    assert "| row (text queries) | mode | recall (mean ± std over seeds) | per seed |" in out
    rows = {(r["row"], r["mode"]): r for r in result["demo"]}
    assert len(rows) == 3 * len(text_query_rows()) == 18
    assert all(0 <= r["mean"] <= 1 and r["std"] == 0.0 and len(r["values"]) == 1 for r in rows.values())
    for row in text_query_rows():
        if row.cand_modality == "image":
            assert rows[(row.label, "keyword")]["mean"] == 0.0
            assert rows[(row.label, "hybrid")]["values"] == rows[(row.label, "vector")]["values"]
    assert "| **average** | hybrid |" in out
