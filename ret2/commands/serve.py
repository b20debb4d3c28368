"""`ret2-serve` (`python -m ret2.serve`): an OpenAI-compatible embedding server with dynamic batching; with an index, a search API and page.

    ret2-serve --model runs/demo/seed-42/ret2-model            # POST /v1/embeddings, /health, /ready, /metrics
    ret2-serve --index my-photos --port 8080                   # + POST /search, images, thumbnails, GET / (the page)
    ret2-serve --model M --max-queue 256 --request-timeout 10  # past 256 queued inputs 429, past 10 s 503

Binds 127.0.0.1 unless --host says otherwise; any other address needs an API key (--api-key or $RET2_API_KEY), and
then every request but /, /health and /ready must send `Authorization: Bearer <key>`. SIGTERM or Ctrl-C answers the
requests in flight, then exits. Guide: docs/serving.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from ret2.commands._common import ArgumentParser, configure_logging, run_cli
from ret2.commands.flags import add_device
from ret2.serve.inputs import Limits  # a dataclass of ints beside PIL: no torch

KEY_VARIABLE = "RET2_API_KEY"
LIMIT_HELP = {
    "max_body_bytes": "limit: bytes of a request body (413 above)",
    "max_items": "limit: inputs in one embedding request (422 above)",
    "max_text_chars": "limit: characters of one text (422 above)",
    "max_image_bytes": "limit: bytes of one image (413 above)",
    "max_image_pixels": "limit: pixels of one image, read from its header before decoding (413 above)",
    "max_k": "limit: results of one search (422 above)",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a ReT-2 folder or Hub id: serve embeddings")
    source.add_argument("--index", type=Path, help="a Ret2Index folder: serve embeddings with its model, search and the page")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; not loopback: needs an API key")
    parser.add_argument("--port", type=int, default=8000, help="port to bind")
    parser.add_argument("--api-key", default=None, help=f"the key requests must send (default: ${KEY_VARIABLE}, else none)")
    add_device(parser)
    parser.add_argument("--max-batch-size", type=int, default=32, help="most inputs per model batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch with")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="most inputs waiting to be encoded; a request past it gets 429 with Retry-After at once "
                             "(default: no limit)")  # fmt: skip
    parser.add_argument("--request-timeout", type=float, default=None,
                        help="seconds a request may take; past it, 503 and its inputs are not encoded (default: none)")
    parser.add_argument("--log-json", action="store_true", help="log each request as one JSON object per line")
    parser.add_argument("--allow-writes", action="store_true",
                        help="with --index: POST /documents upserts and POST /documents/delete deletes (needs an API "
                             "key, loopback included)")  # fmt: skip
    parser.add_argument("--image-root", type=Path, default=None,
                        help="a folder whose images requests may name by relative path (default: paths refused)")
    defaults = Limits()
    for name, what in LIMIT_HELP.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name), help=what)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("port", "max_batch_size", *LIMIT_HELP):
        if getattr(args, name) < (0 if name == "port" else 1):
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be positive")
    if args.max_wait_ms < 0:
        parser.error(f"--max-wait-ms {args.max_wait_ms} must be at least 0")
    if args.max_queue is not None and args.max_queue < 1:
        parser.error(f"--max-queue {args.max_queue} must be at least 1 input")
    if args.request_timeout is not None and args.request_timeout <= 0:
        parser.error(f"--request-timeout {args.request_timeout} must be positive seconds")
    return args


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); any other name or address is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(argv: list[str] | None = None) -> None:
    """Parse, check the address and key, load the model (or index) and serve until stopped."""
    args = parse_args(argv)
    api_key = args.api_key or os.environ.get(KEY_VARIABLE) or None
    if not is_loopback(args.host) and api_key is None:
        raise ValueError(f"--host {args.host} is not a loopback address: serving it needs an API key (--api-key or "
                         f"${KEY_VARIABLE}); without one, bind 127.0.0.1")  # fmt: skip
    if args.allow_writes and (args.index is None or api_key is None):
        raise ValueError("--allow-writes needs --index and an API key (--api-key or $RET2_API_KEY), even on a loopback "
                         "address: writes change the index for everyone who searches it")  # fmt: skip
    if args.image_root is not None and not args.image_root.is_dir():
        raise NotADirectoryError(f"--image-root {args.image_root} is not a folder")
    try:
        import uvicorn

        from ret2.serve.app import Service, create_app
    except ImportError as err:
        raise ImportError(f"ret2-serve needs the serve extra ({err}): pip install -e '.[serve]'") from None
    configure_logging()
    limits = Limits(**{name: getattr(args, name) for name in Limits.__dataclass_fields__})
    options = dict(limits=limits, api_key=api_key, input_image_root=args.image_root,
                   max_batch_size=args.max_batch_size, max_wait=args.max_wait_ms / 1000, max_queue=args.max_queue,
                   request_timeout=args.request_timeout, json_logs=args.log_json,
                   allow_writes=args.allow_writes)  # fmt: skip
    if args.index is not None:
        service = Service.from_index(args.index, args.device, **options)
    else:
        from ret2.model import default_device

        service = Service.from_model(args.model, args.device or default_device(), **options)
    # uvicorn handles SIGTERM and Ctrl-C: it stops accepting, answers the requests in flight, then runs the shutdown
    uvicorn.run(create_app(service), host=args.host, port=args.port, access_log=False, log_level="info")


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-serve`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
