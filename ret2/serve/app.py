"""The ret2-serve application (FastAPI): `/v1/embeddings`, `/search`, `/images/...`, `/health`, `/ready`, `/metrics`
and the search page.

`Service` holds what a server serves (the model, or an index and its model, the batcher's settings, the limits, the
key); `create_app(service)` returns the ASGI app. The `Guard` middleware in front of it checks the API key, refuses
bodies over the limit while they arrive, counts every request in the metrics and logs one line per request (client,
method, path, status, time; no payload, no key), as text or JSON.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import hashlib
import hmac
import io
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
from fastapi import FastAPI, Request
from PIL import Image, ImageOps
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from modeling_ret2 import truncate_embeddings

from .batching import ClientGone, DeadlineExceeded, DynamicBatcher, Overloaded
from .inputs import (
    Limits, RequestError, parse_delete, parse_documents, parse_embedding_request, parse_json, parse_search_request,
)  # fmt: skip
from .metrics import Metrics, route_of

logger = logging.getLogger("ret2.serve")

OPEN_PATHS = ("/", "/health", "/ready")  # answered without the key: the page asks for it, load balancers probe
CLIENT_GONE = 499  # the status logged and counted for a request whose client closed its connection (nginx's)


@dataclass
class Service:
    """What one server serves.

    Attributes:
        model, processor: the ReT-2 model (eval mode) and its processor.
        name: the model's name or path, returned as `model` in embedding responses.
        index: a `Ret2Index` for `/search` and `/images/`, or None (embeddings only).
        image_orientation: how uploaded images are read ("upright": by their EXIF orientation; "stored").
        limits: what one request may hold.
        api_key: the key every request but `/` and `/health` must send as `Authorization: Bearer <key>`, or None.
        input_image_root: a folder whose files requests may name as images by relative path (None: paths refused).
        max_batch_size, max_wait: the batcher's most inputs per batch and how long (s) a batch waits for more.
        max_queue: most inputs waiting to be encoded (None: no limit); a request past it gets 429 at once.
        request_timeout: seconds a request may take (None: no limit); past it, 503 and its inputs are not encoded.
        json_logs: log each request as one JSON object per line instead of text.
        allow_writes: with an index, `POST /documents` (upsert) and `POST /documents/delete` change it (the server
            then needs an API key, loopback included); without, they answer 403.
    """

    model: object
    processor: object
    name: str
    index: object | None = None
    image_orientation: str = "upright"
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    input_image_root: Path | None = None
    max_batch_size: int = 32
    max_wait: float = 0.005
    max_queue: int | None = None
    request_timeout: float | None = None
    json_logs: bool = False
    allow_writes: bool = False
    _counting: object = field(init=False, repr=False)  # (tokenizer, lock) of `count_tokens`
    _model_lock: object = field(init=False, repr=False)  # held by a batch's encoding and by a write's

    def __post_init__(self):
        # A fast tokenizer keeps its padding and truncation settings on the one Rust object it calls: usage's count,
        # in a worker thread beside the encoding batch, gets a copy of its own, so it never unpads a batch mid-call.
        self._counting = (copy.deepcopy(self.processor.tokenizer), threading.Lock())
        # A write encodes its documents with the same model and processor as the batches: one at a time.
        self._model_lock = threading.Lock()
        if self.allow_writes and (self.index is None or not self.api_key):
            raise ValueError("writes (--allow-writes) need --index and an API key (--api-key or $RET2_API_KEY), "
                             "even on a loopback address")  # fmt: skip

    @classmethod
    def from_model(cls, name_or_path: str, device: str = "cpu", **kwargs) -> Service:
        from ret2.model import load_model_and_processor

        model, processor = load_model_and_processor(name_or_path, device)
        return cls(model, processor, name_or_path, **kwargs)

    @classmethod
    def from_index(cls, folder: str | Path, device: str | None = None, **kwargs) -> Service:
        from ret2.index import Ret2Index

        index = Ret2Index.open(folder, device=device)
        index.embeddings()  # memory-maps the shards now, not in the first request
        name = index.meta["model"]["name_or_path"]
        return cls(index.model, index.processor, name, index, index.image_orientation, **kwargs)

    @property
    def dim(self) -> int:
        return self.model.config.embedding_dim

    @property
    def sizes(self) -> tuple[int, ...]:
        """The embedding sizes a request's `dimensions` may ask for: the full size and the model's Matryoshka sizes
        (`config.matryoshka_dims`, those it was trained for), largest first."""
        return tuple(sorted({self.dim, *(self.model.config.matryoshka_dims or ())}, reverse=True))

    def encode(self, samples: list, side: str) -> np.ndarray:
        """(N, D) float32 embeddings of (text, PIL image) samples: the model's one-call `encode`."""
        with self._model_lock:
            return self.model.encode(samples, kind=side, processor=self.processor, batch_size=self.max_batch_size,
                                     show_progress_bar=False, image_orientation=self.image_orientation)  # fmt: skip

    def upsert(self, documents: list) -> dict:
        """Upsert request documents into the index: uploaded images saved under `<index>/uploads/` by their content's
        hash (PNG), then `Ret2Index.upsert` (encoding under the model lock)."""
        uploads = self.index.folder / "uploads"
        uploads.mkdir(exist_ok=True)
        records = []
        for doc in documents:
            image = None
            if doc.image is not None:
                data = io.BytesIO()
                doc.image.save(data, "PNG")
                image = f"{hashlib.sha256(data.getvalue()).hexdigest()[:32]}.png"
                if not (uploads / image).exists():
                    (uploads / image).write_bytes(data.getvalue())
            records.append({"id": doc.id, "text": doc.text, "image": image, **doc.metadata})
        with self._model_lock:
            return self.index.upsert(records, image_root=uploads)

    def delete(self, ids: list[str] | None, filter: dict | None) -> int:
        with self._model_lock:
            return self.index.delete(ids) if ids is not None else self.index.delete_where(filter)

    def count_tokens(self, samples: list) -> int:
        """Text tokens of the samples as they are encoded (cut at the processor's limit, `ret2.model.text_limit`):
        `usage`."""
        texts = [text for text, _ in samples if text]
        if not texts:
            return 0
        from ret2.model import text_limit

        tokenizer, lock = self._counting
        with lock:
            ids = tokenizer(texts, truncation=True, max_length=text_limit(self.processor))["input_ids"]
        return sum(map(len, ids))


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """An OpenAI-style error body: `{"error": {"message", "type", "code"}}`."""
    kind = ("authentication_error" if status == 401 else "rate_limit_error" if status == 429
            else "invalid_request_error" if status < 500 else "server_error")  # fmt: skip
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers)


