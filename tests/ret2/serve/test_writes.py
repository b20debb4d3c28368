"""ret2-serve with an index, against a real server in a child process on a loopback port: /search takes filter and
mode and equals `Ret2Index.search`; writes need the key and --allow-writes; an upsert is found by the next search, a
delete is gone from it; a write by another process is seen by the running server."""

import base64
import io
import json
import os
import sys

import httpx
import processes
import pytest
from conftest import WORDS, pattern
from prometheus_client.parser import text_string_to_metric_families

from ret2.index import Ret2Index
from ret2.serve.process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.processes]
pytest.importorskip("bm25s")
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _records(folder, n, start=0):
    for i in range(start, start + n):
        pattern(100 + i).save(folder / f"d{i}.png")
    return [{"id": f"d{i}", "text": f"{WORDS[i % 14]} {WORDS[(3 * i) % 14]}", "image": f"d{i}.png" if i % 2 else None,
             "album": ("trip", "home", "zoo")[i % 3], "year": 2018 + i % 5} for i in range(start, start + n)]  # fmt: skip


@pytest.fixture
def index_dir(tiny_model_dir, tmp_path):
    Ret2Index.build(tmp_path / "idx", _records(tmp_path, 24), model=str(tiny_model_dir), image_root=tmp_path)
    return tmp_path / "idx"


def _png(seed: int) -> str:
    data = io.BytesIO()
    pattern(seed).save(data, "PNG")
    return "data:image/png;base64," + base64.b64encode(data.getvalue()).decode()


def test_search_filters_and_modes_as_the_index_does_and_writes_need_the_flag(index_dir, tmp_path):
    local = Ret2Index.open(index_dir)
    with ServerProcess(["--index", str(index_dir)], tmp_path / "serve.log", {"RET2_API_KEY": ""}) as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for body in ({"text": "red circle", "filter": {"album": "trip"}},
                         {"text": WORDS[3], "mode": "keyword", "filter": {"year": {"$gte": 2020}}},
                         {"text": WORDS[5], "mode": "hybrid", "fusion": "weighted", "weights": [0.3, 0.7]}):  # fmt: skip
                got = http.post("/search", json={**body, "k": 6}).json()["hits"]
                options = {k: v for k, v in body.items() if k != "text"}
                want = local.search(body["text"], k=6, **options)
                assert [h["id"] for h in got] == [h.id for h in want], body
                assert [h["metadata"] for h in got] == [h.metadata for h in want]
            bad = http.post("/search", json={"text": "a", "filter": {"year": {"$near": 3}}})
            assert bad.status_code == 400 and "$near" in bad.json()["error"]["message"]
            assert http.post("/search", json={"image": _png(1), "mode": "keyword"}).status_code == 400
            for route, body in (("/documents", {"documents": [{"id": "x", "text": "x"}]}),
                                ("/documents/delete", {"ids": ["d0"]})):  # fmt: skip
                refused = http.post(route, json=body)
                assert refused.status_code == 403 and "--allow-writes" in refused.json()["error"]["message"]
    started = processes.run([sys.executable, "-m", "ret2.serve", "--index", str(index_dir), "--allow-writes"],
                            timeout=120, env={**os.environ, "RET2_API_KEY": ""})  # fmt: skip
    assert started.returncode != 0 and "--allow-writes needs --index and an API key" in started.stderr


def test_writes_are_seen_by_the_next_search_and_other_processes_writes_too(index_dir, tmp_path):
    with ServerProcess(["--index", str(index_dir), "--allow-writes"], tmp_path / "serve.log",
                       {"RET2_API_KEY": KEY}) as server:  # fmt: skip
        with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as http:
            assert httpx.post(server.url + "/documents", json={"documents": []}).status_code == 401  # the key first
            new = [{"id": "zebra", "text": "zebra crossing at night", "image": _png(400), "album": "city"},
                   {"id": "d3", "text": "replaced text", "album": "trip"}]  # fmt: skip
            answer = http.post("/documents", json={"documents": new})
            assert answer.status_code == 200, answer.text
            assert {k: answer.json()[k] for k in ("added", "replaced")} == {"added": 1, "replaced": 1}
            hits = http.post("/search", json={"text": "zebra crossing", "mode": "keyword", "k": 3}).json()["hits"]
            assert hits[0]["id"] == "zebra" and hits[0]["metadata"] == {"album": "city"}
            assert hits[0]["thumbnail_url"] and http.get(hits[0]["thumbnail_url"]).status_code == 200
            city = http.post("/search", json={"text": "a", "filter": {"album": "city"}, "k": 5}).json()["hits"]
            assert [h["id"] for h in city] == ["zebra"]

            assert http.post("/documents/delete", json={"ids": ["zebra"]}).json()["deleted"] == 1
            assert http.post("/documents/delete", json={"filter": {"album": "zoo"}}).json()["deleted"] == 8
            every = {h["id"] for h in http.post("/search", json={"text": "red circle", "k": 50}).json()["hits"]}
            assert "zebra" not in every and not {f"d{i}" for i in range(2, 24, 3)} & every and len(every) == 16
            missing = http.post("/documents/delete", json={"ids": ["nope"]})
            assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]

            # another process adds a document: the running server finds it, and /ready counts it
            other = tmp_path / "other.jsonl"
            other.write_text(json.dumps({"id": "late", "text": "a late giraffe"}) + "\n")
            processes.run([sys.executable, "-m", "ret2.index", "add", str(index_dir), str(other)], timeout=300,
                          check=True)  # fmt: skip
            hits = http.post("/search", json={"text": "late giraffe", "mode": "keyword", "k": 1}).json()["hits"]
            assert [h["id"] for h in hits] == ["late"]
            ready = http.get("/ready").json()["index"]
            assert ready["documents"] == 17 and ready["writes"] is True
            written = {s.labels["operation"]: s.value for family in text_string_to_metric_families(http.get("/metrics").text)
                       for s in family.samples if s.name == "ret2_documents_written_total"}  # fmt: skip
            assert written == {"upsert": 2, "delete": 9}
