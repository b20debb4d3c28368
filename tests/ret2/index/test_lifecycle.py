"""A collection that changes: compaction through every engine, a writer SIGKILLed at every commit point of build /
add / delete / upsert / compact (tests/ret2/index/kill_worker.py), and an index that opens from anywhere."""

import json
import os
import shutil
import sys
from pathlib import Path

import processes
import pytest
from conftest import WORDS, pattern

from ret2.index import Ret2Index
from ret2.index.ret2_index import COMPACT_FRACTION

WORKER = Path(__file__).with_name("kill_worker.py")


def _records(folder, n, start=0):
    for i in range(start, start + n):
        pattern(100 + i).save(folder / f"d{i}.png")
    return [{"id": f"d{i}", "text": f"{WORDS[i % 14]} {WORDS[(3 * i) % 14]}", "image": f"d{i}.png" if i % 2 else None,
             "album": ("trip", "home")[i % 2]} for i in range(start, start + n)]  # fmt: skip


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("op", ["build", "add", "delete", "upsert", "compact"])
def test_a_writer_killed_at_any_commit_point_leaves_the_index_before_or_after(op, tiny_model_dir, tmp_path):
    out = processes.run([sys.executable, WORKER, tiny_model_dir, tmp_path, op], timeout=600,
                        env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # every rename the op makes was a kill point; the manifest save is among them, so both outcomes were seen
    # (a build killed at any point is resumed: it is "before" until its last rename has run)
    assert result["op"] == op and result["kills"] >= 3, result
    assert "before" in result["states"] and (op in ("build", "delete") or "after" in result["states"]), result


def _hits(index, queries, kind):
    """Each engine's hits. BM25's scores move with compaction (its collection statistics counted the deleted texts
    until then, as Lucene's do until a merge): ids only. A rebuilt HNSW graph may order its tail otherwise: its
    first 5."""
    runs = {}
    for name, options in {"exact": {}, "int8": {"precision": "int8"}, "approximate": {"engine": "approximate"},
                          "milvus": {"engine": "milvus"}, "keyword": {"mode": "keyword"},
                          "filtered": {"filter": {"album": "trip"}}}.items():  # fmt: skip
        qs = queries[:1] if "mode" in options else queries
        runs[name] = [[(h.id, round(h.score, 4)) for h in q] for q in index.search(qs, k=8, **options)]
    runs["keyword"] = [[(i, 0) for i, _ in q] for q in runs["keyword"]]
    if kind == "hnsw":
        runs["approximate"] = [q[:5] for q in runs["approximate"]]
    return runs


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_compaction_reclaims_deleted_rows_and_every_engine_ranks_as_before(kind, tiny_model_dir, tmp_path):
    pytest.importorskip("bm25s")
    pytest.importorskip("pymilvus")
    index = Ret2Index.build(tmp_path / "idx", _records(tmp_path, 40), model=str(tiny_model_dir), image_root=tmp_path)
    index.build_approximate(kind, recall_sample=10)
    index.to_milvus(str(tmp_path / "m.db"))
    queries = ["red circle", pattern(104)]
    index.search(queries[0], k=1, mode="keyword")  # the keyword index, built before the deletions
    gone = ["d0", "d5", "d6", "d13", "d21", "d39"]  # 6 of 40 rows: below the automatic fraction
    assert index.delete(gone) == 6 and len(index) == 40
    before = _hits(index, queries, kind)
    old_parts = sorted(p.name for p in (tmp_path / "idx" / "parts").iterdir())

    assert index.compact() == 6 and len(index) == index.documents == 34
    assert _hits(index, queries, kind) == before  # nothing a search sees has changed...
    reopened = Ret2Index.open(tmp_path / "idx")
    assert _hits(reopened, queries, kind) == before and len(reopened) == 34  # ...nor after reopening
    assert not {i for run in before.values() for q in run for i, _ in q} & set(gone)
    assert reopened.meta["approximate"]["recall_documents"] == 34 and reopened.compact() == 0

    # the old part is kept while the manifest before names it, and gone after the next save
    reopened.add(_records(tmp_path, 1, start=40), image_root=tmp_path)
    assert not set(old_parts) & {p.name for p in (tmp_path / "idx" / "parts").iterdir()}
    assert reopened.documents == 35 and reopened.search("red circle", k=40, engine="milvus")

    # past COMPACT_FRACTION of the rows deleted, delete compacts by itself
    live = sorted(reopened.storage.rows_of())
    n = int(COMPACT_FRACTION * len(reopened)) + 1
    assert reopened.delete(live[:n]) == n and len(reopened) == reopened.documents == 35 - n


def test_compact_from_the_command_line(tiny_model_dir, tmp_path, capsys):
    from ret2.commands.index import run as main

    Ret2Index.build(tmp_path / "idx", _records(tmp_path, 8), model=str(tiny_model_dir), image_root=tmp_path)
    main(["delete", str(tmp_path / "idx"), "d1"])
    capsys.readouterr()
    main(["compact", str(tmp_path / "idx")])
    assert "1 deleted rows removed; 7 documents in 7 rows" in capsys.readouterr().out


def test_an_index_built_with_a_relative_model_path_opens_from_anywhere_and_after_a_copy(tiny_model_dir, tmp_path,
                                                                                        monkeypatch):  # fmt: skip
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    Ret2Index.build("idx", _records(tmp_path, 4), model="model", image_root=tmp_path)
    shutil.copytree(tmp_path / "idx", tmp_path / "copy")
    monkeypatch.chdir(tmp_path.parent)
    for folder in (tmp_path / "idx", tmp_path / "copy"):
        index = Ret2Index.open(folder)
        assert index.meta["model"]["name_or_path"] == str(tmp_path / "model")
        assert [h.id for h in index.search("red circle", k=4)]


def test_sync_makes_the_index_match_its_folder_again(tiny_model_dir, tmp_path, capsys):
    """New files added, a changed image and a changed caption encoded again, a removed file deleted, documents from
    elsewhere left alone; a second sync changes nothing. Camera folders added from inside the photo folder get ids
    relative to it, so the same file names in two of them do not collide."""
    from ret2.commands.index import run as main

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        pattern(200 + i).save(photos / f"p{i}.png")
    (photos / "p0.txt").write_text("a red door")
    index = Ret2Index.build(tmp_path / "idx", photos, model=str(tiny_model_dir))
    index.add([{"id": "elsewhere", "text": "a note from another source"}])
    before = {i: index._row_vector(r[0]).copy() for i, r in index.storage.rows_of().items()}

    pattern(300).resize((40, 40)).save(photos / "p1.png")  # changed image (another size on disk)
    (photos / "p0.txt").write_text("a blue door")  # changed caption
    (photos / "p4.png").unlink()  # removed
    pattern(205).save(photos / "p5.png")  # new
    for camera in ("2025-trip", "2026-trip"):
        (photos / camera).mkdir()
        pattern(210 if camera == "2025-trip" else 211).save(photos / camera / "img1.png")

    assert index.sync() == {"added": 3, "replaced": 2, "unchanged": 2, "deleted": 1}
    rows = index.storage.rows_of()
    assert sorted(rows) == sorted(["p0.png", "p1.png", "p2.png", "p3.png", "p5.png", "2025-trip/img1.png",
                                   "2026-trip/img1.png", "elsewhere"])  # fmt: skip
    assert index.record(rows["p0.png"][0])["text"] == "a blue door"
    after = {i: index._row_vector(r[0]) for i, r in rows.items()}
    assert not (after["p1.png"] == before["p1.png"]).all() and (after["p2.png"] == before["p2.png"]).all()
    assert "p4.png" not in {h.id for h in index.search("red circle", k=20)}

    main(["sync", str(tmp_path / "idx")])
    assert "0 added, 0 changed, 0 deleted, 7 unchanged" in capsys.readouterr().out  # "elsewhere" is not in it
    (photos / "2027-trip").mkdir()
    pattern(212).save(photos / "2027-trip" / "img1.png")
    index.add(photos / "2027-trip")  # an add of a folder inside the photo folder: ids relative to it too
    assert "2027-trip/img1.png" in index.storage.rows_of()
    with pytest.raises(NotADirectoryError, match="is not one"):
        index.sync(tmp_path / "nope")


def test_with_deletions_pending_a_search_ranks_deeper_and_equals_the_masked_scan(tiny_model_dir, tmp_path):
    index = Ret2Index.build(tmp_path / "idx", _records(tmp_path, 40), model=str(tiny_model_dir), image_root=tmp_path)
    assert index.delete([f"d{i}" for i in range(0, 40, 5)]) == 8  # 20%: below the automatic compaction
    queries = index.encode_queries(["red circle", pattern(104), WORDS[2]])
    live = index.storage.live_rows()
    for k in (1, 10, 32, 40):  # 40: more than the 32 live rows
        skipped = index.search_embeddings(queries, k)
        masked = index.search_embeddings(queries, k, allowed=live)
        assert skipped[1].tolist() == masked[1].tolist() and (skipped[0] == masked[0]).all(), k
        assert skipped[1].shape == (3, min(k, 32)) and not set(skipped[1].ravel().tolist()) - set(live.tolist())
