"""`fsq serve`: the pict-rs external-validation endpoint (ARCHITECTURE.md, upload-time path).

pict-rs (0.4.3+) with ``PICTRS__MEDIA__EXTERNAL_VALIDATION=http://HOST:14051/validate/TOKEN``
POSTs the raw bytes of every stored upload (not multipart) with ``Content-Type`` set to their
media type; any 2xx accepts, any other status or a timeout (``..._TIMEOUT``, default 30 s)
rejects and pict-rs deletes the file. No alias, user or IP comes with it.

Endpoints:

* ``POST /validate/{token}`` or ``POST /validate`` with header ``X-Fsq-Token: TOKEN``.
  200 ``{"msg":"ok"}`` accepted; 406 ``{"msg":"rejected"}`` flagged (like pictrs-safety);
  401 wrong or missing token; 413 body over ``serve_max_body``; 503 the check failed or was
  overloaded and ``--on-error reject`` (with ``--on-error accept`` those are 200, logged as
  FAIL-OPEN and counted in ``fsq_serve_fail_open_total``). Bodies reveal nothing else.
* ``GET /healthz``: 200 ``{"status":"ok",...}`` while the worker runs, else 503.
* ``GET /metrics``: Prometheus text (fsq.server.metrics).

Checks, the same as the scanner's (fsq.pipeline helpers): allowlist, known-hash lists, exact
hashes in the hash banks, the cached verdict of identical content, then decode (undecodable ->
``--unreadable``: skip = 200 and verdict 'unreadable', flag = 406 and sealed), PDQ against the
hash banks (fsq.signals.match: a confirmed image re-uploaded is rejected without the model)
and classify.

Preparing, then batching: each upload is first prepared on its own, on a small pool of
threads (max(``workers``, ``decode_workers``) + 1): hash and cheap checks (through a
read-only connection of that thread), then decode in the worker-process pool
(fsq.media.pool, killed at the CPU budget) and preprocess. So a decoding bomb holds one
decode worker for its budget only and never the batch thread; a budget breach is an error of
that upload alone and follows ``--on-error`` (counted in
``fsq_serve_decode_budget_breaches_total``). Prepared uploads go on an asyncio queue;
uploads being prepared or queued are bounded by ``serve_queue`` (full -> overload policy).
One worker task takes what is queued, up to ``batch_size`` uploads; a lone upload waits
``serve_batch_wait_ms`` for company first. The batch runs on one dedicated worker thread:
ONE classifier call for the whole batch, then per upload: record, seal if flagged, answer.
A request waits at most ``serve_timeout`` seconds (keep it below pict-rs's timeout) from
its start, then the on-error policy answers; the upload is still checked and recorded
afterwards, and sealed if flagged.

Evidence first: a flagged upload is sealed into the vault (``Quarantiner.seal_upload``: the
crash-safe journal without a source to remove) and its incident (origin 'serve') and audit
events are committed BEFORE the 406 goes out, because pict-rs discards the file on rejection.
Sealed metadata and the 'flagged' audit event carry the arrival time, the Content-Type sent,
the sniffed media type and the client address (pict-rs's, as pict-rs does not forward the
uploader's). If sealing fails the upload is still rejected (never published) and the failure
is logged as an error and counted.

State: every checked upload is one ``objects`` row with source ``upload:pict-rs`` and key
``upload/<arrival UTC ISO 8601>-<sha256[:16]>`` plus the scanner's verdict row; a check that
failed is an object with status 'error' and no verdict. Each server run is a ``scan_runs`` row
(mode 'serve'). The SQLite connection is used only by the worker thread while serving (and by
the caller's thread before and after), so there is one writer.

Secrets: the token is compared in constant time, never logged (request paths are logged as
``/validate/***``; uvicorn's access log is off) and never appears in /metrics or errors.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fsq.classify import frameskip
from fsq.media import Decoded, Unreadable, hashes, sniff
from fsq.errors import ConfigError, UsageError
from fsq.ledger import state
from fsq.pipeline import (Classifier, ScanConfig, clip_verdict, decode_request,
                          load_hash_lists, precheck, record_verdict, unreadable_verdict)
from fsq.quarantine.move import UNFINISHED, UPLOAD_SOURCE
from fsq.server.http import (BodyBudget, BodyBudgetExceeded, BodyTimeout, BodyTooLarge,
                             ConnectionLimits, fit_connections, guarded_protocol, read_body)
from fsq.server.metrics import Metrics
from fsq.signals import match as signals
from fsq.timeutil import iso

log = logging.getLogger("fsq.serve")

TOKEN_HEADER = "x-fsq-token"
PICTRS_TIMEOUT_S = 30.0
MIN_TOKEN_LEN = 16
_TOKEN_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


# --- options -----------------------------------------------------------------------------------

def split_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:14051' / '[::1]:14051' / 'localhost:14051' -> (host, port)."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: might resolve to anything


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    token: str | None = field(repr=False)
    max_body: int = 100 * 1024 * 1024
    on_error: str = "reject"
    timeout: float = 20.0
    queue: int = 64
    batch_wait_ms: int = 10
    batch_size: int = 8
    header_timeout: float = 10.0
    body_timeout: float = 15.0
    max_connections: int = 1024

    @classmethod
    def from_settings(cls, settings: Any) -> "ServeOptions":
        host, port = split_listen(settings.serve_listen)
        token = settings.serve_token
        if token is not None:
            # Never echo the token: name the setting only.
            if len(token) < MIN_TOKEN_LEN or not set(token) <= _TOKEN_CHARS:
                raise ConfigError(
                    f"FSQ_SERVE_TOKEN/--token must be at least {MIN_TOKEN_LEN} characters of "
                    "A-Z a-z 0-9 - . _ ~ (it goes into a URL path); generate one with: "
                    "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
        elif not is_loopback(host):
            raise UsageError(
                f"refusing to listen on {settings.serve_listen} without a token: anyone who "
                "can reach it could probe the classifier. Set FSQ_SERVE_TOKEN/--token (and "
                "put it in pict-rs's URL: .../validate/TOKEN), or listen on 127.0.0.1")
        return cls(host=host, port=port, token=token, max_body=settings.serve_max_body,
                   on_error=settings.serve_on_error, timeout=settings.serve_timeout,
                   queue=settings.serve_queue, batch_wait_ms=settings.serve_batch_wait_ms,
                   batch_size=settings.batch_size,
                   header_timeout=settings.serve_header_timeout,
                   body_timeout=settings.serve_body_timeout,
                   max_connections=settings.serve_max_connections)


# --- one upload on its way through ---------------------------------------------------------------

@dataclass
class Upload:
    data: bytes
    content_type: str | None
    client: str | None
    arrived_at: str                        # UTC ISO 8601
    arrived_epoch: float
    request_id: str
    future: asyncio.Future = field(repr=False)
    answered_by_policy: str | None = None  # set when the on-error policy answered first


@dataclass
class Outcome:
    verdict: str                           # clean | flagged | unreadable | error
    reason: str | None = None
    method: str | None = None
    sha256: str | None = None
    incident_id: int | None = None
    entry_id: str | None = None            # vault entry when sealed


@dataclass
class _Item:
    up: Upload
    sha256: str | None = None
    md5: str | None = None
    sniffed: str | None = None
    verdict: state.VerdictRecord | None = None
    decoded: Decoded | None = None
    tensors: list[Any] | None = None
    error: str | None = None
    pdq: list[Any] = field(default_factory=list)  # fsq.signals.pdq.FrameHash per frame


def _printable(value: str | None, limit: int = 200) -> str | None:
    """A client-sent header value made safe for log lines, audit details and metadata."""
    if value is None:
        return None
    return "".join(c if c.isprintable() else "?" for c in value[:limit])


def upload_key(arrived_at: str, sha256: str | None) -> str:
    return f"upload/{arrived_at}-{(sha256 or 'unhashed')[:16]}"


# --- the validator: queue, batch worker, answers --------------------------------------------------

class Validator:
    """Everything behind the HTTP routes. Build with ``open_validator``."""

    def __init__(self, *, conn: sqlite3.Connection, classifier: Classifier, quarantiner: Any,
                 scan_cfg: ScanConfig, opts: ServeOptions, known: dict[str, str],
                 run_id: int | None = None, workers: int = 1, db_path: Any = None,
                 decode_workers: int | None = None) -> None:
        self.conn = conn
        self.classifier = classifier
        self.quarantiner = quarantiner
        self.cfg = scan_cfg
        self.opts = opts
        self.known = known
        self.pdq = signals.PdqMatcher(scan_cfg.pdq_distance, scan_cfg.pdq_safe_distance)
        self.pdq.refresh(conn)  # load the banks before the first upload waits for it
        self.run_id = run_id
        self.metrics = Metrics()
        self.metrics.model_loaded = True
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread: all model work and every database write happen on it. Preparing
        # (hash, cheap checks with a read-only connection per thread, decode in the process
        # pool, preprocess) runs on max(workers, decode workers) + 1 threads, so that while
        # every decode worker holds a bomb, uploads decided without decoding still get
        # through.
        from fsq.media import DecodePool
        dw = decode_workers if decode_workers is not None else scan_cfg.decode_workers
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsq-serve")
        self._decoder = DecodePool(dw, scan_cfg.decode_seconds)
        self._prep_pool = ThreadPoolExecutor(max_workers=max(workers, dw) + 1,
                                             thread_name_prefix="fsq-serve-prep")
        self._db_path = db_path
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._preparing: set[asyncio.Task] = set()
        # Bodies in memory are bounded too, not only the queue (each up to max_body): at most
        # _admit_limit complete bodies wait for verdicts, and bodies still arriving hold at
        # most as many bytes between them. Slow senders therefore never take the slots of
        # complete uploads (fsq.server.http).
        self._admit_limit = opts.queue + 2 * opts.batch_size
        self._waiting = 0  # complete bodies waiting for a verdict (event loop only)
        self._bodies = BodyBudget(self._admit_limit * opts.max_body)
        self._closed = False

    # -- lifecycle (event loop) -------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self.opts.queue)
        self.metrics.queue_depth = self._queue.qsize
        self._task = asyncio.create_task(self._worker(), name="fsq-serve-batcher")

    async def stop(self) -> None:
        """Finish everything queued, then record the end of the run and close the database."""
        if self._preparing:  # uploads still being decoded go through the batch first
            await asyncio.gather(*self._preparing, return_exceptions=True)
        if self._queue is not None and self._task is not None and not self._task.done():
            await self._queue.put(None)
            await self._task
        await asyncio.get_running_loop().run_in_executor(self._executor, self.close)
        self._executor.shutdown(wait=True)
        self._prep_pool.shutdown(wait=True)
        self._decoder.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        m = self.metrics
        counts = {"scanned": sum(m.verdicts.values()), "clean": m.verdicts["clean"],
                  "flagged": m.verdicts["flagged"], "unreadable": m.verdicts["unreadable"],
                  "errors": m.verdicts["error"], "quarantined": m.sealed,
                  "quarantine_failed": m.seal_failures, "requests": sum(m.requests.values()),
                  "fail_open": sum(m.fail_open.values())}
        try:
            if self.run_id is not None:
                state.finish_run(self.conn, self.run_id, "finished", counts)
        except sqlite3.Error as exc:
            log.error("could not record the end of serve run %s: %s", self.run_id, exc)
        finally:
            self.conn.close()
            with self._readers_lock:
                for c in self._readers:
                    c.close()
                self._readers.clear()

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- batching (event loop) --------------------------------------------------------------

    def _drain(self, batch: list[_Item]) -> bool:
        """Move queued uploads into ``batch`` up to batch_size; True if the stop mark came."""
        assert self._queue is not None
        while len(batch) < self.opts.batch_size:
            try:
                up = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return False
            if up is None:
                return True
            batch.append(up)
        return False

    async def _worker(self) -> None:
        assert self._queue is not None and self._loop is not None
        wait = self.opts.batch_wait_ms / 1000.0
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = self._drain(batch)
            # A lone upload waits a few ms for company; a backlog is taken at once (waiting
            # would only add latency to uploads that have already waited).
            if len(batch) == 1 and not stop and wait > 0:
                await asyncio.sleep(wait)
                stop = self._drain(batch)
            try:
                await self._loop.run_in_executor(self._executor, self.process_batch, batch)
            except Exception:  # a bug; never let it kill the worker (every request would hang)
                log.exception("batch of %d upload(s) failed", len(batch))
                for it in batch:
                    self._resolve(it.up, Outcome("error", "internal error"))
            if stop:
                return

    def _resolve(self, up: Upload, outcome: Outcome) -> None:
        """Hand the outcome to the request (from any thread)."""
        def _set() -> None:
            if not up.future.done():
                up.future.set_result(outcome)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_set)

    # -- the checks (worker thread) ---------------------------------------------------------

    # -- preparing (prep threads) -----------------------------------------------------------

    def submit(self, up: Upload) -> None:
        """Prepare ``up`` in the background, then queue it for the batch (event loop)."""
        assert self._loop is not None
        task = self._loop.create_task(self._prepare_and_queue(up))
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    async def _prepare_and_queue(self, up: Upload) -> None:
        assert self._loop is not None and self._queue is not None
        it = _Item(up)
        await self._loop.run_in_executor(self._prep_pool, self.prepare, it)
        # Admission kept queued + preparing under the queue's size, so this does not wait;
        # if it ever did, the upload would still be checked (never dropped once admitted).
        await self._queue.put(it)

    def prepare(self, it: _Item) -> None:
        self._guard(it, self._precheck)
        if it.verdict is None and it.error is None:
            self._guard(it, self._decode)

    def _reader(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self._db_path is None:
                return self.conn  # tests that build a Validator by hand
            from fsq.ledger.db import connect
            c = connect(self._db_path)
            self._local.conn = c
            with self._readers_lock:
                self._readers.append(c)
        return c

    # -- the checks (worker thread) ---------------------------------------------------------

    def process_batch(self, items: list[_Item]) -> None:
        self.metrics.batch(len(items))
        # Hash banks: reloaded only when their PDQs changed (the batch thread owns the
        # database; prep threads read the matcher, whose index is swapped whole).
        self.pdq.refresh(self.conn)
        need = [it for it in items if it.tensors is not None and it.error is None]
        if need:
            self.metrics.add("model_calls")
            try:
                results = self.classifier.classify_items([it.tensors for it in need])
                if len(results) != len(need):
                    raise RuntimeError(f"classifier returned {len(results)} results for "
                                       f"{len(need)} uploads")
                for it, (decision, frame) in zip(need, results):
                    d = it.decoded
                    assert d is not None
                    if (d.incomplete or "").startswith("budget") and not decision.flagged:
                        # Frames past the pixel budget were not examined: --on-error.
                        self.metrics.budget_breach("pixels")
                        it.error = d.incomplete
                        continue
                    it.verdict = clip_verdict(decision, frame, d, self.classifier.model_id,
                                              self.cfg)
            except Exception as exc:
                log.error("classifier failed on a batch of %d upload(s): %s: %s", len(need),
                          exc.__class__.__name__, " ".join(str(exc).split())[:200])
                for it in need:
                    it.error = f"classifier failed: {exc.__class__.__name__}"
            for it in need:
                it.tensors = None
        for it in items:
            try:
                self._conclude(it)
            except Exception:  # a bug: answer this upload by policy, go on with the others
                log.exception("recording upload %s failed", it.up.request_id)
                self._resolve(it.up, Outcome("error", "internal error", sha256=it.sha256))

    @staticmethod
    def _guard(it: _Item, step) -> None:
        try:
            step(it)
        except Exception as exc:  # this upload only (resource problem or a bug)
            log.exception("checking upload %s failed", it.up.request_id)
            it.error = f"check failed: {exc.__class__.__name__}"

    def _precheck(self, it: _Item) -> None:
        """Hashes and the checks that need no decoding (worker thread: reads the DB)."""
        data = it.up.data
        it.sha256, it.md5 = hashes(data)
        it.sniffed = sniff(data)
        v = precheck(self._reader(), it.sha256, it.md5, self.known, use_cache=True,
                     settings_digest=self.cfg.settings_digest)
        if v is not None and v.method == "cache" and v.outcome == "unreadable":
            v = None  # cheap to decode again, and then the current --unreadable applies
        it.verdict = v

    def _decode(self, it: _Item) -> None:
        """Decode (worker process, under the budget) and preprocess (this thread)."""
        try:
            it.decoded = self._decoder.decode(it.up.data, decode_request(self.cfg))
        except Unreadable as exc:
            if exc.kind == "budget":  # this upload only: --on-error decides, not --unreadable
                self.metrics.budget_breach(exc.facts.get("budget", "pixels"))
                it.error = exc.reason
                return
            it.verdict = unreadable_verdict(exc.reason, exc.media_type, self.cfg,
                                            {"decode": exc.kind})
            return
        assert it.decoded is not None
        it.pdq, it.verdict = signals.check_decoded(self.pdq, it.decoded)
        if it.verdict is not None:  # a hash bank decided: no model
            it.decoded.frames = []
            return
        it.tensors = frameskip.preprocess_frames(self.classifier.preprocess, it.decoded,
                                                 self.cfg.frame_skip, self.classifier)
        it.decoded.frames = []

    def _conclude(self, it: _Item) -> None:
        """Record, seal if flagged, then answer. Runs on the worker thread."""
        up = it.up
        key = upload_key(up.arrived_at, it.sha256)
        size = len(up.data)
        context = {"arrived_at": up.arrived_at, "content_type": up.content_type,
                   "sniffed_type": it.sniffed, "client": up.client, "size": size}
        out = Outcome("error", it.error, sha256=it.sha256)
        object_id = incident_id = None
        try:
            object_id = state.touch_object(self.conn, UPLOAD_SOURCE, key, size,
                                           up.arrived_epoch, self.run_id)
            if it.error is not None or it.verdict is None:
                state.set_object_result(self.conn, object_id, status="error",
                                        reason=it.error or "no verdict", size=size,
                                        sha256=it.sha256, md5=it.md5, media_type=it.sniffed)
        except sqlite3.Error as exc:
            self.metrics.add("record_failures")
            log.error("could not record upload %s: %s", key, exc)
        if it.error is None and it.verdict is not None:
            v = it.verdict
            out = Outcome(v.outcome, v.reason, v.method, sha256=it.sha256)
            if object_id is not None:
                try:
                    _, incident_id = record_verdict(
                        self.conn, object_id=object_id, sha256=it.sha256 or "",
                        md5=it.md5 or "", size=size, verdict=v,
                        audit_details={"source": UPLOAD_SOURCE, "key": key, **context},
                        origin="serve")
                    if it.pdq:
                        signals.store_pdq(self.conn, it.sha256 or "", it.pdq)
                except sqlite3.Error as exc:
                    self.metrics.add("record_failures")
                    log.error("could not record the verdict of upload %s: %s", key, exc)
            out.incident_id = incident_id
            if v.outcome == "flagged":
                out.entry_id = self._seal(it, key, object_id, incident_id, context)
        self.metrics.verdict(out.verdict)
        if up.answered_by_policy is not None and out.verdict == "flagged":
            log.error("upload %s (sha256 %s, incident %s) was flagged AFTER the on-error "
                      "policy answered it (%s)%s", key, it.sha256, incident_id,
                      up.answered_by_policy,
                      ": it is live in pict-rs; a scan of the store will quarantine it"
                      if up.answered_by_policy.endswith("accept") else "")
        up.data = b""
        self._resolve(up, out)

    def _seal(self, it: _Item, key: str, object_id: int | None, incident_id: int | None,
              context: dict[str, Any]) -> str | None:
        if object_id is None or incident_id is None:
            self.metrics.add("seal_failures")
            log.error("flagged upload %s (sha256 %s) NOT sealed: its verdict could not be "
                      "recorded; it is rejected anyway and its bytes are lost", key, it.sha256)
            return None
        assert it.verdict is not None and it.sha256 and it.md5
        try:
            entry = self.quarantiner.seal_upload(
                self.conn, object_id=object_id, key=key, data=it.up.data, sha256=it.sha256,
                md5=it.md5, incident_id=incident_id,
                media_type=it.verdict.media_type or it.sniffed, extra_meta=context)
        except Exception as exc:
            self.metrics.add("seal_failures")
            log.error("flagged upload %s (incident %s) NOT sealed: %s: %s; it is rejected "
                      "anyway, so pict-rs discards its bytes", key, incident_id,
                      exc.__class__.__name__, getattr(exc, "message", None) or exc)
            return None
        self.metrics.add("sealed")
        return entry

    # -- HTTP (event loop) ------------------------------------------------------------------

    def _authorized(self, path_token: str | None, header_token: str | None) -> bool:
        presented = path_token if path_token is not None else header_token
        if self.opts.token is None:
            return presented is None
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8"), self.opts.token.encode("utf-8"))

    async def handle(self, request: Any) -> Any:
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse

        t0 = time.monotonic()
        path_token = request.path_params.get("token")
        path = "/validate/***" if path_token is not None else "/validate"
        client = (f"{request.client.host}:{request.client.port}" if request.client else None)
        ctype = _printable(request.headers.get("content-type"))
        size = 0
        m = self.metrics

        def answer(status: int, label: str, *, reason: str | None = None,
                   fail_open: str | None = None, extra: str = "", level: int = logging.INFO):
            took = time.monotonic() - t0
            m.answered(status, took, reason=reason, fail_open=fail_open)
            log.log(level, "POST %s %d %s %.0fms size=%d type=%s client=%s%s", path, status,
                    label, took * 1000, size, ctype, client, extra)
            msg = {200: "ok", 406: "rejected", 401: "unauthorized", 408: "request timeout",
                   413: "too large", 503: "unavailable"}[status]
            # A 408 leaves the body unread: the connection cannot be reused, close it.
            headers = {"Connection": "close"} if status == 408 else None
            return JSONResponse({"msg": msg}, status_code=status, headers=headers)

        def policy(why: str, detail: str = ""):
            if self.opts.on_error == "accept":
                return answer(200, f"FAIL-OPEN({why})", fail_open=why, level=logging.WARNING,
                              extra=f" unchecked upload accepted by --on-error accept{detail}")
            return answer(503, f"fail-closed({why})", reason=why, level=logging.WARNING,
                          extra=detail)

        m.add("inflight")
        try:
            if not self._authorized(path_token, request.headers.get(TOKEN_HEADER)):
                return answer(401, "unauthorized", reason="unauthorized", level=logging.WARNING)
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.opts.max_body:
                size = int(declared)
                return answer(413, "too-large", reason="too_large", level=logging.WARNING)
            try:
                body = await read_body(request, max_body=self.opts.max_body,
                                       timeout=self.opts.body_timeout, budget=self._bodies)
            except BodyTooLarge as exc:
                size = exc.size
                return answer(413, "too-large", reason="too_large", level=logging.WARNING)
            except BodyTimeout as exc:
                size = exc.received
                m.drop("slow_body")
                return answer(408, "slow-body", reason="slow_body", level=logging.WARNING,
                              extra=f" (body not complete within {self.opts.body_timeout:g}s)")
            except BodyBudgetExceeded:
                return policy("overload", " (bodies being received hold the memory budget)")
            except ClientDisconnect:
                log.info("POST %s: client went away before sending the whole body", path)
                return JSONResponse({"msg": "incomplete"}, status_code=400)
            size = len(body)
            if self._waiting >= self._admit_limit:
                return policy("overload", f" ({self._waiting} uploads waiting for verdicts)")
            assert self._loop is not None and self._queue is not None
            up = Upload(body, ctype, client, iso(), time.time(),
                        secrets.token_hex(6), self._loop.create_future())
            del body
            if self._queue.qsize() + len(self._preparing) >= self.opts.queue:
                # Waiting = being prepared or queued for the batch (an upload the timeout
                # policy answered still waits, and is still checked). Not checked now; not
                # recorded either (the batch thread is the only writer and it is the
                # bottleneck): the log line is the record.
                return policy("overload", f" (queue of {self.opts.queue} full)")
            self.submit(up)
            remaining = self.opts.timeout - (time.monotonic() - t0)
            self._waiting += 1
            try:
                out: Outcome = await asyncio.wait_for(asyncio.shield(up.future),
                                                      max(remaining, 0.0))
            except asyncio.TimeoutError:
                up.answered_by_policy = f"timeout-{self.opts.on_error}"
                return policy("timeout", f" (no verdict within {self.opts.timeout:g}s; the "
                                         "upload is still checked and recorded)")
            finally:
                self._waiting -= 1
            sha = f" sha256={out.sha256[:16]}" if out.sha256 else ""
            if out.verdict == "flagged":
                sealed = (f" sealed={out.entry_id}" if out.entry_id else " NOT-SEALED")
                return answer(406, "flagged", reason="flagged", level=logging.WARNING,
                              extra=f"{sha} incident={out.incident_id}{sealed} "
                                    f"method={out.method}")
            if out.verdict in ("clean", "unreadable"):
                return answer(200, out.verdict, extra=sha)
            return policy("error", f"{sha} ({out.reason})")
        finally:
            m.add("inflight", -1)

    async def healthz(self, request: Any) -> Any:
        from starlette.responses import JSONResponse
        ok = self.healthy
        return JSONResponse({"status": "ok" if ok else "worker stopped",
                             "model_loaded": self.metrics.model_loaded,
                             "model_id": getattr(self.classifier, "model_id", None),
                             "queue_depth": self._queue.qsize() if self._queue else 0},
                            status_code=200 if ok else 503)

    async def metrics_endpoint(self, request: Any) -> Any:
        from starlette.responses import Response
        return Response(self.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")


# --- wiring ------------------------------------------------------------------------------------

def open_validator(settings: Any, *, classifier: Classifier | None = None) -> Validator:
    """Check the options, open the state DB and vault, load the model (unless given), finish
    seals a crash interrupted, and record the start of the run. Fails fast (exit 2/3) before
    anything listens."""
    from fsq.ledger.db import connect
    from fsq.runtime import (build_classifier, build_quarantiner, load_concept_set,
                             public_key_path, scan_config)

    opts = ServeOptions.from_settings(settings)
    if not public_key_path(settings).exists():
        raise ConfigError(f"vault public key {public_key_path(settings)} not found: run "
                          "`fsq init` (elsewhere, keeping the private key there) and copy "
                          "vault.pub here, or set FSQ_VAULT_PUBLIC_KEY")
    concepts = load_concept_set(settings)
    cfg = scan_config(settings, dry_run=False, rescan=False, mode="serve", concepts=concepts)
    known = load_hash_lists(cfg.hash_lists)
    quarantiner = build_quarantiner(settings)  # the vault public key is all it needs
    if classifier is None:
        classifier = build_classifier(settings, concepts)
    conn = connect(settings.db)
    try:
        unfinished = conn.execute(
            f"SELECT COUNT(*) FROM vault_entries WHERE source=? AND state IN "
            f"({','.join('?' * len(UNFINISHED))})", (UPLOAD_SOURCE, *UNFINISHED)).fetchone()[0]
        if unfinished:
            counts = quarantiner.recover(conn, {UPLOAD_SOURCE: None})
            log.warning("finished %d upload seal(s) a previous run left: %s", unfinished,
                        counts)
        run_id = state.start_run(conn, UPLOAD_SOURCE, "serve", dry_run=False)
    except BaseException:
        conn.close()
        raise
    if opts.token is None:
        log.warning("no FSQ_SERVE_TOKEN: any local process can call /validate (allowed on "
                    "loopback only)")
    return Validator(conn=conn, classifier=classifier, quarantiner=quarantiner, scan_cfg=cfg,
                     opts=opts, known=known, run_id=run_id, workers=settings.workers,
                     db_path=settings.db, decode_workers=settings.decode_workers)


def create_app(validator: Validator) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    @asynccontextmanager
    async def lifespan(app: Any):
        await validator.start()
        try:
            yield
        finally:
            await validator.stop()

    return Starlette(routes=[
        Route("/validate", validator.handle, methods=["POST"]),
        Route("/validate/{token}", validator.handle, methods=["POST"]),
        Route("/healthz", validator.healthz, methods=["GET"]),
        Route("/metrics", validator.metrics_endpoint, methods=["GET"]),
    ], lifespan=lifespan)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so a busy port is a one-line error (and port 0 works)."""
    from fsq.errors import ExternalError
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ExternalError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another "
                            "--listen address or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, opts: ServeOptions, metrics: Metrics | None = None) -> Any:
    """uvicorn with fsq's guarded h11 protocol (header timeout, connection cap that keeps
    room for real uploads; fsq.server.http). uvicorn's own ``limit_concurrency`` stays off: it
    counts idle connections too and would answer 503 to real uploads during a flood."""
    import uvicorn
    limits = ConnectionLimits(header_timeout=opts.header_timeout,
                              max_connections=fit_connections(opts.max_connections))
    count = metrics.drop if metrics is not None else (lambda kind: None)
    config = uvicorn.Config(
        app, lifespan="on", log_config=None,
        access_log=False,          # it would print /validate/TOKEN; we log redacted lines
        server_header=False, ws="none", proxy_headers=False,
        http=guarded_protocol(limits, count),
        backlog=min(4096, max(128, limits.max_connections)),
        timeout_graceful_shutdown=int(opts.timeout) + 5,
        timeout_keep_alive=30)
    return uvicorn.Server(config)


