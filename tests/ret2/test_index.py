"""`ret2.index.Ret2Index`: building from every source, resuming, refusing another model, adding, searching
(exact through `ret2.search.search`, approximate with measured recall, Milvus Lite), and the `ret2-index` CLI."""

import json
import os
import time

import numpy as np
import pytest
import processes

from ret2.index import Hit, Ret2Index
from ret2.records import read_records
from ret2.search import search
from ret2.tiny import tiny_model_and_processor

from conftest import WORDS, pattern


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> str:
    """The saved tiny ReT-2 (its files are the model's identity), as the string the CLI takes."""
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of 12 images, half of them with a caption file beside them, one in a subfolder."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    captions = ["red circle", "blue square", "green star", "yellow triangle", "big red square", "small blue star"]
    for i in range(12):
        name = folder / ("sub" if i == 11 else "") / f"img{i:02d}.png"
        pattern(i).save(name)
        if i < len(captions):
            name.with_suffix(".txt").write_text(captions[i])
    return folder


def _records(tmp_path, n=20, start=0):
    for i in range(start, start + n):
        if not (tmp_path / f"d{i}.png").exists():  # written once: a rewritten file is a changed one (upsert, sync)
            pattern(100 + i).save(tmp_path / f"d{i}.png")
    words = WORDS
    return [{"id": f"d{i}", "text": f"{words[i % 14]} {words[(3 * i) % 14]}" if i % 3 else None,
             "image": f"d{i}.png" if i % 3 != 1 else None, "source": "unit", "rank": i} for i in range(start, start + n)]


def test_folder_index_search_matches_ret2_search(model_dir, photos, tmp_path):
    index = Ret2Index.build(tmp_path / "idx", photos, model=model_dir, batch_size=4, shard_size=5)
    assert len(index) == 12
    records = [index.record(r) for r in range(12)]
    assert records[11] == {"id": "sub/img11.png", "text": None, "image": "sub/img11.png", "metadata": {}}
    assert records[0]["text"] == "red circle" and records[7]["text"] is None
    queries = ["red circle", pattern(3), photos / "img05.png", {"text": "blue star", "image": pattern(9)}, ("green", None)]
    hits = index.search(queries, k=4)
    # the index ranks exactly as ret2.search.search over its own cached shards
    scores, rows = search(index.encode_queries(queries), index.embeddings().shards, 4)
    assert [[h.id for h in q] for q in hits] == [[index.record(int(r))["id"] for r in row] for row in rows]
    np.testing.assert_allclose([[h.score for h in q] for q in hits], scores, rtol=1e-6)
    # a query image that is a stored document (outside any root given as a Path) finds itself first
    assert index.search(photos / "img08.png", k=1)[0].id == "img08.png"  # image-only document
    single = index.search("red circle", k=2)
    assert isinstance(single[0], Hit) and [h.id for h in single] == [h.id for h in hits[0][:2]]


def test_jsonl_csv_dataset_sources_and_metadata(model_dir, tmp_path):
    import csv

    import datasets

    records = _records(tmp_path)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    with open(tmp_path / "docs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "text", "image", "source", "rank"])
        writer.writeheader()
        writer.writerows({**r, "text": r["text"] or "", "image": r["image"] or ""} for r in records)
    from_jsonl, root = read_records(jsonl)
    from_csv, _ = read_records(tmp_path / "docs.csv")
    from_dataset, _ = read_records(datasets.Dataset.from_list(records), image_root=tmp_path)
    stat = (tmp_path / "d2.png").stat()  # the image file's size and mtime: what upsert and sync compare
    assert root == tmp_path and from_jsonl[2] == {"id": "d2", "text": "blue triangle", "image": "d2.png",
                                                   "metadata": {"source": "unit", "rank": 2},
                                                   "stamp": [stat.st_size, stat.st_mtime_ns]}  # fmt: skip
    assert [r["id"] for r in from_csv] == [r["id"] for r in from_jsonl] and from_csv[2]["metadata"]["rank"] == "2"
    assert from_dataset == from_jsonl
    index = Ret2Index.build(tmp_path / "idx", jsonl, model=model_dir, batch_size=8)
    hit = index.search({"image": tmp_path / "d5.png", "text": records[5]["text"]}, k=1)[0]  # text + image document
    assert (hit.id, hit.metadata) == ("d5", {"source": "unit", "rank": 5})
    # queries follow the model's one-call `encode` rule, and say what is wrong with a bad one
    with pytest.raises(TypeError, match=r"Cannot encode a int"):
        index.search(3)
    with pytest.raises(FileNotFoundError, match=r"Image file '/nope.png' does not exist"):
        index.search({"image": "/nope.png"})


def test_bad_records_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"record 1: record has no 'id' field"):
        read_records([{"id": "a", "text": "x"}, {"text": "y"}])
    with pytest.raises(ValueError, match=r"record 'b' has neither text"):
        read_records([{"id": "b", "text": ""}])
    with pytest.raises(ValueError, match=r"lies outside the image root"):
        read_records([{"id": "c", "image": "/elsewhere/x.png"}], image_root=tmp_path)


