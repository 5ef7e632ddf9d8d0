"""The console's HTTP layer (Starlette): pages, their JSON twins, previews, decisions, export.

Order of checks for every request (``Guard``, an ASGI middleware, then ``Console._wrap``):

1. Host must be one the console answers to (loopback names at its port, plus
   FSQ_REVIEW_ALLOWED_HOSTS); an Origin header, when sent, must be one of those too; a browser's
   ``Sec-Fetch-Site: cross-site`` is refused. -> 403 (DNS rebinding, cross-site requests).
2. The session cookie must name the live session (else 401; an idle one locks, see
   fsq.review.session). Static CSS/JS and /login are the only unauthenticated paths.
3. POST only for changes, and the CSRF token must match -> else 403, before any work.
4. Only then the core runs, under one lock (one SQLite connection, one reviewer).

Every response carries a strict CSP (scripts and styles only from the console itself, no
inline script, images only from itself, frame-ancestors 'none'), ``Cache-Control: no-store``,
``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``.

Every page answers JSON instead of HTML when the request says ``Accept: application/json``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode

from fsq.errors import FsqError, IntegrityError, NotFound, UsageError
from fsq.review import decisions, previews, queue
from fsq.review.session import COOKIE, Session, Sessions
from fsq.timeutil import iso

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
MAX_FORM = 256 * 1024


def allowed_hosts(host: str, port: int, extra: tuple[str, ...] = ()) -> set[str]:
    names = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    names.add(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    names.update(e.strip().lower() for e in extra if e.strip())
    return {n.lower() for n in names}


class Guard:
    """ASGI middleware: Host/Origin/Sec-Fetch-Site checks and security headers on everything."""

    def __init__(self, app: Any, hosts: set[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = {f"{s}://{h}" for h in hosts for s in ("http", "https")}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "").lower()
        origin = headers.get("origin")
        why = None
        if host not in self.hosts:
            why = "this console answers only to its own loopback address (Host refused)"
        elif origin is not None and origin.lower() not in self.origins and not (
                # With Referrer-Policy: no-referrer, Chromium sends "Origin: null" even for a
                # same-origin form POST. Accept that only when the browser itself (page
                # scripts cannot set Sec-Fetch-*) says the request is same-origin.
                origin == "null" and headers.get("sec-fetch-site") == "same-origin"):
            why = "cross-origin request refused (Origin)"
        elif headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            why = "cross-site request refused"

        async def send_secure(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [h for h in message.get("headers", [])
                                      if h[0].lower() not in {k for k, _ in SECURITY_HEADERS}]
                message["headers"] += SECURITY_HEADERS
            await send(message)

        if why is not None:
            body = why.encode() + b"\n"
            await send_secure({"type": "http.response.start", "status": 403,
                               "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                           (b"content-length", str(len(body)).encode())]})
            await send_secure({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_secure)


@dataclass
class ConsoleOptions:
    reviewer: str
    idle_seconds: float
    blur: bool = True
    grayscale: bool = True
    secure_cookie: bool = False
    max_pixels: int = 64_000_000
    budget_pixels: int = 1_000_000_000
    export_root: Path = field(default_factory=lambda: Path("exports"))


class Console:
    """The console's state: DB connection, settings, key in memory, sessions."""

    def __init__(self, conn: sqlite3.Connection, settings: Any, opts: ConsoleOptions, *,
                 sessions: Sessions, lifecycle: decisions.Lifecycle,
                 static_dir: Path, decoder: Any = None) -> None:
        from fsq.reports.render import make_env
        self.conn = conn
        self.settings = settings
        self.opts = opts
        self.sessions = sessions
        self.lifecycle = lifecycle
        self.env = make_env(getattr(settings, "templates_dir", None))
        self.static = {n: (static_dir / n).read_bytes() for n in STATIC}
        self.lock = threading.Lock()
        self.decoder = decoder       # DecodePool.decode (previews are hostile input)

    # --- plumbing ------------------------------------------------------------------------------

    @staticmethod
    def wants_json(request: Any) -> bool:
        return "application/json" in request.headers.get("accept", "")

    def render(self, request: Any, template: str, model: dict[str, Any], status: int = 200,
               session: Session | None = None) -> Any:
        from starlette.responses import HTMLResponse, JSONResponse
        from fsq.reports.render import sanitize_tree
        if self.wants_json(request):
            return JSONResponse(sanitize_tree(model, limit=None), status_code=status)
        ctx = {"m": sanitize_tree(model), "csrf": session.csrf if session else "",
               "reviewer": self.opts.reviewer, "idle_seconds": self.opts.idle_seconds,
               "unblurred_views": session.unblurred_views if session else 0,
               "logged_in": session is not None, "urlencode": urlencode}
        html = self.env.get_template(f"review/{template}").render(**ctx)
        return HTMLResponse(html, status_code=status)

    def message(self, request: Any, status: int, title: str, text: str,
                session: Session | None = None, back: str | None = None) -> Any:
        return self.render(request, "message.html",
                           {"status": status, "title": title, "error": text, "back": back},
                           status, session)

    async def _form(self, request: Any) -> dict[str, list[str]]:
        body = await request.body()
        if len(body) > MAX_FORM:
            return {}
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                doc = json.loads(body or b"{}")
            except ValueError:
                return {}
            if not isinstance(doc, dict):
                return {}
            return {str(k): [str(x) for x in (v if isinstance(v, list) else [v])]
                    for k, v in doc.items() if v is not None}
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)

    def _wrap(self, fn: Callable, *, post: bool = False, auth: bool = True) -> Callable:
        from starlette.concurrency import run_in_threadpool

        async def endpoint(request: Any) -> Any:
            form: dict[str, list[str]] = {}
            session = None
            if auth:
                session, locked = self.sessions.lookup(request.cookies.get(COOKIE))
                if session is None:
                    text = (f"This session locked after {self.opts.idle_seconds / 60:g} "
                            "minute(s) without activity. A new one-time login link was printed "
                            "in the terminal running `fsq review`." if locked else
                            "Log in with the one-time URL printed by `fsq review`.")
                    return self.message(request, 401, "Locked" if locked else
                                        "Not logged in", text)
            if post:
                form = await self._form(request)
                supplied = request.headers.get("x-csrf-token") or \
                    (form.get("csrf") or [None])[0]
                if session is None or not Sessions.csrf_ok(session, supplied):
                    return self.message(request, 403, "Refused",
                                        "missing or wrong CSRF token; nothing was changed",
                                        session)

            def call() -> Any:
                with self.lock:
                    try:
                        return fn(request, session, form)
                    except NotFound as exc:
                        return self.message(request, 404, "Not found", exc.message, session,
                                            "/")
                    except previews.PreviewUnavailable as exc:
                        return self.message(request, 422, "No preview", exc.message, session)
                    except IntegrityError as exc:
                        return self.message(request, 500, "Integrity failure", exc.message,
                                            session)
                    except FsqError as exc:
                        return self.message(request, 400, "Not done", exc.message, session)
            return await run_in_threadpool(call)
        return endpoint

    def redirect(self, request: Any, url: str, payload: dict[str, Any]) -> Any:
        from starlette.responses import JSONResponse, RedirectResponse
        if self.wants_json(request):
            from fsq.reports.render import sanitize_tree
            return JSONResponse(sanitize_tree(payload, limit=None))
        return RedirectResponse(url, status_code=303)

    def _incident(self, iid: int) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM incidents WHERE id=?", (iid,)).fetchone()
        if row is None:
            raise NotFound(f"no incident {iid}")
        return row

    # --- unauthenticated -----------------------------------------------------------------------

    async def static_file(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse, Response
        name = request.path_params["name"]
        if name not in STATIC:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(self.static[name], media_type=STATIC[name])

    def login(self, request: Any, _s: Any, _f: Any) -> Any:
        from starlette.responses import RedirectResponse
        got = self.sessions.login(request.query_params.get("token"))
        if got is None:
            return self.message(request, 401, "Login link not valid",
                                "This login link is not valid or was already used. Each link "
                                "works once; a new one is printed when a session locks, or "
                                "restart `fsq review`.")
        sid, _ = got
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/",
                        secure=self.opts.secure_cookie)
        return resp

    # --- pages ---------------------------------------------------------------------------------

    def queue_page(self, request: Any, s: Session, _f: Any) -> Any:
        q = queue.QueueQuery.parse(dict(request.query_params))
        model = queue.list_queue(self.conn, q)
        model["decisions"] = {k: v[0] for k, v in decisions.DECISIONS.items()}
        return self.render(request, "queue.html", model, session=s)

    def incident_page(self, request: Any, s: Session, _f: Any) -> Any:
        from fsq.reports.model import build_model
        iid = int(request.path_params["iid"])
        row = self._incident(iid)
        tab = request.query_params.get("state") or "needs_review"
        report = build_model(self.conn, iid, self.settings)
        up = report["cybertip"]["personOrUserReported"]
        decisions.learn_uploader(self.conn, iid, up.get("screenName") if up else None)
        level = s.levels.get(iid, 0)
        entry = previews.live_entry(self.conn, iid)
        model = {
            "incident": {k: row[k] for k in row.keys()}, "report": report,
            "tab": tab if tab in queue.TABS else "needs_review",
            "neighbours": queue.neighbours(self.conn, row, tab),
            "preview": {"available": entry is not None, "level": level,
                        "max_level": previews.MAX_LEVEL,
                        "name": previews.LEVEL_NAMES[level],
                        "next_name": (previews.LEVEL_NAMES[level + 1]
                                      if level < previews.MAX_LEVEL else None),
                        "blurred": previews.is_blurred_view(level, blur=self.opts.blur),
                        "url": f"/incident/{iid}/preview?level={level}"},
            "views": previews.views(self.conn, iid),
            "decisions": {k: v[0] for k, v in decisions.DECISIONS.items()},
            "export_default": str(self._export_dir(iid)),
        }
        return self.render(request, "incident.html", model, session=s)

    def preview(self, request: Any, s: Session, _f: Any) -> Any:
        from starlette.responses import Response
        iid = int(request.path_params["iid"])
        row = self._incident(iid)        # unknown incident: 404 before any decryption
        try:
            level = int(request.query_params.get("level", "0"))
        except ValueError:
            raise UsageError("level must be a whole number") from None
        if not 0 <= level <= s.levels.get(iid, 0):
            return self.message(request, 403, "Refused", "step up one level at a time with "
                                "the 'Show more' button", s)
        p = previews.serve_preview(self.conn, row, level, private_key=self.lifecycle.private_key,
                                   vault_for=self.lifecycle.vault_for,
                                   reviewer=self.opts.reviewer, blur=self.opts.blur,
                                   grayscale=self.opts.grayscale,
                                   max_pixels=self.opts.max_pixels,
                                   budget_pixels=self.opts.budget_pixels,
                                   decoder=self.decoder)
        if not p.blurred:
            s.unblurred_views += 1
        return Response(p.png, media_type="image/png")

    def reveal(self, request: Any, s: Session, _f: Any) -> Any:
        iid = int(request.path_params["iid"])
        self._incident(iid)
        s.levels[iid] = min(s.levels.get(iid, 0) + 1, previews.MAX_LEVEL)
        return self.redirect(request, f"/incident/{iid}#preview", {"incident": iid,
                                                                   "level": s.levels[iid]})

    def decide(self, request: Any, s: Session, f: dict[str, list[str]]) -> Any:
        iid = int(request.path_params["iid"])
        row = self._incident(iid)
        tab = _one(f, "tab") or "needs_review"
        tab = tab if tab in queue.TABS else "needs_review"
        nxt = queue.neighbours(self.conn, row, tab)["next"]
        res = decisions.decide(self.conn, iid, _one(f, "decision") or "", **self._kw(f))
        after = f"/incident/{nxt}?state={tab}" if nxt else f"/?state={tab}"
        return self.redirect(request, after, res)

    def bulk(self, request: Any, s: Session, f: dict[str, list[str]]) -> Any:
        ids = []
        for v in f.get("id", []):
            if not v.isdigit():
                raise UsageError(f"incident id {v!r} is not a number")
            ids.append(int(v))
        ids = list(dict.fromkeys(ids))
        decision = _one(f, "decision") or ""
        if decision not in decisions.DECISIONS:
            raise UsageError("choose a decision for the selected incidents")
        if not ids:
            raise UsageError("select at least one incident")
        confirmed = _one(f, "confirm") == "yes" and _one(f, "count") == str(len(ids))
        if not confirmed:
            model = {"confirm_required": True, "count": len(ids), "ids": ids,
                     "decision": decision, "label": decisions.DECISIONS[decision][0],
                     "fields": {k: _one(f, k) or "" for k in
                                ("reason", "reference", "until", "hold_kind", "tab")}}
            return self.render(request, "confirm.html", model, session=s)
        res = decisions.decide_many(self.conn, ids, decision, **self._kw(f))
        if self.wants_json(request):
            return self.redirect(request, "/", res)
        return self.render(request, "bulk_done.html", res, session=s)

    def export(self, request: Any, s: Session, f: dict[str, list[str]]) -> Any:
        from fsq.review.export import export_incident
        iid = int(request.path_params["iid"])
        row = self._incident(iid)
        out = Path(_one(f, "out") or self._export_dir(iid))
        if out == self._export_dir(iid):
            self.opts.export_root.mkdir(mode=0o700, exist_ok=True)
        manifest = export_incident(self.conn, row, out, private_key=self.lifecycle.private_key,
                                   vault_for=self.lifecycle.vault_for, settings=self.settings,
                                   by=self.opts.reviewer)
        if self.wants_json(request):
            return self.redirect(request, "/", manifest)
        return self.message(request, 200, "Exported",
                            f"Incident {iid} exported to {manifest['directory']} (original "
                            "bytes, manifest.json, report.html, audit.json).", s,
                            f"/incident/{iid}")

    def logout(self, request: Any, s: Session, _f: Any) -> Any:
        from starlette.responses import JSONResponse, RedirectResponse
        self.sessions.logout()
        resp = (JSONResponse({"logged_out": True}) if self.wants_json(request)
                else RedirectResponse("/", status_code=303))
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # --- helpers -------------------------------------------------------------------------------

    def _kw(self, f: dict[str, list[str]]) -> dict[str, Any]:
        return {"reason": _one(f, "reason") or "", "reviewer": self.opts.reviewer,
                "lifecycle": self.lifecycle, "reference": _one(f, "reference"),
                "until": _one(f, "until"), "hold_kind": _one(f, "hold_kind") or "voluntary"}

    def _export_dir(self, iid: int) -> Path:
        stamp = iso()[:19].replace(":", "").replace("-", "")
        return (self.opts.export_root / f"incident-{iid}-{stamp}").absolute()

    def app(self, hosts: set[str]) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route
        w = self._wrap
        routes = [
            Route("/static/{name}", self.static_file, methods=["GET"]),
            Route("/favicon.ico", _no_content, methods=["GET"]),
            Route("/login", w(self.login, auth=False), methods=["GET"]),
            Route("/", w(self.queue_page), methods=["GET"]),
            Route("/incident/{iid:int}", w(self.incident_page), methods=["GET"]),
            Route("/incident/{iid:int}/preview", w(self.preview), methods=["GET"]),
            Route("/incident/{iid:int}/reveal", w(self.reveal, post=True), methods=["POST"]),
            Route("/incident/{iid:int}/decide", w(self.decide, post=True), methods=["POST"]),
            Route("/incident/{iid:int}/export", w(self.export, post=True), methods=["POST"]),
            Route("/bulk", w(self.bulk, post=True), methods=["POST"]),
            Route("/logout", w(self.logout, post=True), methods=["POST"]),
        ]
        return Guard(Starlette(routes=routes), hosts)


async def _no_content(request: Any) -> Any:
    from starlette.responses import Response
    return Response(status_code=204)


def _one(form: dict[str, list[str]], name: str) -> str | None:
    v = form.get(name)
    return v[0].strip() if v and v[0].strip() else None