def serve_forever(settings: Any, *, classifier: Classifier | None = None) -> None:
    """Run until SIGTERM/SIGINT (graceful: answers in flight, queue drained, run recorded)."""
    import signal

    validator = open_validator(settings, classifier=classifier)
    try:
        sock = bind_socket(validator.opts.host, validator.opts.port)
    except BaseException:
        validator.close()
        raise
    fsq_log = logging.getLogger("fsq")
    uv = logging.getLogger("uvicorn")
    for h in fsq_log.handlers:
        uv.addHandler(h)
    uv.setLevel(fsq_log.level or logging.INFO)
    uv.propagate = False
    server = make_server(create_app(validator), validator.opts, validator.metrics)
    host = f"[{validator.opts.host}]" if ":" in validator.opts.host else validator.opts.host
    log.info("validating uploads at http://%s:%d/validate%s (on error: %s, timeout %gs, "
             "max body %d bytes, batch %d / %d ms, queue %d; header/body timeouts %g/%gs, "
             "max %d connections)", host, sock.getsockname()[1],
             "/<token>" if validator.opts.token else "", validator.opts.on_error,
             validator.opts.timeout, validator.opts.max_body, validator.opts.batch_size,
             validator.opts.batch_wait_ms, validator.opts.queue,
             validator.opts.header_timeout, validator.opts.body_timeout,
             server.config.http._limits.max_connections)
    if validator.opts.timeout >= PICTRS_TIMEOUT_S:
        log.warning("--timeout %gs is not below pict-rs's default 30 s: pict-rs may give up "
                    "first (and reject) before the on-error policy answers",
                    validator.opts.timeout)
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; a no-op
    # SIGTERM handler makes that a normal return (exit 0) instead of death by signal.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        validator.close()  # no-op if the lifespan shutdown already did it