def test_killed_build_resumes_to_the_same_index(model_dir, tmp_path, monkeypatch):
    records = _records(tmp_path, n=23)
    full = Ret2Index.build(tmp_path / "full", records, model=model_dir, image_root=tmp_path, shard_size=5, batch_size=3)
    import ret2.cache as cache

    real_save, written = np.save, []

    def dying_save(f, array):  # the build is killed while it writes its third shard
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(1)
        real_save(f, array)

    monkeypatch.setattr(cache.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        Ret2Index.build(tmp_path / "killed", records, model=model_dir, image_root=tmp_path, shard_size=5, batch_size=3)
    monkeypatch.setattr(cache.np, "save", real_save)
    cache = next((tmp_path / "killed" / "cache" / "part-00000").iterdir())
    assert sorted(p.name for p in cache.glob("*.npy")) == ["shard-00000.npy", "shard-00001.npy"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    resumed = Ret2Index.build(tmp_path / "killed", records, model=model_dir, image_root=tmp_path, shard_size=5,
                              batch_size=3)
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-0000[01].npy")} == mtimes  # not re-encoded
    a, b = full.embeddings(), resumed.embeddings()
    assert a.ids == b.ids and np.array_equal(np.concatenate(a.shards), np.concatenate(b.shards))
    with pytest.raises(FileExistsError, match="already holds an index"):
        Ret2Index.build(tmp_path / "killed", records, model=model_dir, image_root=tmp_path)


def test_another_model_is_refused_and_add_appends(model_dir, tmp_path):
    records = _records(tmp_path, n=10)
    index = Ret2Index.build(tmp_path / "idx", records[:6], model=model_dir, image_root=tmp_path)
    assert index.add(records[6:]) == 4 and len(index) == 10
    with pytest.raises(ValueError, match="'d7' is already in the index"):
        index.add(records[7:8])
    reopened = Ret2Index.open(tmp_path / "idx")
    assert reopened.embeddings().ids == [r["id"] for r in records]
    assert [p["count"] for p in reopened.info()["parts"]] == [6, 4]
    other, processor = tiny_model_and_processor(WORDS, seed=1)
    other.save_pretrained(tmp_path / "other")
    processor.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"was built with model .* has different files"):
        Ret2Index.open(tmp_path / "idx", model=tmp_path / "other")


def test_multi_vector_index_searches_exactly_and_refuses_approximate(tmp_path):
    model, processor = tiny_model_and_processor(WORDS, seed=0, pooling="none")
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    records = _records(tmp_path, n=8)
    index = Ret2Index.build(tmp_path / "idx", records, model=tmp_path / "m", image_root=tmp_path)
    assert index.multi_vector and index.embeddings().shards[0].ndim == 3
    queries = ["red circle", pattern(104)]
    scores, rows = search(index.encode_queries(queries), index.embeddings().shards, 3)
    assert [[h.id for h in q] for q in index.search(queries, k=3)] == [[f"d{r}" for r in row] for row in rows]
    with pytest.raises(ValueError, match="multi-vector .* use engine='exact'"):
        index.build_approximate()
    with pytest.raises(ValueError, match="multi-vector"):
        index.to_milvus(str(tmp_path / "m.db"))


def test_approximate_index_reports_recall(model_dir, tmp_path):
    records = _records(tmp_path, n=30)
    index = Ret2Index.build(tmp_path / "idx", records, model=model_dir, image_root=tmp_path)
    report = index.build_approximate(m=8, recall_sample=30)
    assert report["recall_at_10"] == pytest.approx(index.approximate_recall(30)) and report["recall_queries"] == 30
    assert report["recall_at_10"] >= 0.9  # 30 documents: HNSW with ef_search 128 visits them all
    assert [h.id for h in index.search("red circle", k=5, engine="approximate")] == [
        h.id for h in index.search("red circle", k=5)]
    index.add(_records(tmp_path, n=3, start=30))  # the approximate index follows the new documents
    assert Ret2Index.open(tmp_path / "idx")._approximate().index.ntotal == 33


def test_quantized_index_persists_reopens_and_follows_add(model_dir, tmp_path, capsys):
    """An index built with precision="binary" saves its sign bits, reopens with them and ranks exactly when the rescoring
    covers every document; its codes follow `add`; int8 is made in memory at search time; the CLI takes both options;
    a quantized engine other than the flat scan is refused."""
    from ret2.commands.index import run as main

    records = _records(tmp_path, n=24)
    index = Ret2Index.build(tmp_path / "idx", records[:20], model=model_dir, image_root=tmp_path, precision="binary")
    assert (tmp_path / "idx" / index.meta["quantized_file"]).is_file() and index.info()["config"]["precision"] == "binary"
    exact = index.search(["red circle", pattern(104)], k=5, precision="fp16")
    reopened = Ret2Index.open(tmp_path / "idx")
    assert reopened.precision == "binary" and reopened._quantized("binary").codes.ntotal == 20
    hits = reopened.search(["red circle", pattern(104)], k=5)  # 10 x 5 candidates: all 20 documents rescored
    assert [[(h.id, round(h.score, 5)) for h in q] for q in hits] == [[(h.id, round(h.score, 5)) for h in q] for q in exact]
    width = reopened.embeddings().shards[0].shape[1]
    raw = reopened.search("red circle", k=5, rescore_multiplier=0)  # sign agreement: 1 - 2 * Hamming / D
    assert all((1 - h.score) * width / 2 == round((1 - h.score) * width / 2) for h in raw)
    assert [h.id for h in reopened.search("red circle", k=5, precision="int8")] == [h.id for h in exact[0]]
    reopened.add(records[20:])
    assert Ret2Index.open(tmp_path / "idx")._quantized("binary").codes.ntotal == 24
    with pytest.raises(ValueError, match="precision 'int8' applies to engine 'exact'"):
        reopened.search("red circle", engine="approximate", precision="int8")
    with pytest.raises(ValueError, match=r"precision 'int4' is not one of \['fp16', 'int8', 'binary'\]"):
        Ret2Index.build(tmp_path / "other", records, model=model_dir, image_root=tmp_path, precision="int4")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:6]))
    main(["build", str(tmp_path / "cli"), str(tmp_path / "docs.jsonl"), "--model", model_dir, "--precision", "int8"])
    main(["search", str(tmp_path / "cli"), "--text", "red circle", "-k", "3", "--rescore-multiplier", "0", "--json"])
    out = capsys.readouterr().out.splitlines()
    assert Ret2Index.open(tmp_path / "cli").precision == "int8" and len(json.loads(out[-1])) == 3


