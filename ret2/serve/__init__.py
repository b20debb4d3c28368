"""ret2-serve: ReT-2 as a service, in three small parts over one model or index folder.

- `inputs`: reading requests (the OpenAI embedding request, the search request, images given inline) and the limits;
- `batching`: `DynamicBatcher`, which coalesces concurrent requests into batches of the model's one-call `encode`;
- `metrics`: what `GET /metrics` reports (prometheus-client);
- `app`: `Service` (what is served) and `create_app`, the FastAPI app: `POST /v1/embeddings`, `POST /search`,
  `GET /images/...`, `GET /thumbnails/...`, `GET /health`, `GET /ready`, `GET /metrics` and the search page
  (`page.html`) at `GET /`.

The command is `ret2-serve` (`python -m ret2.serve`); it needs the `serve` extra. Guide: docs/serving.md.
"""
