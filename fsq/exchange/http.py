"""The /.well-known/fsq/ routes (Starlette), for `fsq attest serve` or any fsq server.

    GET /.well-known/fsq/keys.json                      the instance's public signing key(s)
    GET /.well-known/fsq/attestations?since=N&limit=M   JSON lines, then an end record

Read-only: each request opens the state database itself, reads published statements and
closes it; nothing a client sends is written anywhere. The feed holds only what
fsq.exchange.publish signed (digests, verdicts, methods, times), so these routes can be
exposed to the internet; the pict-rs validation endpoints are a different server.
Mount them elsewhere with ``routes(...)``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fsq.exchange import publish
from fsq.ledger.db import connect

log = logging.getLogger("fsq.exchange")

_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def routes(db_path: str, public_key: Ed25519PublicKey, instance: str | None, *,
           include_model: Callable[[], bool] | bool = False) -> list[Any]:
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    keys_doc = publish.keys_document(public_key, instance)
    model = include_model if callable(include_model) else (lambda: bool(include_model))

    def keys(request: Any) -> Any:
        return JSONResponse(keys_doc, headers=_HEADERS)

    def attestations(request: Any) -> Any:
        since_t = request.query_params.get("since", "0")
        limit_t = request.query_params.get("limit", str(publish.FEED_PAGE_MAX))
        if not (since_t.isdigit() and len(since_t) <= 18 and limit_t.isdigit()
                and len(limit_t) <= 6):
            return PlainTextResponse("since and limit are whole numbers\n", status_code=400,
                                     headers=_HEADERS)
        conn = connect(db_path, create=False)
        try:
            records, cursor, more = publish.feed_page(conn, since=int(since_t),
                                                      limit=max(1, int(limit_t)),
                                                      include_model=model())
        finally:
            conn.close()
        body = b"".join(publish.feed_lines(records, cursor, more))
        return Response(body, media_type="application/x-ndjson",
                        headers={**_HEADERS, "X-Fsq-Cursor": str(cursor)})

    return [Route("/.well-known/fsq/keys.json", keys, methods=["GET"]),
            Route("/.well-known/fsq/attestations", attestations, methods=["GET"])]


def create_app(db_path: str, public_key: Ed25519PublicKey, instance: str | None, *,
               include_model: bool = False) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def healthz(request: Any) -> Any:
        return PlainTextResponse("ok\n", headers=_HEADERS)

    return Starlette(routes=[*routes(db_path, public_key, instance,
                                     include_model=include_model),
                             Route("/healthz", healthz, methods=["GET"])])


def serve_forever(app: Any, host: str, port: int) -> None:
    """uvicorn on a pre-bound socket (a busy port is a one-line error), until SIGTERM/SIGINT."""
    import signal

    import uvicorn

    from fsq.server.validate import bind_socket
    sock = bind_socket(host, port)
    fsq_log = logging.getLogger("fsq")
    uv = logging.getLogger("uvicorn")
    for h in fsq_log.handlers:
        uv.addHandler(h)
    uv.setLevel(fsq_log.level or logging.INFO)
    uv.propagate = False
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                            server_header=False, ws="none", proxy_headers=False,
                            timeout_keep_alive=10, limit_concurrency=64)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    log.info("publishing attestations at http://%s:%d/.well-known/fsq/", shown,
             sock.getsockname()[1])
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