def test_milvus_lite_top10_equals_exact(model_dir, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    records = _records(tmp_path, n=40)
    index = Ret2Index.build(tmp_path / "idx", records, model=model_dir, image_root=tmp_path)
    index.to_milvus(str(tmp_path / "docs.db"), collection="docs")
    queries = ["red circle", "blue square big", pattern(110), {"text": "green star", "image": pattern(120)}]
    exact = index.search(queries, k=10)
    milvus = Ret2Index.open(tmp_path / "idx").search(queries, k=10, engine="milvus")
    for e, m in zip(exact, milvus):
        # Both engines score the same stored fp16 vectors (fp32 in Milvus, fp64 in the exact rescoring): they agree to
        # ~1e-6, so neighbours 1e-5 apart are no near-tie.
        gaps = np.diff([h.score for h in e])
        assert np.all(np.abs(gaps) > 1e-5), "test data has near-ties"
        assert [h.id for h in m] == [h.id for h in e]
        np.testing.assert_allclose([h.score for h in m], [h.score for h in e], atol=1e-5)
    with pytest.raises(ValueError, match="already exists"):
        index.to_milvus(str(tmp_path / "docs.db"), collection="docs")


def test_cli_build_search_info_add(model_dir, photos, tmp_path, capsys):
    from ret2.commands.index import run as main

    folder = str(tmp_path / "idx")
    main(["build", folder, str(photos), "--model", model_dir, "--batch_size", "5"])
    assert capsys.readouterr().out.strip().endswith("12 documents")
    main(["search", folder, "--image", str(photos / "img08.png"), "-k", "3", "--json"])
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["id"] == "img08.png"
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"text": "red circle"}) + "\n" + json.dumps({"image": str(photos / "img09.png")}) + "\n")
    main(["search", folder, "--queries", str(queries), "--k", "2"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "query: {'text': 'red circle'}" and out[4].split()[2] == "img09.png"
    more = tmp_path / "more"
    more.mkdir()
    pattern(50).save(more / "new.png")
    (more / "docs.jsonl").write_text(json.dumps({"id": "new", "image": str(more / "new.png")}) + "\n")
    with pytest.raises(ValueError, match="lies outside the image root"):  # an absolute path outside --image-root
        main(["add", folder, str(more / "docs.jsonl"), "--image-root", str(photos)])
    main(["add", folder, str(more / "docs.jsonl")])  # by default, images are under the file's folder
    assert capsys.readouterr().out.strip().endswith("added 1 documents")
    main(["info", folder])
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 13 and info["model"]["name_or_path"] == model_dir and info["approximate"] is None


def test_hnsw_helpers_against_exact_search():
    from ret2.search import build_hnsw, recall_at_k, search_hnsw

    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 9], [4, 3]])) == 0.75
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(3000, 16)).astype(np.float32)
    docs = (docs / np.linalg.norm(docs, axis=1, keepdims=True)).astype(np.float16)
    queries = docs[:50].astype(np.float32) + 0.05 * rng.normal(size=(50, 16)).astype(np.float32)
    index = build_hnsw([docs[:1000], docs[1000:]], m=16, ef_construction=64)
    _, exact = search(queries, [docs[:1000], docs[1000:]], 10)
    _, approx = search_hnsw(index, queries, 10, ef_search=256)
    assert index.ntotal == 3000 and recall_at_k(exact, approx) >= 0.95
    with pytest.raises(ValueError, match="multi-vector"):
        build_hnsw([docs.reshape(1000, 3, 16)])


