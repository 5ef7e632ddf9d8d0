"""A small stand-in for Lemmy's HTTP API on loopback (Lemmy itself cannot run here).

Written from Lemmy's documented API (docs: ../shared/reference/pictrs-lemmy.md, "Lemmy API for
follow-up actions"; error bodies from Lemmy's crates/utils/src/error.rs), for both shapes:

* ``0.19``: ``GET /api/v3/site`` (with ``my_user`` when the Bearer token is valid),
  ``POST /api/v3/user/login``, ``/post/remove``, ``/comment/remove``, ``/user/ban``,
  ``/community/ban_user``, ``/admin/purge/{post,comment,person}``; no ``/api/v4``.
* ``1.0``: ``GET /api/v3/site`` (the compatibility layer: site only) and ``/api/v4/site``
  (no ``my_user``), ``POST /api/v4/account/auth/login``, ``/api/v4/post/remove``,
  ``/comment/remove``, ``/admin/ban``, ``/community/ban_user``, ``/admin/purge/*`` with the 1.0
  field names and a required ``reason``.

Bodies are checked strictly: a missing required field, an unknown field or a wrong type answers
400 (real Lemmy ignores unknown fields; being stricter makes the tests prove exact shapes). A
missing or wrong token answers 400 ``{"error":"not_logged_in"}`` (Lemmy's session middleware
ignores a bad JWT, the handler then finds no user); a wrong password 401 ``incorrect_login``.
Every request is recorded. ``on_action(path, body)`` lets a test play Lemmy's side effects
(e.g. deleting the purged files from the pict-rs store).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

JWT = "eyJhbGciOiJIUzI1NiJ9.test-admin-token.sig"
USER, PASSWORD = "admin", "correct horse battery staple"

# path -> {field: (type, required)}
_V3 = {
    "/api/v3/post/remove": {"post_id": (int, True), "removed": (bool, True),
                            "reason": (str, False)},
    "/api/v3/comment/remove": {"comment_id": (int, True), "removed": (bool, True),
                               "reason": (str, False)},
    "/api/v3/user/ban": {"person_id": (int, True), "ban": (bool, True),
                         "remove_data": (bool, False), "reason": (str, False),
                         "expires": (int, False)},
    "/api/v3/community/ban_user": {"community_id": (int, True), "person_id": (int, True),
                                   "ban": (bool, True), "remove_data": (bool, False),
                                   "reason": (str, False), "expires": (int, False)},
    "/api/v3/admin/purge/post": {"post_id": (int, True), "reason": (str, False)},
    "/api/v3/admin/purge/comment": {"comment_id": (int, True), "reason": (str, False)},
    "/api/v3/admin/purge/person": {"person_id": (int, True), "reason": (str, False)},
}
_V4 = {
    "/api/v4/post/remove": {"post_id": (int, True), "removed": (bool, True),
                            "reason": (str, True), "remove_children": (bool, False)},
    "/api/v4/comment/remove": {"comment_id": (int, True), "removed": (bool, True),
                               "reason": (str, True), "remove_children": (bool, False)},
    "/api/v4/admin/ban": {"person_id": (int, True), "ban": (bool, True),
                          "remove_or_restore_data": (bool, False), "reason": (str, True),
                          "expires_at": (int, False)},
    "/api/v4/community/ban_user": {"community_id": (int, True), "person_id": (int, True),
                                   "ban": (bool, True), "remove_or_restore_data": (bool, False),
                                   "reason": (str, True), "expires_at": (int, False)},
    "/api/v4/admin/purge/post": {"post_id": (int, True), "reason": (str, True)},
    "/api/v4/admin/purge/comment": {"comment_id": (int, True), "reason": (str, True)},
    "/api/v4/admin/purge/person": {"person_id": (int, True), "reason": (str, True)},
}


def _check(schema: dict[str, tuple[type, bool]], body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Json deserialize error: expected an object"
    for k in body:
        if k not in schema:
            return f"Json deserialize error: unknown field `{k}`"
    for k, (typ, required) in schema.items():
        if k not in body:
            if required:
                return f"Json deserialize error: missing field `{k}`"
            continue
        v = body[k]
        if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
            return f"Json deserialize error: invalid type for `{k}`"
        if typ is not int and not isinstance(v, typ):
            return f"Json deserialize error: invalid type for `{k}`"
    return None


class FakeLemmy:
    def __init__(self, version: str = "0.19.5", *,
                 on_action: Callable[[str, dict], None] | None = None) -> None:
        self.version = version
        self.v1 = not version.startswith("0.")
        self.on_action = on_action
        self.calls: list[dict[str, Any]] = []
        self.fail_next: tuple[int, dict] | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status: int, body: Any) -> None:
                data = (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json"
                                 if not isinstance(body, str) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authed(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {JWT}"

            def _handle(self, method: str) -> None:
                body = None
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        return self._send(400, "Json deserialize error")
                path = self.path.split("?", 1)[0]
                fake.calls.append({"method": method, "path": path, "body": body,
                                   "authorization": self.headers.get("Authorization"),
                                   "content_type": self.headers.get("Content-Type")})
                site = {"site_view": {"site": {"id": 1, "name": "Example"}},
                        "admins": [], "version": fake.version}
                if method == "GET" and path == "/api/v3/site":
                    if not fake.v1 and self._authed():
                        site["my_user"] = {"local_user_view": {
                            "local_user": {"id": 1, "admin": True},
                            "person": {"id": 1, "name": USER}}}
                    return self._send(200, site)
                if method == "GET" and path == "/api/v4/site" and fake.v1:
                    return self._send(200, site)
                login = "/api/v4/account/auth/login" if fake.v1 else "/api/v3/user/login"
                if method == "POST" and path == login:
                    if not isinstance(body, dict) or set(body) - {
                            "username_or_email", "password", "totp_2fa_token",
                            "stay_logged_in"} or "password" not in body:
                        return self._send(400, "Json deserialize error: bad login body")
                    if body.get("username_or_email") == USER and body["password"] == PASSWORD:
                        return self._send(200, {"jwt": JWT, "registration_created": False,
                                                "verify_email_sent": False})
                    return self._send(401, {"error": "incorrect_login"})
                routes = _V4 if fake.v1 else _V3
                if method != "POST" or path not in routes:
                    return self._send(404, {"error": "not_found"})
                problem = _check(routes[path], body)
                if problem:
                    return self._send(400, problem)
                if not self._authed():
                    return self._send(400, {"error": "not_logged_in"})
                if fake.fail_next is not None:
                    status, err = fake.fail_next
                    fake.fail_next = None
                    return self._send(status, err)
                if fake.on_action is not None:
                    fake.on_action(path, body)
                if path.endswith("/post/remove"):
                    return self._send(200, {"post_view": {"post": {
                        "id": body["post_id"], "removed": body["removed"]}}})
                if path.endswith("/comment/remove"):
                    return self._send(200, {"comment_view": {"comment": {
                        "id": body["comment_id"], "removed": body["removed"]}}})
                if path.endswith("/ban") or path.endswith("/ban_user"):
                    return self._send(200, {"person_view": {"person": {
                        "id": body["person_id"]}}, "banned": body["ban"]})
                return self._send(200, {"success": True})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> "FakeLemmy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def actions(self) -> list[dict[str, Any]]:
        """Recorded moderation calls (not site info, not logins)."""
        return [c for c in self.calls if c["method"] == "POST" and "login" not in c["path"]]
