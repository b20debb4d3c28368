"""ret2-serve as an operator runs it, against a real server in a child process on a loopback port: `/metrics` parses with
prometheus-client's own parser and counts exactly the requests sent, `/ready` apart from `/health`, JSON log lines;
past `--max-queue` only 200s and 429s (with Retry-After) and a healthy server afterwards; a passed
`--request-timeout` gives 503 and a request whose client has gone is never encoded."""

import asyncio
import json
import socket
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ret2.serve.process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.processes]

NO_KEY = {"RET2_API_KEY": ""}


def scrape(url: str) -> dict:
    """{(sample name, sorted labels): value} of every sample `/metrics` exposes."""
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}  # fmt: skip


def requests_of(samples: dict, route: str, status: int) -> float:
    return samples.get(("ret2_requests_total", (("route", route), ("status", str(status)))), 0)


def encode(tiny, texts: list) -> np.ndarray:
    model, processor = tiny
    return model.encode(texts, kind="query", processor=processor)


def test_metrics_count_the_requests_sent_and_ready_is_apart_from_health(tiny, tiny_model_dir, tmp_path):
    with ServerProcess(["--model", str(tiny_model_dir), "--log-json"], tmp_path / "serve.log", NO_KEY) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(4):
                assert http.post("/v1/embeddings", json={"input": f"text {i}"}).status_code == 200
            assert http.post("/v1/embeddings", json={"input": ["a", "b", "c"]}).status_code == 200
            for body in ({"input": []}, {"input": "a", "colour": "red"}):
                assert http.post("/v1/embeddings", json=body).status_code == 400
            for _ in range(3):
                assert http.get("/health").status_code == 200
            ready = http.get("/ready")
            assert ready.status_code == 200 and ready.json()["ready"] is True and "index" not in ready.json()
            assert http.post("/search", json={"text": "a"}).status_code == 404  # no index
            sizes = http.get("/health").json()["batch_sizes"]
        samples = scrape(server.url)
        assert requests_of(samples, "/v1/embeddings", 200) == 5
        assert requests_of(samples, "/v1/embeddings", 400) == 2
        assert requests_of(samples, "/health", 200) == 1 + 3 + 1  # ServerProcess's probe, the loop's, the last
        assert requests_of(samples, "/ready", 200) == 1 and requests_of(samples, "/search", 404) == 1
        assert samples[("ret2_request_duration_seconds_count", (("route", "/v1/embeddings"),))] == 7
        assert samples[("ret2_inputs_encoded_total", ())] == 4 + 3
        assert samples[("ret2_batch_inputs_count", ())] == sum(sizes.values())
        assert samples[("ret2_batch_inputs_sum", ())] == 7
        assert samples[("ret2_queue_wait_seconds_count", ())] == 5
        assert samples[("ret2_queue_inputs", ())] == 0 and samples[("ret2_inputs_in_flight", ())] == 0
        assert requests_of(scrape(server.url), "/metrics", 200) == 1  # the first scrape, counted once answered
    logged = [json.loads(line[line.index("{"):]) for line in server.output().splitlines() if '"path"' in line]
    assert [(e["method"], e["path"], e["status"]) for e in logged if e["path"] == "/v1/embeddings"] == (
        [("POST", "/v1/embeddings", 200)] * 5 + [("POST", "/v1/embeddings", 400)] * 2)  # fmt: skip
    assert all(isinstance(e["ms"], float) and e["client"] == "127.0.0.1" for e in logged)


async def _overload(url: str, requests: int, clients: int) -> list[httpx.Response]:
    """`requests` embedding requests of 4 inputs each from `clients` concurrent clients; the responses."""
    queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait({"input": [f"red circle {i}", "blue star", "green square", "left top"]})
    responses = []

    async def client():
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while not queue.empty():
                responses.append(await http.post("/v1/embeddings", json=queue.get_nowait()))

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), timeout=240)
    return responses


def test_past_max_queue_only_200s_and_429s_and_a_healthy_server_after(tiny, tiny_model_dir, tmp_path):
    args = ["--model", str(tiny_model_dir), "--max-queue", "8", "--max-batch-size", "4", "--max-wait-ms", "20"]
    with ServerProcess(args, tmp_path / "serve.log", NO_KEY) as server:
        responses = asyncio.run(_overload(server.url, requests=400, clients=48))
        statuses = [r.status_code for r in responses]
        assert len(statuses) == 400 and set(statuses) == {200, 429}, sorted(set(statuses))
        refused = [r for r in responses if r.status_code == 429]
        for r in refused:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error" and "max_queue=8" in r.json()["error"]["message"]
        assert all(len(r.json()["data"]) == 4 for r in responses if r.status_code == 200)

        samples = scrape(server.url)
        assert requests_of(samples, "/v1/embeddings", 429) == len(refused)
        assert requests_of(samples, "/v1/embeddings", 200) == 400 - len(refused)
        assert samples[("ret2_inputs_shed_total", (("reason", "queue_full"),))] == 4 * len(refused)
        assert samples[("ret2_inputs_encoded_total", ())] == 4 * (400 - len(refused))
        assert samples[("ret2_queue_inputs", ())] == 0 and samples[("ret2_inputs_in_flight", ())] == 0
        # served normally once the load falls
        assert httpx.get(server.url + "/ready").json()["queued_inputs"] == 0
        response = httpx.post(server.url + "/v1/embeddings", json={"input": ["red circle", "blue star"]})
        np.testing.assert_allclose([d["embedding"] for d in response.json()["data"]],
                                   encode(tiny, ["red circle", "blue star"]), atol=1e-4)  # fmt: skip
    assert "Traceback" not in server.output()


def test_a_passed_deadline_gives_503_and_a_gone_client_is_not_encoded(tiny_model_dir, tmp_path):
    """Each request waits 1.5 s in the batcher for others (--max-wait-ms 1500): past --request-timeout 0.5 it gets
    503; a client that closes its connection after 0.1 s is dropped from the queue. Neither is ever encoded."""
    args = ["--model", str(tiny_model_dir), "--max-wait-ms", "1500", "--request-timeout", "0.5"]
    with ServerProcess(args, tmp_path / "serve.log", NO_KEY) as server:
        started = time.monotonic()
        response = httpx.post(server.url + "/v1/embeddings", json={"input": ["a", "b"]}, timeout=30)
        assert (response.status_code, int(response.headers["Retry-After"]) >= 1) == (503, True)
        assert "request_timeout=0.5" in response.json()["error"]["message"]
        assert time.monotonic() - started < 1.4  # answered at the deadline, not after the batch's wait

        body = json.dumps({"input": ["c", "d", "e"]}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            connection.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            time.sleep(0.1)
        time.sleep(2.0)  # past the batch's wait: the batch it would have joined has formed
        samples = scrape(server.url)
        assert samples[("ret2_inputs_shed_total", (("reason", "deadline"),))] == 2
        assert samples[("ret2_inputs_shed_total", (("reason", "client_gone"),))] == 3
        assert samples.get(("ret2_inputs_encoded_total", ()), 0) == 0
        assert requests_of(samples, "/v1/embeddings", 503) == 1 and requests_of(samples, "/v1/embeddings", 499) == 1
        assert samples[("ret2_inputs_in_flight", ())] == 0
