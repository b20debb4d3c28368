"""Search within a part of an index: `Ret2Index.search(filter=, mode=)` on every engine, the metadata stored as
Parquet per part, the BM25 index kept current by add, the same results through Milvus Lite and the command line."""

import json

import numpy as np
import pytest
from conftest import WORDS, pattern

from ret2.index import Ret2Index
from ret2.index.filters import FilterError
from ret2.index.hybrid import rrf
from ret2.index.keyword import KeywordIndex
from ret2.search import search

pytest.importorskip("bm25s")

ALBUMS = ("trip", "home", "zoo")


def _records(folder, n, start=0):
    out = []
    for i in range(start, start + n):
        pattern(100 + i).save(folder / f"d{i}.png")
        metadata = {"album": ALBUMS[i % 3], "year": 2018 + i % 7}
        if i % 4 == 0:
            metadata["stars"] = float(i % 5)
        out.append({"id": f"d{i}", "text": f"{WORDS[i % 14]} {WORDS[(3 * i) % 14]}", "image": f"d{i}.png" if i % 2 else None,
                    **metadata})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def index(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("within")
    built = Ret2Index.build(folder / "idx", _records(folder, 60), model=str(tiny_model_dir), image_root=folder)
    return built


def _allowed(index, where_python):
    return np.array([r for r in range(len(index)) if where_python(index.record(r)["metadata"])], np.int64)


def test_metadata_is_stored_as_parquet_per_part(index):
    assert (index.folder / "parts" / "part-00000.metadata.parquet").exists()
    table = index.storage.metadata()
    assert table.num_rows == 60 and set(table.column_names) == {"album", "year", "stars"}


@pytest.mark.parametrize("engine", ["exact", "int8", "hnsw", "ivfpq"])
def test_a_filter_applies_before_the_top_k_on_every_engine(index, engine):
    queries = ["red circle", pattern(104), {"text": "blue star", "image": pattern(9)}]
    options = {"precision": "int8"} if engine == "int8" else {}
    if engine in ("hnsw", "ivfpq"):
        index.build_approximate(engine, recall_sample=20)
        options = {"engine": "approximate"}
    where = {"album": "trip", "year": {"$gte": 2020}}
    allowed = _allowed(index, lambda m: m["album"] == "trip" and m["year"] >= 2020)
    assert 5 < len(allowed) < 30
    hits = index.search(queries, k=5, filter=where, **options)
    for found in hits:
        assert len(found) == 5 and all(h.metadata["album"] == "trip" and h.metadata["year"] >= 2020 for h in found)
    # the exact ranking of the allowed rows, as ret2.search computes it over the index's vectors
    _, rows = search(index.encode_queries(queries), index.embeddings().shards, 5, allowed=allowed)
    want = [[index.record(int(r))["id"] for r in row] for row in rows]
    if engine == "exact":
        assert [[h.id for h in found] for found in hits] == want
    few = index.search(queries[0], k=50, filter={"stars": {"$exists": True}}, **options)
    assert len(few) == len(_allowed(index, lambda m: "stars" in m)) == 15  # every match, fewer than k


def test_keyword_and_hybrid_modes_filter_too(index):
    texts = [index.record(r)["text"] for r in range(len(index))]
    keyword = KeywordIndex.build(texts)
    queries = [WORDS[2], f"{WORDS[5]} {WORDS[1]}"]
    allowed = _allowed(index, lambda m: m["album"] != "home")
    want_scores, want_rows = keyword.search(queries, 6, allowed=allowed)
    hits = index.search(queries, k=6, mode="keyword", filter={"album": {"$ne": "home"}})
    assert [[h.id for h in found] for found in hits] == [[f"d{r}" for r in row if r >= 0] for row in want_rows]
    assert hits[0][0].score == pytest.approx(float(want_scores[0][0]))
    vector = search(index.encode_queries(queries), index.embeddings().shards, 6, allowed=allowed)
    _, fused = rrf([vector, (want_scores, want_rows)], 6)
    hybrid = index.search(queries, k=6, mode="hybrid", filter={"album": {"$ne": "home"}})
    assert [[h.id for h in found] for found in hybrid] == [[f"d{r}" for r in row if r >= 0] for row in fused]


def test_an_index_of_images_only_finds_nothing_by_keyword_and_ranks_hybrid_as_vector(tiny_model_dir, tmp_path):
    """No text holds a word (bm25s cannot index an empty vocabulary): keyword search returns nothing, before and
    after reopening the saved index, and hybrid search ranks by the vectors alone."""
    records = [{**r, "text": None, "image": f"d{i}.png"} for i, r in enumerate(_records(tmp_path, 6))]
    for i in range(6):
        pattern(100 + i).save(tmp_path / f"d{i}.png")
    images = Ret2Index.build(tmp_path / "idx", records, model=str(tiny_model_dir), image_root=tmp_path)
    assert images.search([WORDS[2], "the"], k=3, mode="keyword") == [[], []]
    assert Ret2Index.open(tmp_path / "idx").search(WORDS[2], k=3, mode="keyword") == []
    vector = [h.id for h in images.search(WORDS[2], k=4)]
    assert [h.id for h in images.search(WORDS[2], k=4, mode="hybrid")] == vector
    assert KeywordIndex.build(["the", "and of", None]).search(["the"], 2)[1].tolist() == [[-1, -1]]


def test_bad_requests_name_the_problem(index):
    with pytest.raises(FilterError, match=r"\$near"):
        index.search("red", filter={"year": {"$near": 2020}})
    with pytest.raises(ValueError, match="mode 'fuzzy' is not one of"):
        index.search("red", mode="fuzzy")
    with pytest.raises(ValueError, match=r"mode 'keyword' needs a text in every query; query 0"):
        index.search([pattern(3)], mode="keyword")
    assert index.search("red circle", filter={"nobody": "x"}) == []  # a field no document has matches nothing


def test_add_keeps_metadata_and_keywords_current_and_reopens(tiny_model_dir, tmp_path):
    built = Ret2Index.build(tmp_path / "idx", _records(tmp_path, 12), model=str(tiny_model_dir), image_root=tmp_path)
    assert built.search(WORDS[0], mode="keyword", k=3)  # builds the keyword index
    new = _records(tmp_path, 3, start=12)
    new[0]["text"], new[0]["album"] = "zebra crossing", "new"
    built.add(new, image_root=tmp_path)
    again = Ret2Index.open(tmp_path / "idx")
    assert [h.id for h in again.search("zebra", mode="keyword", k=3)] == ["d12"]
    assert [h.id for h in again.search("red circle", k=5, filter={"album": "new"})] == ["d12"]
    keyword = json.loads((tmp_path / "idx" / "index.json").read_text())["keyword"]
    assert keyword["rows"] == 15 and (tmp_path / "idx" / keyword["folder"]).is_dir()


def test_milvus_engine_filters_and_hybrid_searches_as_the_embedded_index(index, tmp_path):
    pytest.importorskip("pymilvus")
    index.to_milvus(str(tmp_path / "m.db"), overwrite=True)
    where = {"$or": [{"album": "zoo"}, {"stars": {"$gt": 2}}]}
    queries = ["red circle", {"text": "blue star", "image": pattern(9)}]
    for mode in ("vector", "keyword"):
        embedded = index.search(queries, k=4, filter=where, mode=mode)
        deeper = index.search(queries, k=12, filter=where, mode=mode)
        milvus = index.search(queries, k=4, filter=where, mode=mode, engine="milvus")
        for e, d, m in zip(embedded, deeper, milvus):
            assert [h.score for h in m] == pytest.approx([h.score for h in e], abs=2e-3), mode
            scores = {h.id: h.score for h in d}  # documents of equal scores may come in either order
            assert all(scores[h.id] == pytest.approx(h.score, abs=2e-3) for h in m), mode
            assert all(h.metadata["album"] == "zoo" or h.metadata.get("stars", 0) > 2 for h in m)


def test_the_command_line_takes_filter_and_mode(index, capsys):
    from ret2.commands.index import run as main

    main(["search", str(index.folder), "--text", WORDS[2], "-k", "3", "--mode", "hybrid", "--filter",
          '{"album": "trip"}', "--json"])  # fmt: skip
    found = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [h["id"] for h in found] == [h.id for h in index.search(WORDS[2], k=3, mode="hybrid",
                                                                     filter={"album": "trip"})]  # fmt: skip
    assert all(h["metadata"]["album"] == "trip" for h in found)
    with pytest.raises(SystemExit):
        main(["search", str(index.folder), "--text", "x", "--filter", "{album: trip}"])
    assert "--filter is not JSON" in capsys.readouterr().err
