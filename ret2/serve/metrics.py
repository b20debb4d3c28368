"""What `GET /metrics` reports, in the Prometheus text format (prometheus-client), one registry per app.

Names follow Prometheus' conventions (`_total` counters, `_seconds` histograms); text-embeddings-inference's
`te_queue_size` and `te_batch_next_size` are `ret2_queue_inputs` and `ret2_batch_inputs` here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ROUTES = ("/", "/health", "/ready", "/metrics", "/v1/embeddings", "/search", "/documents", "/documents/delete")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def route_of(path: str) -> str:
    """The label of a request path: one of `ROUTES`, `/images` and `/thumbnails` for every image, `other` for anything
    else (a label per path would let clients grow the metrics without bound)."""
    if path in ROUTES:
        return path
    if path.startswith(("/images/", "/thumbnails/")):
        return "/" + path.split("/")[1]
    return "other"


class Metrics:
    """The server's metrics: requests (by route and status), request latency and queue wait, the batcher's queue and
    batches, inputs encoded and in flight."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ret2_requests", "Requests answered, by route and HTTP status", ["route", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("ret2_request_duration_seconds", "Time from a request's arrival to its answer, "
                                 "by route", ["route"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queue_wait = Histogram("ret2_queue_wait_seconds", "Time a request's inputs waited in the batcher's "
                                    "queue before their batch started encoding", buckets=LATENCY_BUCKETS,
                                    registry=r)  # fmt: skip
        self.queue_inputs = Gauge("ret2_queue_inputs", "Inputs waiting in the batcher's queue", registry=r)
        self.batch_inputs = Histogram("ret2_batch_inputs", "Inputs per batch encoded", buckets=BATCH_BUCKETS,
                                      registry=r)
        self.inputs_encoded = Counter("ret2_inputs_encoded", "Inputs encoded", registry=r)
        self.inputs_in_flight = Gauge("ret2_inputs_in_flight", "Inputs submitted to the batcher and not yet "
                                      "answered (queued or encoding)", registry=r)  # fmt: skip
        self.shed = Counter("ret2_inputs_shed", "Inputs not encoded, by reason: queue_full (429), deadline (503), "
                            "client_gone", ["reason"], registry=r)  # fmt: skip
        self.writes = Counter("ret2_documents_written", "Documents upserted or deleted through the server, by operation",
                              ["operation"], registry=r)  # fmt: skip

    def exposition(self) -> tuple[bytes, str]:
        """The text format's body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
