"""The ret2-serve application (FastAPI): `/v1/embeddings`, `/search`, `/images/...`, `/health` and the search page.

`Service` holds what a server serves (the model, or an index and its model, the batcher, the limits, the key);
`create_app(service)` returns the ASGI app. The `Guard` middleware in front of it checks the API key, refuses bodies
over the limit while they arrive, and logs one line per request (method, path, status, time; no payload, no key).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from .batching import DynamicBatcher
from .inputs import Limits, RequestError, parse_embedding_request, parse_json, parse_search_request

logger = logging.getLogger("ret2.serve")

OPEN_PATHS = ("/", "/health")  # answered without the key: the page asks for it, a load balancer probes health


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

    def encode(self, samples: list, side: str) -> np.ndarray:
        """(N, D) float32 embeddings of (text, PIL image) samples: the model's one-call `encode`."""
        return self.model.encode(samples, kind=side, processor=self.processor, batch_size=self.max_batch_size,
                                 show_progress_bar=False, image_orientation=self.image_orientation)  # fmt: skip

    def count_tokens(self, samples: list) -> int:
        """Text tokens of the samples as they are encoded (cut at the processor's limit, `ret2.model.text_limit`):
        `usage`."""
        texts = [text for text, _ in samples if text]
        if not texts:
            return 0
        from ret2.model import text_limit

        ids = self.processor.tokenizer(texts, truncation=True, max_length=text_limit(self.processor))["input_ids"]
        return sum(map(len, ids))


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """An OpenAI-style error body: `{"error": {"message", "type", "code"}}`."""
    kind = "authentication_error" if status == 401 else "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers)


class Guard:
    """ASGI middleware: the API key, the body size limit, one log line per request."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
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
            client = scope.get("client") or ("-", 0)
            logger.info("%s %s %s %d %.1f ms", client[0], method, path, status[0], 1000 * (time.perf_counter() - start))

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
    batcher = DynamicBatcher(service.encode, service.max_batch_size, service.max_wait)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the first encode pays one-time costs (about 2 s on CPU here): paid before the first request, not by it
        await asyncio.to_thread(service.encode, [("warm up", None)], "query")
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="ret2-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.batcher = service, batcher
    app.add_middleware(Guard, service=service)
    page = resources.files("ret2.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError):
        return error_response(err.status, err.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception):
        logger.exception("request %s %s failed", request.method, request.url.path)
        return error_response(500, f"the server failed on this request: {type(err).__name__}: {err}")

    @app.get("/health")
    async def health():
        sizes = {str(size): n for size, n in sorted(batcher.batch_sizes.items())}
        return {"status": "ok", "model": service.name, "index": service.index is not None, "batch_sizes": sizes}

    @app.get("/", response_class=HTMLResponse)
    async def search_page():
        return page

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = parse_json(await request.body())
        parsed = await asyncio.to_thread(parse_embedding_request, body, service.limits, service.dim,
                                         service.image_orientation, service.input_image_root)  # fmt: skip
        vectors = await batcher.submit(parsed.samples, parsed.input_type)
        if parsed.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = [v.tolist() for v in vectors]
        tokens = service.count_tokens(parsed.samples)
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
        parsed = await asyncio.to_thread(parse_search_request, body, service.limits, ENGINES,
                                         service.image_orientation, service.input_image_root)  # fmt: skip
        vectors = await batcher.submit([parsed.sample], "query")
        # the query rounded to fp16 like the stored documents, as `Ret2Index.search` does
        try:
            scores, rows = await asyncio.to_thread(index.search_embeddings, vectors.astype(np.float16), parsed.k,
                                                   parsed.engine)  # fmt: skip
        except ValueError as err:  # an engine the index has not built
            raise RequestError(400, str(err)) from None
        hits = await asyncio.to_thread(index.hits, scores, rows)
        return {"hits": [_hit_json(hit, index.image_root) for hit in hits[0]]}

    @app.get("/images/{path:path}")
    async def image(path: str):
        if service.index is None:
            raise HTTPException(404, "this server has no index: no images are served")
        root = Path(service.index.image_root).resolve()
        file = (root / path).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            raise HTTPException(404, f"no image {path!r} under the index's image root")
        return FileResponse(file)

    return app


def _hit_json(hit, image_root: Path) -> dict:
    url = None
    if hit.image_path is not None:
        root, path = Path(image_root).resolve(), Path(hit.image_path).resolve()
        if path.is_relative_to(root):
            url = "/images/" + quote(path.relative_to(root).as_posix())
    return {"id": hit.id, "score": hit.score, "text": hit.text, "metadata": hit.metadata, "image_url": url}
