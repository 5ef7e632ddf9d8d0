"""The scan loop (ARCHITECTURE.md "Data flow"). Knows nothing of click.

    list -> unchanged? skip -> fetch (RAM) -> sha256/md5 -> allowlist / hash lists / cached
    verdict -> decode -> preprocess -> classify in batches -> record -> act

Threads: the listing runs in the caller's thread; fetch, hash, decode and preprocess run on a
small pool of worker threads (Pillow and hashlib release the GIL), so they overlap with model
inference, which runs in the caller's thread and uses torch's own intra-op threads. The number
of objects in flight is bounded (``_inflight``), so memory stays flat on a store of millions.

The caller's thread is the only writer to the state database. Workers read through their own
connections (WAL allows concurrent readers). The scanner's own bookkeeping (object rows,
verdicts, incidents and their audit events) is committed in small groups rather than one
fsync'd transaction per statement (synchronous=FULL: about 1 ms each): the writes of one
listing step, or the verdicts of one model batch, share a commit. A group is committed before
the writer thread waits for anything (a worker, the model, the next listing step) and before
any quarantine, whose journal keeps its own transactions; so the write lock is never held
across inference, I/O or a network call. Each verdict stays atomic with its object row,
incident and audit event (a savepoint inside the group). A crash loses at most the open group;
those objects are not recorded as done, so the next pass does them again.

Invariant 6: every object that is not skipped ends as clean, flagged, unreadable or error, with
a reason, and the summary counts them. No name stops a pass: a listed key fsq cannot represent
or act on safely (``fsq.names.key_problem``) is recorded skipped with the reason, whatever the
source; a key the source refuses on read, or an object that changes under fsq (read, or
between classification and the move), is an error on that object. Exceptions of the
*storage itself* (SourceError) stop the pass and are re-raised after the run is recorded as
failed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from typing import AbstractSet, Any, Callable, Protocol

from fsq.classify import frameskip
from fsq.errors import FsqError, UsageError
from fsq.media import Decoded, DecodeRequest, Unreadable, decode, hashes, sniff
from fsq.ledger import audit, state
from fsq.ledger.db import atomic, connect, transaction
from fsq.names import db_key, display_key, key_problem
from fsq.sources.base import ObjectChanged, ObjectError, ObjectInfo, Source
from fsq.signals import match as signals

log = logging.getLogger("fsq.scan")

# How far back of the previous pass's listing start the daemon still re-checks objects
# (clock skew between this host and the store, S3 LastModified = upload start).
CURSOR_MARGIN_S = 900.0


@dataclass
class Summary:
    run_id: int | None = None
    listed: int = 0
    scanned: int = 0
    skipped: int = 0
    clean: int = 0
    flagged: int = 0
    unreadable: int = 0
    errors: int = 0
    classified: int = 0       # went through the model
    reused: int = 0           # identical content already had a verdict
    inherited: int = 0        # a pict-rs variant/motion file took its original's verdict
    quarantined: int = 0
    quarantine_failed: int = 0
    stale: int = 0            # decided under other decision settings (fsq.ledger.stale)
    stale_changed: list[str] = field(default_factory=list)  # what differs: model, severity...
    dry_run: bool = False
    status: str = "running"
    seconds: float = 0.0
    problems: list[dict[str, str]] = field(default_factory=list)  # unreadable/error/skipped

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in (
            "listed", "scanned", "skipped", "clean", "flagged", "unreadable", "errors",
            "classified", "reused", "quarantined", "quarantine_failed")}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


class Classifier(Protocol):
    """What the pipeline needs from fsq.classify.clip.ClipClassifier."""

    model_id: str

    def preprocess(self, img: Any) -> Any: ...

    def classify_items(self, items: list[list[Any]]) -> list[tuple[Any, int]]: ...


class Actor(Protocol):
    """Acts on a flagged object (fsq.quarantine.move.Quarantiner)."""

    def quarantine(self, conn: sqlite3.Connection, *, source: Source, object_id: int,
                   key: str, data: bytes, sha256: str, md5: str, incident_id: int,
                   media_type: str | None) -> None: ...


@dataclass
class ScanConfig:
    dry_run: bool = True
    rescan: bool = False
    unreadable: str = "skip"           # skip | flag
    max_bytes: int = 200 * 1024 * 1024
    max_pixels: int = 64_000_000
    batch_size: int = 8
    workers: int = 2
    decode_workers: int = 2            # processes of the decode pool (fsq.media.pool)
    decode_seconds: float = 10.0       # CPU budget of one file
    decode_pixels: int = 1_000_000_000  # pixel budget of one file (screen x frames walked)
    max_frames: int = 32               # frames sampled from an animation or video
    frame_skip: float = 2.0            # near-identical frames not classified again (0 = off)
    max_video_seconds: int = 3600      # longer videos are unreadable (checked before decoding)
    appended_data: str = "flag"        # flag | record: data past a file's real end
    mode: str = "all"                  # all | daemon
    hash_lists: tuple[str, ...] = ()
    pdq_distance: int = signals.DEFAULT_DISTANCE            # unsafe banks (FSQ_PDQ_DISTANCE)
    pdq_safe_distance: int = signals.DEFAULT_SAFE_DISTANCE  # safe bank (FSQ_PDQ_SAFE_DISTANCE)
    concepts_digest: str | None = None
    severity: str | None = None
    rule_version: str | None = None
    settings_digest: str | None = None   # tags model verdicts; see fsq.ledger.stale
    rescan_stale: bool = False           # re-decide objects decided under other settings
    # Everything that can change a verdict, recorded with each run; a difference from the
    # previous run of the same source is audited as settings.changed.
    decision_settings: dict[str, Any] = field(default_factory=dict)
    # Peer attestations (fsq.exchange.trust.TrustPolicy): (conn, sha256, md5) -> verdict|None
    trust: Callable[..., state.VerdictRecord | None] | None = None


@dataclass
class _Item:
    info: ObjectInfo
    object_id: int
    data: bytes | None = None
    sha256: str | None = None
    md5: str | None = None
    verdict: state.VerdictRecord | None = None   # decided without the model
    decoded: Decoded | None = None
    tensors: list[Any] | None = None
    error: str | None = None
    pdq: list[Any] = field(default_factory=list)  # fsq.signals.pdq.FrameHash per frame
    embeddings: Any = None  # frame embeddings of a clean model verdict (fsq.ledger.embeddings)
    # Set by an engine that prepared and classified the object elsewhere (fsq.engine.ray_engine):
    # the bytes stayed on the worker, so ``data`` is None and these say what it read.
    size: int | None = None
    classified: bool = False
    # pict-rs variant linkage (fsq.engine.variants): what the repo said about this key, the
    # original's decision it inherits, and whether it already waited for its original.
    link: Any = None
    parent: Any = None
    deferred: bool = False


def load_hash_lists(paths: tuple[str, ...]) -> dict[str, str]:
    """hex digest -> list file name. Lines: hex sha256 (64) or md5 (32); '#' comments."""
    from fsq.errors import ConfigError
    known: dict[str, str] = {}
    for p in paths:
        try:
            with open(p, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    h = line.split("#", 1)[0].strip().lower()
                    if not h:
                        continue
                    h = h.split()[0]
                    if len(h) not in (32, 64) or any(c not in "0123456789abcdef" for c in h):
                        raise ConfigError(f"{p}:{n}: not a hex MD5 or SHA-256 "
                                          "(FSQ_HASH_LISTS)")
                    known[h] = p.rsplit("/", 1)[-1]
        except OSError as exc:
            raise ConfigError(f"cannot read hash list {p} (FSQ_HASH_LISTS): "
                              f"{exc.strerror}") from None
    return known


class Scanner:
    def __init__(self, conn: sqlite3.Connection, source: Source, config: ScanConfig, *,
                 classifier_factory: Callable[[], Classifier],
                 actor: Actor | None = None,
                 progress: Callable[[Summary, int | None], None] | None = None,
                 db_path: str | None = None, engine: Any = None,
                 variants: Any = None) -> None:
        self.conn = conn
        self.source = source
        self.cfg = config
        self._factory = classifier_factory
        self._classifier: Classifier | None = None
        self._clf_lock = threading.Lock()
        self.actor = actor
        self.progress = progress
        self.db_path = db_path
        self.known = load_hash_lists(config.hash_lists)
        self.pdq = signals.PdqMatcher(config.pdq_distance, config.pdq_safe_distance)
        self._local = threading.local()
        self._stop = threading.Event()
        self._decoder: Any = None  # fsq.media.DecodePool while a pass runs
        # How a pass is executed (fsq.engine): local threads unless told otherwise.
        if engine is None:
            from fsq.engine.local import LocalEngine
            engine = LocalEngine()
        self.engine = engine
        # Variants and motion files take their original's verdict (fsq.engine.variants.
        # VariantPlanner); None = every file is classified.
        self.variants = variants

    # -- classifier (loaded on first need: a rescan of an unchanged store never loads it) ----

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            with self._clf_lock:
                if self._classifier is None:
                    self._classifier = self._factory()
        return self._classifier

    def stop(self) -> None:
        """Ask a running pass to stop after the items in flight (SIGTERM/SIGINT)."""
        self._stop.set()

    # -- grouped bookkeeping writes (writer thread only) ------------------------------------

    def _begin(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def _end_group(self) -> None:
        """At the end of a pass, also a failed one: keep what was recorded if possible."""
        if not self.conn.in_transaction:
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            log.exception("could not commit the last scan records; they are redone next pass")
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _result(self, fut: Future[_Item]) -> _Item:
        if not fut.done():
            self._commit()  # do not hold the write lock while waiting for a worker
        return fut.result()

    # -- worker side ------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = connect(self.db_path) if self.db_path else self.conn
            self._local.conn = c
        return c

    def _fetch(self, item: _Item) -> bool:
        """Any thread: read and hash the object; False (``item.error`` set) if it failed."""
        try:
            data = self.source.read(item.info.key, max_bytes=self.cfg.max_bytes)
        except ObjectError as exc:
            item.error = exc.reason
            return False
        except UsageError as exc:  # the source refused the key itself: this object only
            item.error = f"key refused: {exc.message}"
            return False
        item.data = data
        item.sha256, item.md5 = hashes(data)
        return True

    def _prepare(self, item: _Item) -> _Item:
        """Runs on a worker thread: fetch, hash, cheap checks, decode, preprocess."""
        if not self._fetch(item):
            return item
        data = item.data
        assert data is not None
        self._early_verdict(item, lambda: sniff(data))
        if item.verdict is not None:
            return item
        item.decoded, item.verdict = decode_or_verdict(data, self.cfg, self._decoder)
        if item.verdict is not None:
            return item
        assert item.decoded is not None
        item.pdq, item.verdict = signals.check_decoded(self.pdq, item.decoded)
        if item.verdict is not None:  # a bank decided: no model
            item.decoded.frames = []
            return item
        clf = self.classifier
        item.tensors = frameskip.preprocess_frames(clf.preprocess, item.decoded,
                                                   self.cfg.frame_skip, clf)
        item.decoded.frames = []  # free the PIL frames; tensors are what we keep
        return item

    def _early_verdict(self, item: _Item, media_type: Callable[[], str | None]) -> None:
        """The verdict decided without decoding (``precheck``), if any, into ``item.verdict``.
        Any thread (reads through its own connection); every engine calls it."""
        assert item.sha256 is not None and item.md5 is not None
        item.verdict = precheck(self._reader(), item.sha256, item.md5, self.known,
                                use_cache=not self.cfg.rescan, trust=self.cfg.trust,
                                settings_digest=self.cfg.settings_digest)
        if (item.verdict is not None and item.verdict.method == "cache"
                and item.verdict.outcome == "unreadable" and self.cfg.unreadable == "flag"):
            item.verdict = None  # the policy changed since: unreadable content now flags
        if item.verdict is not None and item.verdict.media_type is None:
            item.verdict.media_type = media_type()  # decided without decoding

    # -- the pass ---------------------------------------------------------------------------

    def run_pass(self) -> Summary:
        s = Summary(dry_run=self.cfg.dry_run)
        t0 = time.monotonic()
        src = self.source.url
        run_id = state.start_run(self.conn, src, self.cfg.mode, self.cfg.dry_run,
                                 settings=self.cfg.decision_settings or None)
        s.run_id = run_id
        stale_ids = self._stale(s)
        self.pdq.refresh(self.conn)  # bank entries added since the last pass count now
        since = None
        if self.cfg.mode == "daemon" and not self.cfg.rescan and not stale_ids:
            cur = state.get_cursor(self.conn, src)
            since = None if cur is None else cur - CURSOR_MARGIN_S
        listing_started = time.time()
        engine = self.engine
        inflight: deque[Future[_Item]] = deque()
        ready: list[_Item] = []
        status = "finished"
        error: str | None = None
        try:
            # Inside the try: an engine that cannot start (a Ray cluster out of reach) ends
            # the run as failed, with its reason, not as 'running' forever.
            engine.start(self)
            if self.variants is not None:
                self.variants.start(self)
            limit = engine.limit()  # objects in flight: memory stays flat on any listing
            for info, link in self._linked(self._listing(since)):
                if self._stop.is_set():
                    status = "interrupted"
                    break
                s.listed += 1
                item = self._admit(info, s, run_id, stale_ids)
                if item is not None:
                    item.link = link
                    self._submit(item, inflight)
                while inflight and (len(inflight) >= limit or inflight[0].done()):
                    ready.append(self._result(inflight.popleft()))
                    ready = self._drain(ready, s, final=False)
                    self._resubmit(inflight)
                self._commit()  # before the next listing step, which may wait on the network
                if self.progress:
                    self.progress(s, None)
            while True:
                if inflight:
                    ready.append(self._result(inflight.popleft()))
                    ready = self._drain(ready, s, final=False)
                elif ready:
                    ready = self._drain(ready, s, final=True)
                elif (self.variants is None or self._stop.is_set()
                      or not self.variants.flush()):
                    break  # (variants still waiting after a stop stay pending: next pass)
                self._resubmit(inflight)
            self._end_group()
            if status == "finished":
                with transaction(self.conn):
                    state.set_cursor(self.conn, src, listing_started)
        except BaseException as exc:
            status = "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
            error = str(exc) if isinstance(exc, FsqError) else exc.__class__.__name__
            for f in inflight:
                f.cancel()
            raise
        finally:
            engine.close()
            if self.variants is not None:
                self.variants.close()
            self._end_group()
            s.status = status
            s.seconds = time.monotonic() - t0
            try:
                state.finish_run(self.conn, run_id, status, s.counts(), error)
            except sqlite3.Error:  # never mask the original failure
                log.exception("could not record the end of run %s", run_id)
            if self.progress:
                self.progress(s, s.listed)
        return s

    def _linked(self, infos):
        """(info, pict-rs link or None): the variant planner asks the repo once per batch."""
        if self.variants is None:
            return ((info, None) for info in infos)
        return self.variants.listing(infos)

    def _submit(self, item: _Item, inflight: deque) -> None:
        """Hand an admitted object to the engine, or, for a pict-rs variant or motion file,
        to the variant planner (inherit its original's decision, or wait for it)."""
        how = self.variants.route(item) if self.variants is not None else "scan"
        if how == "inherit":
            inflight.append(self.variants.submit(item))
        elif how == "scan":
            inflight.append(self.engine.submit(item))

    def _resubmit(self, inflight: deque) -> None:
        """Variants whose original was just recorded (or, at the end, still waiting)."""
        if self.variants is not None:
            for item in self.variants.take():
                self._submit(item, inflight)

    def _listing(self, since: float | None):
        for info in self.source.list():
            if since is not None and info.skip_reason is None and info.mtime < since:
                # Existed before the previous complete pass began listing: seen then.
                continue
            yield info

    def _stale(self, s: Summary) -> set[int]:
        """Count objects decided under other settings; their ids if they are to be redone."""
        if self.cfg.settings_digest is None:
            return set()
        from fsq.ledger.stale import stale_objects
        found = stale_objects(self.conn, self.source.url, digest=self.cfg.settings_digest,
                              concepts_digest=self.cfg.concepts_digest,
                              severity=self.cfg.severity, rule_version=self.cfg.rule_version)
        s.stale = len(found)
        s.stale_changed = sorted({w for f in found for w in f["changed"]})
        return {f["object_id"] for f in found} if self.cfg.rescan_stale else set()

    def _admit(self, info: ObjectInfo, s: Summary, run_id: int,
               stale_ids: AbstractSet[int] = frozenset()) -> _Item | None:
        """Decide in the writer thread whether an object needs fetching."""
        if info.skip_reason is None:
            # Whatever the source: a name fsq cannot represent or act on is skipped, with
            # the reason, never read (a name must never stop the pass).
            problem = key_problem(info.key)
            if problem is not None:
                info = replace(info, skip_reason=problem)
        row = state.get_object(self.conn, self.source.url, info.key)
        if info.skip_reason is not None:
            self._begin()
            oid = state.touch_object(self.conn, self.source.url, info.key, info.size,
                                     info.mtime, run_id)
            if row is None or row["status"] != "skipped" or row["reason"] != info.skip_reason:
                state.set_object_result(self.conn, oid, status="skipped",
                                        reason=info.skip_reason)
            s.skipped += 1
            s.problems.append({"key": db_key(info.key), "status": "skipped",
                               "reason": info.skip_reason})
            return None
        if not self.cfg.rescan and state.unchanged(row, info.size, info.mtime) \
                and not (row is not None and row["id"] in stale_ids):
            s.skipped += 1
            return None
        self._begin()
        oid = state.touch_object(self.conn, self.source.url, info.key, info.size, info.mtime,
                                 run_id)
        return _Item(info, oid)

    def _drain(self, ready: list[_Item], s: Summary, final: bool) -> list[_Item]:
        """Record items that need no model now; classify the rest in batches."""
        pending: list[_Item] = []
        for it in ready:
            if it.tensors is None:
                s.classified += it.classified  # classified by the engine (fsq.engine.ray_engine)
                self._record(it, s)
            else:
                pending.append(it)
        frames = sum(len(it.tensors or ()) for it in pending)
        if pending and (final or frames >= self.cfg.batch_size):
            self._classify(pending, s)
            pending = []
        return pending

    def _classify(self, items: list[_Item], s: Summary) -> None:
        self._commit()  # never hold the write lock across inference (or the model's loading)
        clf = self.classifier
        # Identical content twice in one batch/run: classify once.
        results = clf.classify_items([it.tensors for it in items])
        for it, (decision, frame) in zip(items, results):
            assert it.decoded is not None
            it.verdict = clip_verdict(decision, frame, it.decoded, clf.model_id, self.cfg)
            if it.verdict.method == "clip" and it.verdict.outcome == "clean":
                # Kept for `fsq rescore`; flagged content's are never kept (evidence).
                it.embeddings = getattr(decision, "embeddings", None)
            it.tensors = None
            s.classified += 1
            self._record(it, s)
        self._commit()  # identical content queued behind this batch finds these verdicts

    def _record(self, it: _Item, s: Summary) -> None:
        key = it.info.key
        s.scanned += 1
        self._begin()
        if it.error is not None:
            state.set_object_result(self.conn, it.object_id, status="error", reason=it.error)
            s.errors += 1
            s.problems.append({"key": key, "status": "error", "reason": it.error})
            return
        v = it.verdict
        assert v is not None and it.sha256 is not None and it.md5 is not None
        if v.method == "cache":
            s.reused += 1
        recorder = record_verdict
        if self.variants is not None:
            from fsq.engine.variants import METHOD, record_inherited
            if v.method == METHOD:
                s.inherited += 1
                recorder = record_inherited  # a flagged one joins the original's incident
        vid, incident_id = recorder(
            self.conn, object_id=it.object_id, sha256=it.sha256, md5=it.md5,
            size=len(it.data) if it.data is not None else (it.size or 0), verdict=v,
            audit_details={"source": self.source.url, "key": key,
                           "dry_run": self.cfg.dry_run})
        if it.embeddings is not None and v.outcome == "clean" and v.model_id:
            from fsq.ledger import embeddings
            embeddings.store(self.conn, it.sha256, v.model_id, it.embeddings,
                             precision=getattr(self.classifier, "precision", None),
                             verdict_id=vid)
            it.embeddings = None
        if it.pdq:
            signals.store_pdq(self.conn, it.sha256, it.pdq)
        if v.outcome == "clean":
            s.clean += 1
        elif v.outcome == "unreadable":
            s.unreadable += 1
            s.problems.append({"key": key, "status": "unreadable", "reason": v.reason or ""})
        elif v.outcome == "flagged":
            s.flagged += 1
            if (v.details or {}).get("review_only"):
                # A peer's unsafe statement asks a person first; never quarantined by itself
                # (status 'review' also keeps `fsq apply` away from it).
                state.set_object_result(self.conn, it.object_id, status="review",
                                        reason=v.reason)
            elif not self.cfg.dry_run and self.actor is not None:
                # The verdict and incident are durable before the move starts; the journal
                # runs its own transactions.
                self._commit()
                try:
                    data = it.data if it.data is not None else self._reread(it)
                    self.actor.quarantine(self.conn, source=self.source,
                                          object_id=it.object_id, key=key, data=data,
                                          sha256=it.sha256, md5=it.md5,
                                          incident_id=int(incident_id),  # type: ignore[arg-type]
                                          media_type=v.media_type)
                    s.quarantined += 1
                except ObjectChanged as exc:
                    # Rewritten since it was read: nothing was removed (the move rolled back);
                    # an error on this object, classified again next pass.
                    self._begin()
                    state.set_object_result(self.conn, it.object_id, status="error",
                                            reason=exc.reason)
                    s.flagged -= 1
                    s.errors += 1
                    s.problems.append({"key": key, "status": "error", "reason": exc.reason})
                    log.warning("not quarantined %s: %s", display_key(key), exc.reason)
                except ObjectError as exc:
                    s.quarantine_failed += 1
                    s.problems.append({"key": key, "status": "quarantine-failed",
                                       "reason": exc.reason})
                    log.warning("could not quarantine %s: %s", display_key(key), exc.reason)
        it.data = None
        if self.variants is not None:
            self.variants.recorded(it.sha256)  # its waiting variants may go now

    def _reread(self, it: _Item) -> bytes:
        """The bytes of an object prepared elsewhere (fsq.engine.ray_engine: they stayed on the
        worker), read again by the coordinator, as `fsq apply` does: only bytes that still hash
        to the classified sha256 are ever sealed."""
        data = self.source.read(it.info.key, max_bytes=self.cfg.max_bytes)
        if hashes(data)[0] != it.sha256:
            raise ObjectChanged(it.info.key, "content changed since it was classified")
        return data


# --- steps shared with the upload-time server (fsq.server.validate) ----------------------------

def precheck(db: sqlite3.Connection, sha256: str, md5: str, known: dict[str, str], *,
             use_cache: bool = True, trust: Callable[..., state.VerdictRecord | None] | None
             = None, settings_digest: str | None = None) -> state.VerdictRecord | None:
    """The checks that decide without decoding, in order: allowlist (released content is never
    flagged again), known-hash lists (flag without the model), hash banks (exact sha256/md5,
    fsq.signals.match; local decisions, so before any peer), trusted peers' attestations
    (``trust``), and, with ``use_cache``, the latest conclusive verdict for identical content.
    None = decode and classify."""
    if state.is_allowlisted(db, sha256):
        return state.VerdictRecord("clean", "allowlist",
                                   "content is allowlisted (released earlier)")
    hit = known.get(sha256) or known.get(md5)
    if hit:
        matched = "sha256" if sha256 in known else "md5"
        return state.VerdictRecord("flagged", "hash-list", f"{matched} listed in {hit}",
                                   details={"hash_list": hit, "matched": matched})
    banked = signals.exact_match(db, sha256, md5)  # hash banks (fsq.signals)
    if banked is not None:
        return banked
    if trust is not None:
        attested = trust(db, sha256, md5)
        if attested is not None:
            return attested
    if use_cache:
        cached = state.cached_verdict(db, sha256, settings_digest)
        if cached is not None:
            v = state.VerdictRecord(cached["outcome"], "cache", cached["reason"],
                                    details={"reused_verdict": cached["id"]})
            v.media_type = cached["media_type"]
            v.settings_digest = cached["settings_digest"]  # a reuse keeps its origin's tag
            return v
    return None


def decode_request(cfg: ScanConfig) -> DecodeRequest:
    # The video time budget stays under the pool's CPU budget, so a slow video ends with the
    # frames it has (classified) rather than being killed with none.
    return DecodeRequest(max_pixels=cfg.max_pixels, budget_pixels=cfg.decode_pixels,
                         max_frames=cfg.max_frames, max_video_seconds=cfg.max_video_seconds,
                         video_budget_ms=int(cfg.decode_seconds * 800))


def decode_or_verdict(data: bytes, cfg: ScanConfig, decoder: Any = None
                      ) -> tuple[Decoded | None, state.VerdictRecord | None]:
    """Decode for the classifier (in ``decoder``, a fsq.media.DecodePool, if given);
    undecodable bytes get their verdict from ``cfg.unreadable``. Exactly one of the two
    results is None."""
    req = decode_request(cfg)
    try:
        return (decoder.decode(data, req) if decoder is not None else decode(data, req)), None
    except Unreadable as exc:
        details = {"decode": exc.kind, **({"budget": exc.facts} if exc.kind == "budget"
                                         else {})}
        return None, unreadable_verdict(exc.reason, exc.media_type, cfg, details)


def unreadable_verdict(reason: str, media_type: str | None, cfg: ScanConfig,
                       details: dict[str, Any] | None = None, **facts: Any
                       ) -> state.VerdictRecord:
    """Content fsq could not (fully) examine: ``cfg.unreadable`` decides (skip ->
    'unreadable', flag -> 'flagged')."""
    if cfg.unreadable == "flag":
        return state.VerdictRecord("flagged", "unreadable-policy", f"unreadable: {reason}",
                                   media_type=media_type, details=details, **facts)
    return state.VerdictRecord("unreadable", "decode", reason, media_type=media_type,
                               details=details, **facts)


def clip_verdict(decision: Any, frame: int, d: Decoded, model_id: str, cfg: ScanConfig
                 ) -> state.VerdictRecord:
    """The verdict record of one classified file (``frame``: index of the deciding frame
    among the sampled ones). Truncation facts go beside the scores (and into the reason); a
    file that was not fully examined (``d.incomplete``: pixel budget, a bomb in a later
    frame) and did not flag on what was examined is not 'clean' but unreadable. Data past the
    file's real end (``d.appended``) flags it under ``cfg.appended_data == 'flag'`` even when
    no frame does (method ``container``); its embedded images are among the frames."""
    plan = getattr(d, "frame_plan", None)
    if plan is not None:  # near-identical frames took the decision of the frame they matched
        frame = plan.expand(decision, frame)
    details = decision.to_json()
    details["frame"] = d.sampled[frame] if d.sampled else frame
    details["frames_sampled"] = d.sampled
    if d.labels:
        details["frame_label"] = d.labels[frame] if frame < len(d.labels) else None
    per_frame = getattr(decision, "per_frame", None)
    if per_frame and len(per_frame) > 1:
        # Which frames fired (label, timestamp for video) and how close each one came.
        details["frames"] = [{**f, "label": d.labels[f["index"]] if f["index"] < len(d.labels)
                              else None} for f in per_frame]
    if plan is not None:
        details["frame_skip"] = plan.to_json()
    details.update(d.facts())
    reason = _reason(decision)
    if d.truncated:
        reason += "; " + details["truncated_reason"]
    if d.labels and (decision.flagged and len(d.labels) > 1) and frame < len(d.labels):
        reason += f" (at {d.labels[frame]})"
    common = dict(model_id=model_id, concepts_digest=cfg.concepts_digest,
                  severity=cfg.severity, rule_version=cfg.rule_version,
                  media_type=d.media_type, width=d.width, height=d.height, frames=d.n_frames,
                  settings_digest=cfg.settings_digest)
    if d.appended and not decision.flagged:
        suspicious = f"suspicious: {d.appended['reason']}"
        if cfg.appended_data == "flag":
            return state.VerdictRecord("flagged", "container", suspicious, details=details,
                                       **common)
        reason += f"; {suspicious} (recorded, FSQ_APPENDED_DATA=record)"
    elif d.appended:
        reason += f"; {d.appended['reason']}"
    if d.incomplete and not decision.flagged:
        return unreadable_verdict(
            d.incomplete, d.media_type, cfg, details, model_id=model_id,
            concepts_digest=cfg.concepts_digest, severity=cfg.severity,
            rule_version=cfg.rule_version, width=d.width, height=d.height,
            frames=d.n_frames)
    return state.VerdictRecord("flagged" if decision.flagged else "clean", "clip", reason,
                               details=details, **common)


def record_verdict(conn: sqlite3.Connection, *, object_id: int, sha256: str, md5: str,
                   size: int, verdict: state.VerdictRecord, audit_details: dict[str, Any],
                   origin: str = "scan") -> tuple[int, int | None]:
    """In one transaction: the verdict row, the object's result and, if flagged, the incident
    and a 'flagged' audit event (``audit_details`` plus sha256, verdict id, method, reason).
    Returns (verdict id, incident id or None). Inside a caller's transaction (the scanner's
    write group) the same writes form a savepoint, still all or nothing."""
    v = verdict
    with atomic(conn):
        vid = state.insert_verdict(conn, sha256, v)
        state.set_object_result(conn, object_id, status=v.outcome, reason=v.reason,
                                size=size, sha256=sha256, md5=md5,
                                media_type=v.media_type, verdict_id=vid)
        incident_id = None
        if v.outcome == "flagged":
            incident_id, _ = state.ensure_incident(
                conn, sha256=sha256, md5=md5, size=size, media_type=v.media_type,
                width=v.width, height=v.height, verdict_id=vid, origin=origin)
            audit.append(conn, "flagged", f"incident:{incident_id}",
                         {**audit_details, "sha256": sha256, "verdict_id": vid,
                          "method": v.method, "reason": v.reason})
    return vid, incident_id


def _reason(decision: Any) -> str:
    fired = [f["text"] for f in getattr(decision, "fired", [])]
    if decision.flagged:
        return "concept rule: " + ", ".join(fired)
    return "below rule" + (f" (fired: {', '.join(fired)})" if fired else "")