def test_add_takes_documents_whose_images_live_elsewhere(model_dir, photos, tmp_path):
    """`add` resolves image paths as `build` does (the jsonl's folder, or `image_root=`), each part keeps its own image
    root, and a missing image is named by the user's file and line before anything is written."""
    index = Ret2Index.build(tmp_path / "idx", photos, model=model_dir)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "deep").mkdir(parents=True)
    pattern(60).save(elsewhere / "m0.png")
    pattern(61).save(elsewhere / "deep" / "m1.png")
    more = elsewhere / "more.jsonl"
    more.write_text(json.dumps({"id": "extra-0", "image": "m0.png"}) + "\n"
                    + json.dumps({"id": "extra-1", "text": "red", "image": str(elsewhere / "deep" / "m1.png")}) + "\n")
    assert index.add(more) == 2 and len(index) == 14
    hit = index.search(elsewhere / "m0.png", k=1)[0]
    assert (hit.id, hit.image, hit.image_path) == ("extra-0", "m0.png", str(elsewhere / "m0.png"))
    assert index.search(photos / "img08.png", k=1)[0].image_path == str(photos / "img08.png")
    # a document's embedding is the one its own image gives
    row = index.embeddings().ids.index("extra-1")
    expected = index.model.encode([("red", elsewhere / "deep" / "m1.png")], kind="document", processor=index.processor)
    np.testing.assert_allclose(index.embeddings().shards[-1][1], expected[0].astype(np.float16), atol=1e-3)
    assert row == 13
    # in-memory records: relative to the index's image root unless image_root= is given
    assert index.add([{"id": "extra-2", "image": "m0.png"}], image_root=elsewhere) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "text": "ok"}) + "\n" + json.dumps({"id": "y", "image": "gone.png"}) + "\n")
    parts = index.info()["parts"]
    with pytest.raises(FileNotFoundError, match=rf"{bad}:2: image 'gone.png' of record 'y' not found at {tmp_path}"):
        index.add(bad)
    assert Ret2Index.open(tmp_path / "idx").info()["parts"] == parts  # no half-written part left behind


def _ret2_index(*args, cwd):
    import sys

    return processes.run([sys.executable, "-m", "ret2.index", *args], cwd=cwd, timeout=600)


