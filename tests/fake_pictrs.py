"""A small fake of pict-rs's *internal* HTTP API on loopback (pict-rs cannot run here).

It follows the documented interface only (docs: pictrs-lemmy reference, "pict-rs HTTP API"):
``X-Api-Token`` header, 401 on a wrong key, ``{"msg": .., "code": ..}`` error bodies, and
``GET /internal/identifier``, ``GET /internal/aliases``, ``POST /internal/purge``. Unknown
paths answer 404 with no body, as a pict-rs without an API key configured would.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class FakePictrs:
    def __init__(self, key: str, files: dict[str, list[str]]) -> None:
        """``files``: identifier -> aliases (the first alias's hash owns them all)."""
        self.key = key
        self.files = {k: list(v) for k, v in files.items()}
        self.requests: list[tuple[str, str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def _send(self, status: int, body: dict | None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                fake.requests.append((method, parts.path, q))
                routes = {("GET", "/internal/identifier"), ("GET", "/internal/aliases"),
                          ("POST", "/internal/purge")}
                if (method, parts.path) not in routes:
                    return self._send(404, None)
                if self.headers.get("X-Api-Token") != fake.key:
                    return self._send(401, {"msg": "Invalid API key", "code": "invalid-api-key"})
                alias = q.get("alias")
                if not alias:
                    return self._send(400, {"msg": "Missing alias", "code": "invalid-query"})
                ident = next((i for i, al in fake.files.items() if alias in al), None)
                if ident is None:
                    return self._send(404, {"msg": "Requested alias does not exist",
                                            "code": "not-found"})
                if parts.path == "/internal/identifier":
                    return self._send(200, {"msg": "ok", "identifier": ident})
                if parts.path == "/internal/aliases":
                    return self._send(200, {"msg": "ok", "aliases": fake.files[ident]})
                gone = fake.files.pop(ident)
                return self._send(200, {"msg": "ok", "aliases": gone})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> "FakePictrs":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.requests if p == path)