class Guard:
    """ASGI middleware: the API key, the body size limit, one log line per request."""

    def __init__(self, app, service: Service, metrics: Metrics):
        self.app, self.service, self.metrics = app, service, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), [500]
        scope["ret2.start"] = start  # a request's deadline counts from its arrival
        path, method = scope["path"], scope["method"]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
                return
            limit, received = self.service.limits.max_body_bytes, 0

            async def receive_limited():
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit:  # a body sent without Content-Length: refused while it arrives
                    raise RequestError(413, f"the request body is over the limit max_body_bytes={limit}")
                return message

            await self.app(scope, receive_limited, send_logged)
        finally:
            seconds, code = time.monotonic() - start, scope.get("ret2.status", status[0])
            route = route_of(path)
            self.metrics.requests.labels(route, str(code)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            client = (scope.get("client") or ("-", 0))[0]
            if self.service.json_logs:
                logger.info(json.dumps({"time": time.time(), "client": client, "method": method, "path": path,
                                        "status": code, "ms": round(1000 * seconds, 1)}))  # fmt: skip
            else:
                logger.info("%s %s %s %d %.1f ms", client, method, path, code, 1000 * seconds)

    def _refusal(self, scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        key = self.service.api_key
        if key is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                      {"WWW-Authenticate": "Bearer"})  # fmt: skip
        length = headers.get(b"content-length")
        limit = self.service.limits.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return error_response(413, f"the request body is over the limit max_body_bytes={limit}")
        return None


def create_app(service: Service) -> FastAPI:
    """The ASGI app serving `service`."""
    metrics = Metrics()
    batcher = DynamicBatcher(service.encode, service.max_batch_size, service.max_wait, service.max_queue, metrics)
    ready = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the first encode pays one-time costs (about 2 s on CPU here): paid before the first request, not by it
        await asyncio.to_thread(service.encode, [("warm up", None)], "query")
        await batcher.start()
        ready["ready"] = True
        yield
        ready["ready"] = False  # stopping: a load balancer probing /ready sends no more
        await batcher.stop()

    app = FastAPI(title="ret2-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)
    app.state.service, app.state.batcher, app.state.metrics = service, batcher, metrics
    app.add_middleware(Guard, service=service, metrics=metrics)

    def deadline_of(request: Request) -> float | None:
        if service.request_timeout is None:
            return None
        return request.scope.get("ret2.start", time.monotonic()) + service.request_timeout

    async def disconnected(request: Request) -> None:
        """Completes when the client closes its connection (the body is read: what comes next is the disconnect)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def encoded(request: Request, samples: list, side: str) -> np.ndarray:
        """The batcher's embeddings of a request's samples, within its deadline, dropped if its client goes."""
        deadline = deadline_of(request)
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded()
        return await batcher.submit(samples, side, deadline, disconnected(request))
    page = resources.files("ret2.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError):
        return error_response(err.status, err.message)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, err: Overloaded):
        return error_response(429, str(err), {"Retry-After": str(err.retry_after)})

    @app.exception_handler(DeadlineExceeded)
    async def too_late(request: Request, err: DeadlineExceeded):
        message = f"the request was not answered within request_timeout={service.request_timeout} s (server busy)"
        return error_response(503, message + "; retry later", {"Retry-After": str(batcher.retry_after())})

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone):
        request.scope["ret2.status"] = CLIENT_GONE  # nobody reads the answer; the log and metrics say why
        return error_response(400, "the client closed its connection before the answer")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception):
        logger.exception("request %s %s failed", request.method, request.url.path)
        return error_response(500, f"the server failed on this request: {type(err).__name__}: {err}")

    @app.get("/health")
    async def health():
        """Alive: the process answers (the model may still be loading or the server stopping; see /ready)."""
        sizes = {str(size): n for size, n in sorted(batcher.batch_sizes.items())}
        return {"status": "ok", "model": service.name, "index": service.index is not None, "batch_sizes": sizes}

    @app.get("/ready")
    async def readiness():
        """Ready for traffic: the model loaded and warmed up, the batcher running, the index (if any) open; 503 else."""
        body = {"ready": ready["ready"], "model": service.name, "queued_inputs": batcher.queued,
                "max_queue": service.max_queue}  # fmt: skip
        if service.index is not None:
            service.index.refresh()  # the index as it is now, writes by other processes included
            body["index"] = {"folder": str(service.index.folder), "documents": service.index.documents,
                             "revision": service.index.storage.revision, "writes": service.allow_writes}  # fmt: skip
        return JSONResponse(body, 200 if ready["ready"] else 503)

    @app.get("/metrics")
    async def prometheus_metrics():
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    @app.get("/", response_class=HTMLResponse)
    async def search_page():
        return page

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = parse_json(await request.body())
        batcher.check_room(len(body["input"]) if isinstance(body.get("input"), list) else 1)  # 429 before decoding
        parsed = await asyncio.to_thread(parse_embedding_request, body, service.limits, service.sizes,
                                         service.image_orientation, service.input_image_root)  # fmt: skip
        # usage's token count runs in a thread while the batch encodes, not on the event loop that reads requests
        counting = asyncio.ensure_future(asyncio.to_thread(service.count_tokens, parsed.samples))
        try:
            vectors = await encoded(request, parsed.samples, parsed.input_type)
        except BaseException:
            counting.cancel()
            raise
        if parsed.dimensions is not None and parsed.dimensions != service.dim:
            # the batch was encoded at full size: each prefix re-normalised as `encode(..., truncate_dim=)` does
            vectors = truncate_embeddings(torch.from_numpy(vectors), parsed.dimensions).numpy()
        if parsed.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = [v.tolist() for v in vectors]
        tokens = await counting
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": service.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/search")
    async def search(request: Request):
        index = service.index
        if index is None:
            raise HTTPException(404, "this server has no index: start it with --index FOLDER to search")
        from ret2.index import ENGINES

        body = parse_json(await request.body())
        batcher.check_room(1)
        parsed = await asyncio.to_thread(parse_search_request, body, service.limits, ENGINES,
                                         service.image_orientation, service.input_image_root)  # fmt: skip
        vectors = None
        if parsed.mode != "keyword":
            # the query rounded to fp16 like the stored documents, as `Ret2Index.search` does
            vectors = (await encoded(request, [parsed.sample], "query")).astype(np.float16).astype(np.float32)
        texts = [parsed.sample[0]] if parsed.mode != "vector" else None
        try:  # follows writes by other processes (`refresh`), filters before the top k
            hits = await asyncio.to_thread(index.search_encoded, vectors, parsed.k, texts, engine=parsed.engine,
                                           filter=parsed.filter, mode=parsed.mode, fusion=parsed.fusion,
                                           weights=parsed.weights)  # fmt: skip
        except ValueError as err:  # an engine the index has not built, a filter on metadata it cannot compare
            raise RequestError(400, str(err)) from None
        roots = image_roots(index)
        return {"hits": [_hit_json(hit, roots) for hit in hits[0]]}

    def writable():
        if service.index is None:
            raise HTTPException(404, "this server has no index: start it with --index FOLDER")
        if not service.allow_writes:
            raise RequestError(403, "this server does not change its index: start ret2-serve with --allow-writes "
                                    "(and an API key) to upsert and delete documents")  # fmt: skip

    @app.post("/documents")
    async def upsert_documents(request: Request):
        """Upsert documents (id, text, image as base64, metadata): the next search sees them."""
        writable()
        body = parse_json(await request.body())
        documents = await asyncio.to_thread(parse_documents, body, service.limits, service.image_orientation)
        counts = await asyncio.to_thread(service.upsert, documents)
        metrics.writes.labels("upsert").inc(len(documents))
        return {**counts, "documents": service.index.documents, "revision": service.index.storage.revision}

    @app.post("/documents/delete")
    async def delete_documents(request: Request):
        """Delete documents by `ids` or by a metadata `filter`: the next search no longer returns them."""
        writable()
        ids, filter_ = parse_delete(parse_json(await request.body()))
        try:
            deleted = await asyncio.to_thread(service.delete, ids, filter_)
        except ValueError as err:  # ids not in the index, named
            raise RequestError(404, str(err)) from None
        metrics.writes.labels("delete").inc(deleted)
        return {"deleted": deleted, "documents": service.index.documents, "revision": service.index.storage.revision}

    def indexed_file(number: str, path: str) -> Path:
        """The file `path` under the index's image root number `number`; 404 for anything outside the roots."""
        if service.index is None:
            raise HTTPException(404, "this server has no index: no images are served")
        roots = image_roots(service.index)
        if not number.isdigit() or int(number) >= len(roots):
            raise HTTPException(404, f"no image root {number!r}: the index has {len(roots)}")
        root = roots[int(number)]
        file = (root / path).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            raise HTTPException(404, f"no image {path!r} under the index's image root {number}")
        return file

    @app.get("/images/{number}/{path:path}")
    async def image(number: str, path: str):
        return FileResponse(indexed_file(number, path))

    @app.get("/thumbnails/{number}/{path:path}")
    async def thumbnail(number: str, path: str):
        file = indexed_file(number, path)
        stat = file.stat()
        try:
            data = await asyncio.to_thread(make_thumbnail, str(file), stat.st_mtime_ns, stat.st_size,
                                           service.image_orientation)  # fmt: skip
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise HTTPException(404, f"image {path!r} could not be read ({err})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


THUMBNAIL_SIZE = 320  # pixels of a thumbnail's longer side (cards are 140 pixels high; twice that for dense screens)


@functools.lru_cache(maxsize=2048)
def make_thumbnail(file: str, mtime_ns: int, size: int, orientation: str = "upright") -> bytes:
    """A JPEG of the image at `file` no larger than THUMBNAIL_SIZE on its longer side, upright by its EXIF orientation
    unless `orientation` is "stored": what a browser can show of any format PIL reads (TIFF included). Kept in an LRU of
    2,048 thumbnails keyed by the file's path, modification time and size, so a changed file gets a new one."""
    with Image.open(file) as image:
        image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG: decoded at a reduced scale, not in full
        image = ImageOps.exif_transpose(image) if orientation == "upright" else image
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def image_roots(index) -> list[Path]:
    """The index's image roots, resolved: the build's first (number 0), then those of parts added from other folders,
    in the order they were added. Image URLs name a root by its number."""
    roots = [Path(index.image_root).resolve()]
    for part in index.storage.complete_parts:
        root = Path(part["image_root"]).resolve()
        if root not in roots:
            roots.append(root)
    return roots


def _hit_json(hit, roots: list[Path]) -> dict:
    image_url = thumbnail_url = None
    if hit.image_path is not None:
        path = Path(hit.image_path).resolve()
        for number, root in enumerate(roots):
            if path.is_relative_to(root):
                where = f"{number}/" + quote(path.relative_to(root).as_posix())
                image_url, thumbnail_url = "/images/" + where, "/thumbnails/" + where
                break
    return {"id": hit.id, "score": hit.score, "text": hit.text, "metadata": hit.metadata, "image_url": image_url,
            "thumbnail_url": thumbnail_url}