@pytest.mark.slow
@pytest.mark.processes
def test_milvus_cli_flow_and_a_copied_index_in_separate_processes(model_dir, photos, tmp_path):
    """The README's CLI flow, each command its own process: build, copy into Milvus Lite, search with Milvus; then the
    index folder copied with `cp -r` (new mtimes), the original removed, searched exactly and with Milvus."""
    import shutil
    import subprocess

    pytest.importorskip("milvus_lite")
    built = _ret2_index("build", "idx", photos, "--model", model_dir, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    written = _ret2_index("milvus", "idx", "./docs.db", cwd=tmp_path)
    assert written.returncode == 0 and "Traceback" not in written.stderr, written.stderr
    expected = [h.id for h in Ret2Index.open(tmp_path / "idx").search("red circle", k=5)]
    subprocess.run(["cp", "-r", "idx", "copy"], cwd=tmp_path, check=True)
    shutil.rmtree(tmp_path / "idx")
    for engine in ("milvus", "exact"):
        found = _ret2_index("search", "copy", "--text", "red circle", "-k", "5", "--engine", engine, "--json",
                            cwd=tmp_path)  # fmt: skip
        assert found.returncode == 0, found.stderr
        assert "re-encoding" not in found.stderr  # the copy's cache was found, not rebuilt
        assert [h["id"] for h in json.loads(found.stdout)] == expected


def test_a_mistyped_model_folder_fails_at_once_naming_it(model_dir, photos, tmp_path):
    from ret2.model import check_model_source

    (tmp_path / "runs").mkdir()
    os.symlink(model_dir, tmp_path / "runs" / "tiny")
    failed = _ret2_index("build", "idx", photos, "--model", "runs/tinyy", cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith(
        "python -m ret2.index: error: model folder 'runs/tinyy' does not exist"), failed.stderr
    assert "did you mean 'runs/tiny'?" in failed.stderr and not (tmp_path / "idx").exists()
    for local in ("./nope", "/no/such/model", "a/b/c", str(tmp_path / "runs" / "x")):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            check_model_source(local)
    for hub_id in ("openai/clip-vit-base-patch32", "bert-base-uncased", model_dir):
        check_model_source(hub_id)  # Hub ids and existing folders pass


def test_cli_names_its_flag_when_a_milvus_collection_exists(model_dir, tmp_path, capsys):
    """The refusal to replace a collection names the command's flag (`--overwrite`), not only the Python keyword."""
    pytest.importorskip("milvus_lite")
    from ret2.commands._common import run_cli
    from ret2.commands.index import run as main

    Ret2Index.build(tmp_path / "idx", _records(tmp_path, n=4), model=model_dir, image_root=tmp_path)
    command = ["milvus", str(tmp_path / "idx"), str(tmp_path / "docs.db"), "--collection", "docs"]
    main(command)
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, command)
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().endswith(
        f"error: Milvus collection 'docs' already exists at {tmp_path / 'docs.db'}; pass overwrite=True "
        "(ret2-index milvus: --overwrite) to replace it (rerun with --traceback for the traceback)")
    main([*command, "--overwrite"])
    assert capsys.readouterr().out.strip().endswith(f"written to Milvus collection 'docs' at {tmp_path / 'docs.db'}")


def test_truncated_index_searches_renormalised_prefixes_and_reopens(model_dir, photos, tmp_path, capsys):
    """`--truncate-dim` at build: stored in the index, documents and queries alike cut to that prefix and
    re-normalised, kept on reopen and for added documents."""
    from ret2.encoding import truncate_array
    from ret2.commands.index import run as main

    full = Ret2Index.build(tmp_path / "full", photos, model=model_dir, batch_size=6)
    dim = full.model.config.embedding_dim // 2
    main(["build", str(tmp_path / "short"), str(photos), "--model", model_dir, "--batch-size", "6",
          "--truncate-dim", str(dim)])  # fmt: skip
    capsys.readouterr()
    index = Ret2Index.open(tmp_path / "short")
    assert index.truncate_dim == dim and index.info()["config"]["truncate_dim"] == dim and full.truncate_dim is None
    documents = np.concatenate(index.embeddings().shards)
    assert documents.shape == (12, dim) and documents.dtype == np.float16
    np.testing.assert_array_equal(documents, truncate_array(np.concatenate(full.embeddings().shards), dim))
    queries = ["red circle", pattern(3), photos / "img05.png"]
    vectors = index.encode_queries(queries)
    expected = index.model.encode(queries, kind="query", processor=index.processor, truncate_dim=dim)
    np.testing.assert_array_equal(vectors, expected.astype(np.float16))
    scores, rows = search(vectors, [documents], 4)
    hits = index.search(queries, k=4)
    assert [[h.id for h in q] for q in hits] == [[index.record(int(r))["id"] for r in row] for row in rows]
    np.testing.assert_allclose([[h.score for h in q] for q in hits], scores, rtol=1e-6)
    assert index.search(photos / "img08.png", k=1)[0].id == "img08.png"
    index.add([{"id": "extra", "text": "green star", "image": None}])
    reopened = Ret2Index.open(tmp_path / "short")
    assert len(reopened) == 13 and np.concatenate(reopened.embeddings().shards).shape == (13, dim)
    assert reopened.search("green star", k=1)[0].id == "extra"  # the same text-only input as the query
    codes = reopened._quantized("binary").codes  # quantized codes are made from the truncated vectors
    assert (codes.d, codes.ntotal) == (dim, 13)
    binary = reopened.search(queries, k=4, precision="binary")  # 10 x 4 candidates: every document rescored
    assert [[h.id for h in q] for q in binary] == [[h.id for h in q] for q in reopened.search(queries, k=4)]
    with pytest.raises(ValueError, match=r"truncate_dim=0 is not valid"):
        Ret2Index.build(tmp_path / "bad", photos, model=model_dir, truncate_dim=0)
    assert not (tmp_path / "bad").exists()  # refused before the folder is made
def test_long_document_is_found_by_its_tail_through_chunks(model_dir, tmp_path, caplog):
    """A text longer than the tokenizer's 64 tokens loses its tail when encoded whole (the log counts it); split into
    chunks on token boundaries, the document is found by a query that matches only its tail, returned once, with
    that chunk."""
    from ret2.index.chunking import split_text

    head = " ".join(WORDS[i % 10] for i in range(72))  # 72 tokens of the first ten words
    tail = "star left star top right bottom small big"  # tokens 72-79: the last chunk of 10 with overlap 2
    docs = [{"id": "long", "text": f"{head} {tail}"}] + [
        {"id": f"short{i}", "text": f"{WORDS[i]} {WORDS[i + 3]} {WORDS[13 - i]}"} for i in range(6)]  # fmt: skip
    with caplog.at_level("WARNING", logger="ret2.encoding"):
        whole = Ret2Index.build(tmp_path / "whole", docs, model=model_dir)
    assert "1 of 7 texts are longer than the tokenizer's limit of 64 tokens and were truncated" in caplog.text
    chunked = Ret2Index.build(tmp_path / "chunked", docs, model=model_dir, chunk_size=10, chunk_overlap=2)
    assert chunked.documents == 7 and len(chunked) == 10 + 6 and chunked.chunking == {"size": 10, "overlap": 2}
    hits = chunked.search(tail, k=7)
    assert [h.id for h in hits][0] == "long" and sorted(h.id for h in hits) == sorted(d["id"] for d in docs)
    assert hits[0].chunk == 9 and hits[0].text == tail and hits[0].score > 0.999
    whole_score = next(h.score for h in whole.search(tail, k=7) if h.id == "long")
    assert whole_score < 0.99  # whole, the document's embedding never saw its tail

    tokenizer = chunked.processor.tokenizer
    assert split_text(tokenizer, "red green blue yellow circle", 2, 1) == [
        "red green", "green blue", "blue yellow", "yellow circle"]  # fmt: skip
    assert split_text(tokenizer, "red green", 2, 0) == ["red green"]
    with pytest.raises(ValueError, match="chunk_size 70 is above the tokenizer's limit of 62 tokens"):
        Ret2Index.build(tmp_path / "too-big", docs, model=model_dir, chunk_size=70)
    with pytest.raises(ValueError, match="document id 'long' is already in the index"):
        chunked.add(docs[:1])
    assert chunked.add([{"id": "more", "text": tail}]) == 1 and chunked.documents == 8 and len(chunked) == 17


def test_ivfpq_engine_builds_reopens_follows_add_and_runs_from_the_cli(model_dir, tmp_path, capsys):
    """IVF-PQ as an engine of the index: built with its recall@10 and bytes per document in index.json, searched
    through Ret2Index.search (every cell probed and every candidate rescored from fp16: the exact ranking), reopened,
    kept current by add, and reached from `ret2-index approximate --kind ivfpq` / `search --engine approximate`."""
    from ret2.commands.index import run as main

    index = Ret2Index.build(tmp_path / "idx", _records(tmp_path, n=80), model=model_dir, image_root=tmp_path)
    report = index.build_approximate("ivfpq", recall_sample=40)
    assert report["kind"] == "ivfpq" and report["nlist"] == 2 and report["nbits"] == 6 and report["m"] == 8
    assert report["recall_at_10"] == pytest.approx(index.approximate_recall(40)) == 1.0
    assert report["bytes_per_document"] > 0
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["approximate"] == report
    queries = ["red circle", pattern(104)]
    exact = [[(h.id, round(h.score, 4)) for h in q] for q in index.search(queries, k=5)]
    assert [[(h.id, round(h.score, 4)) for h in q] for q in index.search(queries, k=5, engine="approximate")] == exact
    reopened = Ret2Index.open(tmp_path / "idx")
    assert [[h.id for h in q] for q in reopened.search(queries, k=5, engine="approximate")] == [
        [i for i, _ in q] for q in exact]
    reopened.add(_records(tmp_path, n=5, start=80))
    assert Ret2Index.open(tmp_path / "idx")._approximate().index.ntotal == 85
    again = Ret2Index.open(tmp_path / "idx")
    assert [h.id for h in again.search("red circle", k=10, engine="approximate")] == [
        h.id for h in again.search("red circle", k=10)]
    with pytest.raises(ValueError, match="nprobe must be a positive integer, got 0"):
        again.search("red circle", engine="approximate", nprobe=0)
    with pytest.raises(ValueError, match=r"kind 'lsh' is not one of \['hnsw', 'ivfpq'\]"):
        again.build_approximate("lsh")

    capsys.readouterr()
    main(["approximate", str(tmp_path / "idx"), "--kind", "ivfpq", "--nprobe", "1", "--recall-sample", "20"])
    assert "IVF-PQ over 85 documents, recall@10" in capsys.readouterr().out
    assert Ret2Index.open(tmp_path / "idx").info()["approximate"]["nprobe"] == 1
    main(["search", str(tmp_path / "idx"), "--text", "red circle", "-k", "3", "--engine", "approximate", "--nprobe",
          "2", "--json"])  # fmt: skip
    found = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [h["id"] for h in found] == [h.id for h in again.search("red circle", k=3)]


def test_embeddings_computed_elsewhere_are_stored_as_given(model_dir, tmp_path):
    """`build(..., embeddings=)` stores embeddings the same model computed elsewhere instead of encoding: the index
    searches as the one that encoded them; a shape that does not fit the documents or the model is refused."""
    records = _records(tmp_path, n=12)
    encoded = Ret2Index.build(tmp_path / "a", records, model=model_dir, image_root=tmp_path, shard_size=5)
    vectors = np.concatenate(encoded.embeddings().shards)
    given = Ret2Index.build(tmp_path / "b", records, model=model_dir, image_root=tmp_path, shard_size=5,
                            embeddings=vectors)  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(given.embeddings().shards), vectors)
    queries = ["red circle", pattern(104)]
    assert [[h.id for h in q] for q in given.search(queries, k=4)] == [[h.id for h in q] for q in encoded.search(queries, k=4)]
    with pytest.raises(ValueError, match=r"embeddings of shape \(11, 32\) do not match 12 documents"):
        Ret2Index.build(tmp_path / "c", records, model=model_dir, image_root=tmp_path, embeddings=vectors[:11])
    assert not (tmp_path / "c").exists()  # refused before the folder is made


