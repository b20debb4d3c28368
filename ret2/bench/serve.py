"""ret2-serve under load: requests/s and latency for one client and for many concurrent clients, and the batch sizes
the dynamic batcher formed.

    python -m ret2.bench.serve                                  # a tiny model, 1 and 32 clients, 2,000 requests each
    python -m ret2.bench.serve --model runs/demo/seed-42/ret2-model --modality text+image
    python -m ret2.bench.serve --url http://127.0.0.1:8000     # a server already running (started by you)

Each request is one `POST /v1/embeddings` of one input (a short caption, a 64x64 image, or both). The one-client row
sends its requests one after another; the concurrent row runs `--clients` clients at once (asyncio + httpx, one
connection each) until `--requests` are answered. The server runs in its own process (`--max-batch-size`,
`--max-wait-ms`, torch threads from $OMP_NUM_THREADS), the clients in this one, on the same machine. A request that
fails or answers anything but 200 is counted, never retried; the command exits 1 if any did.
"""

from __future__ import annotations

import asyncio
import base64
import io
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from ret2.commands._common import ArgumentParser, run_cli

MODALITIES = ("text", "image", "text+image")
WORDS = "red green blue yellow circle square triangle star left right top bottom small big".split()


def request_bodies(n: int, modality: str) -> list[dict]:
    """`n` different one-input embedding requests."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    bodies = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, 6))
        image = None
        if modality != "text":
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, format="PNG")
            image = base64.b64encode(out.getvalue()).decode()
        item = text if modality == "text" else {"image": image} if modality == "image" else {"text": text, "image": image}
        bodies.append({"model": "ret2", "input": [item], "encoding_format": "base64"})
    return bodies


async def drive(url: str, bodies: list[dict], clients: int, api_key: str | None = None) -> dict:
    """Send `bodies` from `clients` concurrent clients; latencies (s) of the answered ones, failures, wall time."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    queue = list(reversed(bodies))
    latencies, failures = [], Counter()

    async def client():
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120,
                                     limits=httpx.Limits(max_connections=1)) as http:  # fmt: skip
            while queue:
                body = queue.pop()
                start = time.perf_counter()
                try:
                    response = await http.post("/v1/embeddings", json=body)
                except httpx.HTTPError as err:
                    failures[type(err).__name__] += 1
                    continue
                if response.status_code == 200 and len(response.json()["data"]) == len(body["input"]):
                    latencies.append(time.perf_counter() - start)
                else:
                    failures[f"HTTP {response.status_code}"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {"latencies": latencies, "failures": dict(failures), "seconds": time.perf_counter() - start}


def batch_sizes(url: str) -> Counter:
    """Batches formed so far, by size (the server's `/health`, which needs no key)."""
    health = httpx.get(url + "/health", timeout=30).json()
    return Counter({int(size): n for size, n in health["batch_sizes"].items()})


def run_case(url: str, bodies: list[dict], clients: int, api_key: str | None) -> dict:
    before = batch_sizes(url)
    result = asyncio.run(drive(url, bodies, clients, api_key))
    formed = batch_sizes(url) - before
    latencies = sorted(result["latencies"])
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "clients": clients, "requests": len(bodies), "ok": len(latencies), "failures": result["failures"],
        "requests_per_s": len(latencies) / result["seconds"], "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98],
        "batches": sum(formed.values()), "mean_batch": sum(s * n for s, n in formed.items()) / max(1, sum(formed.values())),
        "max_batch": max(formed, default=0), "batch_sizes": dict(sorted(formed.items())),
    }  # fmt: skip


def render(rows: list[dict]) -> str:
    lines = ["| clients | requests | failed | requests/s | p50 ms | p99 ms | batches | mean batch | max batch |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['requests'] - r['ok']} | {r['requests_per_s']:.1f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['batches']} | {r['mean_batch']:.1f} | "
                     f"{r['max_batch']} |")  # fmt: skip
    if len(rows) == 2 and rows[0]["requests_per_s"] > 0:
        lines.append(f"\n{rows[1]['clients']} clients / 1 client throughput: "
                     f"{rows[1]['requests_per_s'] / rows[0]['requests_per_s']:.1f}x (goal: at least 3x)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=None, help="a running server to drive (default: start one on loopback)")
    parser.add_argument("--model", default=None, help="model to serve (default: a tiny random ReT-2 built here)")
    parser.add_argument("--api-key", default=None, help="the key of the server at --url, if it has one")
    parser.add_argument("--modality", choices=MODALITIES, default="text", help="what each request holds")
    parser.add_argument("--requests", type=int, default=2000, help="requests in each row")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients of the second row")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the started server's --max-batch-size")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the started server's --max-wait-ms")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.clients < 1:
        parser.error(f"--requests {args.requests} must be at least 2 and --clients {args.clients} at least 1")
    bodies = request_bodies(args.requests, args.modality)
    if args.url is not None:
        rows = [run_case(args.url, bodies, c, args.api_key) for c in (1, args.clients)]
    else:
        from ret2.serve.process import ServerProcess

        with tempfile.TemporaryDirectory() as tmp:
            model = args.model or _save_tiny_model(Path(tmp) / "tiny")
            flags = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
            with ServerProcess(["--model", str(model), *flags], Path(tmp) / "serve.log", {"RET2_API_KEY": ""}) as s:
                rows = [run_case(s.url, bodies, c, None) for c in (1, args.clients)]
    print(render(rows))
    failed = {k: v for r in rows for k, v in r["failures"].items()}
    if failed:
        print(f"failed requests: {failed}")
    return 1 if failed else 0


def _save_tiny_model(folder: Path) -> Path:
    """The tests' tiny ReT-2 (CLIP towers of width 32, depth 4; random, seeded) saved to `folder`."""
    from ret2.tiny import tiny_model_and_processor

    model, processor = tiny_model_and_processor(WORDS, seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    run_cli(main)