@pytest.mark.processes
def test_two_writers_at_once_lose_and_duplicate_nothing(model_dir, tmp_path):
    """Two `ret2-index add` of different batches started together, several times, staggered and simultaneous: one
    writer at a time (the folder's lock), each on the manifest the other left, so every document is there once and
    both report what they added; a reader opened before sees them after `refresh` (and `search` does it itself)."""
    import sys
    import threading

    index = Ret2Index.build(tmp_path / "idx", _records(tmp_path, n=4), model=model_dir, image_root=tmp_path)
    reader = Ret2Index.open(tmp_path / "idx")
    start, expected = 4, 4
    for round_, delay in enumerate((0.0, 0.5, 0.0)):
        files = []
        for name in "ab":
            batch = _records(tmp_path, n=3, start=start)
            start += 3
            path = tmp_path / f"batch-{round_}{name}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in batch))
            files.append(path)
        outputs = [None, None]

        def add(i, pause):
            time.sleep(pause)
            outputs[i] = processes.run([sys.executable, "-m", "ret2.index", "add", tmp_path / "idx", files[i]],
                                       timeout=300, check=True)  # fmt: skip

        threads = [threading.Thread(target=add, args=(0, 0.0)), threading.Thread(target=add, args=(1, delay))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all("added 3 documents" in out.stdout for out in outputs), [o.stdout + o.stderr for o in outputs]
        expected += 6
    after = Ret2Index.open(tmp_path / "idx")
    ids = after.embeddings().ids
    assert len(ids) == len(set(ids)) == expected == 22
    assert sorted(ids) == sorted(f"d{i}" for i in range(22))
    assert len(reader) == 4 and reader.search("red circle", k=30) and len(reader) == 22  # search refreshed it


def test_a_second_writer_waits_then_fails_naming_the_holder(model_dir, tmp_path):
    index = Ret2Index.build(tmp_path / "idx", _records(tmp_path, n=3), model=model_dir, image_root=tmp_path)
    other = Ret2Index.open(tmp_path / "idx")
    with index.storage.writer():
        with pytest.raises(TimeoutError, match=r"is being written by another process \(\{\"pid\": \d+"):
            with other.storage.writer(timeout=0.5):
                pass
    with other.storage.writer(timeout=0.5):  # free again
        pass


def test_unreadable_images_are_found_at_once_and_skipped_or_stop_the_build(model_dir, tmp_path, capsys):
    """A photo folder with a truncated JPEG, a zero-byte .jpg and a text file named .png: every bad file is named in
    one pass by its own path (never an internal part file); by default their documents are left out (counted in the
    command's output, listed in skipped.jsonl), with --on-bad-image stop nothing is added."""
    import io

    from ret2.commands.index import run as main

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        pattern(200 + i).save(folder / f"ok{i}.png")
    data = io.BytesIO()
    pattern(7).convert("RGB").save(data, "JPEG")
    (folder / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    with pytest.raises(ValueError) as stopped:
        Ret2Index.build(tmp_path / "stop", folder, model=model_dir, on_bad_image="stop")
    message = str(stopped.value)
    assert "3 image file(s) cannot be read; nothing was added" in message and "part-" not in message
    for name, why in (("cut.jpg", "truncated or corrupt"), ("empty.jpg", "empty file"), ("notes.png", "not an image")):
        assert f"{folder / name}: {why}" in message
    assert not (tmp_path / "stop" / "parts" / "part-00000.jsonl").exists()

    main(["build", str(tmp_path / "idx"), str(folder), "--model", model_dir])
    out = capsys.readouterr().out
    assert f"5 documents; 3 skipped (unreadable images, listed in {tmp_path / 'idx' / 'skipped.jsonl'})" in out
    skipped = [json.loads(line) for line in (tmp_path / "idx" / "skipped.jsonl").read_text().splitlines()]
    assert sorted(s["id"] for s in skipped) == ["cut.jpg", "empty.jpg", "notes.png"]
    assert all(s["part"] == "part-00000" and s["image"].startswith(str(folder)) for s in skipped)
    index = Ret2Index.open(tmp_path / "idx")
    assert sorted(index.embeddings().ids) == [f"ok{i}.png" for i in range(5)]
    with pytest.raises(ValueError, match=r"on_bad_image 'ignore' is not one of \['skip', 'stop'\]"):
        index.add(folder, on_bad_image="ignore")


def test_delete_and_upsert_through_every_engine_and_after_reopening(model_dir, tmp_path):
    """Deleted documents never come back (exact, int8, HNSW, IVF-PQ, keyword, Milvus Lite; right after and after
    reopening) and their ids may be added again; an unknown id is an error naming it; upsert re-encodes only what
    changed and replaces it."""
    pytest.importorskip("bm25s")
    index = Ret2Index.build(tmp_path / "idx", _records(tmp_path, n=40), model=model_dir, image_root=tmp_path)
    index.build_approximate("ivfpq", recall_sample=10)
    milvus = pytest.importorskip("pymilvus") and index.to_milvus(str(tmp_path / "m.db"))
    queries = ["red circle", pattern(104), WORDS[3]]
    gone = [h.id for h in index.search(queries[0], k=3)]
    assert index.delete(gone) == 3 and index.documents == 37
    live = [f"d{i}" for i in range(40) if f"d{i}" not in gone]
    with pytest.raises(ValueError, match=r"1 id\(s\) not in index .*\['nope'\]; nothing was deleted"):
        index.delete(["nope", live[0]])
    assert index.delete(["nope"], missing_ok=True) == 0 and index.documents == 37

    def found(ix):
        out = set()
        for options in ({}, {"precision": "int8"}, {"engine": "approximate"}, {"engine": "milvus"},
                        {"mode": "keyword"}, {"mode": "hybrid"}):  # fmt: skip
            qs = [q for q in queries if isinstance(q, str)] if options.get("mode") else queries
            for hits in ix.search(qs, k=40, **options):
                out |= {h.id for h in hits}
        return out

    assert milvus and not set(gone) & found(index)
    reopened = Ret2Index.open(tmp_path / "idx")
    assert not set(gone) & found(reopened) and reopened.documents == 37
    reopened.add([r for r in _records(tmp_path, n=40) if r["id"] == gone[0]], image_root=tmp_path)  # the id is free
    assert gone[0] in {h.id for h in reopened.search(queries[0], k=5)} and reopened.documents == 38

    by_id = {r["id"]: r for r in _records(tmp_path, n=40)}
    same, text, meta = (dict(by_id[i]) for i in live[:3])
    text["text"], meta["rank"] = "zebra crossing", 99
    counts = reopened.upsert([same, text, meta, *_records(tmp_path, n=1, start=40)], image_root=tmp_path)
    assert counts == {"added": 1, "replaced": 2, "unchanged": 1}
    again = Ret2Index.open(tmp_path / "idx")
    assert again.documents == 39
    hits = again.search("zebra crossing", k=50, mode="keyword")
    assert [h.id for h in hits] == [text["id"]] and hits[0].text == "zebra crossing"  # the old version is gone
    assert [h.id for h in again.search("red circle", k=5, filter={"rank": 99})] == [meta["id"]]
    assert [h.id for h in again.search("red circle", k=5, filter={"rank": by_id[meta["id"]]["rank"]})] == []
    ids = [h.id for h in again.search(queries[0], k=50)]
    assert len(ids) == len(set(ids)) == 39 and "d40" in ids
    # Milvus Lite followed every write: the same 39 live documents, the same best hit, the replaced text
    in_milvus = [h.id for h in again.search(queries[0], k=50, engine="milvus")]
    assert sorted(in_milvus) == sorted(ids) and in_milvus[0] == ids[0]
    assert [h.id for h in again.search("zebra crossing", k=1, mode="keyword", engine="milvus")] == [text["id"]]


def test_delete_and_upsert_from_the_command_line(model_dir, tmp_path, capsys):
    from ret2.commands.index import run as main

    Ret2Index.build(tmp_path / "idx", _records(tmp_path, n=6), model=model_dir, image_root=tmp_path)
    capsys.readouterr()
    main(["delete", str(tmp_path / "idx"), "d0", "d1", "nope", "--missing-ok"])
    assert "deleted 2 documents (1 not in the index)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="nope"):
        main(["delete", str(tmp_path / "idx"), "nope"])
    changed = _records(tmp_path, n=2, start=2)
    changed[0]["text"] = "zebra"
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in changed))
    main(["upsert", str(tmp_path / "idx"), str(tmp_path / "new.jsonl")])
    assert "0 added, 1 replaced, 1 unchanged" in capsys.readouterr().out
    index = Ret2Index.open(tmp_path / "idx")
    assert index.documents == 4 and {h.id for h in index.search("red circle", k=10)} == {"d2", "d3", "d4", "d5"}
