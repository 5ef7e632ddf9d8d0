"""Each image decided once: pict-rs variants and motion files take their original's verdict.

A pict-rs store holds each upload several times: the original, its variants (thumbnails,
resizes) and, for a video or animation, a motion still. pict-rs makes them all from the
original, so they are decided with it (reference pictrs-lemmy.md: "variants of a flagged
original are flagged content too"). With the pict-rs repo configured (FSQ_PICTRS_DATABASE_URL,
FSQ_VARIANT_LINKAGE=auto) the scanner (fsq.pipeline.Scanner) uses a ``VariantPlanner``:

* Linkage: the listing is read ahead in batches; one repo query per batch says which keys are
  motion files or variants of which original (fsq.lemmy.variants). A repo that cannot be read
  is logged once and the rest of the pass scans every file normally (today's behaviour).
* Order: a derived file is decided only after its original. If the original's decision is in
  the state database already, the file is fetched and hashed (no decoding, no model) and takes
  that decision. Otherwise it is *deferred*: it waits, holding no bytes, until its original is
  recorded in this pass, then takes its decision. Whatever still waits when everything else is
  done - its original is not in the store, or was not decided (unreadable, an error) - is
  scanned normally, like any file.
* Verdict: method ``variant-of``, with the original's identifier, pict-rs hash and SHA-256 and
  the id of the verdict that decided the original in its details (``original_verdict``),
  its model and settings digest copied (so fsq.ledger.stale sees it stale with its original).
* A flagged original takes its derived files into *its* incident: their verdicts are flagged,
  recorded in ``incident_content`` and their bytes are sealed into the same incident (they are
  evidence). A peer's review-only flag stays review-only for them too. ``--dry-run`` records
  the same verdicts and memberships and moves nothing; `fsq apply` later seals them into the
  original's incident. When `fsq rescore` flags an original, the files that had inherited its
  clean verdict are flagged with it (``flag_derived``).

What a derived file never inherits (the state database may have been written by an attacker,
so what it inherits must be a real decision and traceable):

* nothing from a verdict that is not a decision: unreadable, errors, peer attestations, another
  inherited verdict (no chains), a cache reuse whose reused verdict is not there (a cache
  reuse counts as the verdict it reused, and that one is named);
* a model verdict decided under other decision settings (model, concepts, severity), or under
  ``--rescan`` one from before this pass;
* clean, while an incident for the original is open (not released): the incident wins;
* anything over a decision about its *own* bytes: an allowlist entry, a hash list, a hash bank
  or a trusted peer's attestation for the file itself (fsq.pipeline.precheck) comes first, and
  an earlier flagged verdict of its own bytes is never downgraded.

So the worst a forged row can do is what a forged verdict of the original could do anyway; an
inherited clean verdict always names the verdict it came from.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from fsq.errors import ExternalError
from fsq.ledger import audit, state
from fsq.ledger.db import atomic
from fsq.media import sniff
from fsq.names import key_problem
from fsq.timeutil import iso

log = logging.getLogger("fsq.scan")

METHOD = "variant-of"
# Verdict methods that decide content clean (fsq.pipeline.precheck, fsq.signals.match,
# fsq.rescore): the model, an allowlist entry, a safe hash bank (exact or PDQ).
CLEAN_DECISIONS = frozenset({"clip", "rescore", "allowlist", "sha256", "md5", "pdq"})


@dataclass(frozen=True)
class Parent:
    """The decision of an original, as a derived file inherits it."""

    outcome: str                     # clean | flagged
    verdict: sqlite3.Row | None      # the verdict that decided it (a cache reuse resolved)
    incident_id: int | None = None
    review_only: bool = False
    allowlisted: bool = False

    def facts(self) -> dict[str, Any]:
        v = self.verdict
        return {"original_verdict": int(v["id"]) if v is not None else None,
                "original_method": (v["method"] if v is not None
                                    else "allowlist" if self.allowlisted else None),
                "original_incident": self.incident_id,
                **({"original_allowlisted": True} if self.allowlisted else {})}


def _details(row: sqlite3.Row) -> dict[str, Any]:
    try:
        d = json.loads(row["details"] or "{}")
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def original_decision(conn: sqlite3.Connection, sha256: str, *,
                      settings_digest: str | None = None,
                      after_verdict: int | None = None) -> Parent | None:
    """What a derived file of the original with content ``sha256`` inherits now; None = not
    decided (defer, or scan the file normally). ``after_verdict``: only verdicts with a larger
    id count (``--rescan``: decided in this pass)."""
    if state.is_allowlisted(conn, sha256):  # released content is never flagged again
        return Parent("clean", None, allowlisted=True)
    inc = state.incident_for_sha(conn, sha256)
    if inc is not None and inc["state"] != "released":
        # Evidence: whatever verdict came later, the derived files belong with it. (An
        # incident with no flag - a copy preserved before a Lemmy action - decides nothing.)
        last = conn.execute("SELECT * FROM verdicts WHERE sha256=? AND outcome='flagged' "
                            "ORDER BY id DESC LIMIT 1", (sha256,)).fetchone()
        if last is None:
            return None
        return Parent("flagged", last, incident_id=int(inc["id"]),
                      review_only=bool(_details(last).get("review_only")))
    row = state.cached_verdict(conn, sha256, settings_digest)
    if row is None or (after_verdict is not None and row["id"] <= after_verdict):
        return None
    if row["method"] == "cache":  # a reuse counts as the verdict it reused, which must exist
        ref = _details(row).get("reused_verdict")
        real = state.get_verdict(conn, int(ref)) if isinstance(ref, int) else None
        if real is None or real["sha256"] != sha256 or real["outcome"] != row["outcome"]:
            return None if row["outcome"] != "flagged" else Parent("flagged", row)
        row = real
    if row["outcome"] == "flagged":
        return Parent("flagged", row, review_only=bool(_details(row).get("review_only")))
    if row["outcome"] == "clean" and row["method"] in CLEAN_DECISIONS:
        return Parent("clean", row)
    return None  # unreadable, or not a decision


def inherited_verdict(own: state.VerdictRecord | None, parent: Parent, link: Any,
                      media_type: Callable[[], str | None]) -> state.VerdictRecord:
    """The verdict of a derived file: a decision about its own bytes (``own``, from
    fsq.pipeline.precheck) first, an earlier flag of its own bytes never downgraded, else its
    original's."""
    if own is not None and (own.method != "cache" or own.outcome == "flagged"):
        return own
    v = parent.verdict
    what = "motion file" if link.role == "motion" else f"variant {link.variant or '?'}"
    by = (f"{v['method']} verdict {v['id']}" if v is not None
          else "allowlisted" if parent.allowlisted else "its incident")
    details: dict[str, Any] = {**link.facts(), **parent.facts()}
    if parent.review_only:
        details["review_only"] = True
    copied: dict[str, Any] = {}
    if v is not None:
        copied = {k: v[k] for k in ("model_id", "concepts_digest", "severity", "rule_version",
                                    "settings_digest")}
    return state.VerdictRecord(
        parent.outcome, METHOD,
        f"{what} of {link.original_identifier}: original {parent.outcome} ({by})",
        media_type=media_type(), details=details, **copied)


def record_inherited(conn: sqlite3.Connection, *, object_id: int, sha256: str, md5: str,
                     size: int, verdict: state.VerdictRecord, audit_details: dict[str, Any],
                     origin: str = "scan") -> tuple[int, int | None]:
    """fsq.pipeline.record_verdict for a ``variant-of`` verdict: a flagged one joins the
    original's incident (opened if it is missing) instead of opening its own."""
    from fsq.pipeline import record_verdict
    v = verdict
    if v.method != METHOD or v.outcome != "flagged":
        return record_verdict(conn, object_id=object_id, sha256=sha256, md5=md5, size=size,
                              verdict=v, audit_details=audit_details, origin=origin)
    d = v.details or {}
    original = str(d["original_sha256"])
    with atomic(conn):
        vid = state.insert_verdict(conn, sha256, v)
        state.set_object_result(conn, object_id, status=v.outcome, reason=v.reason, size=size,
                                sha256=sha256, md5=md5, media_type=v.media_type,
                                verdict_id=vid)
        # By the original's content hash, never an id from the verdict's details.
        incident_id, _ = state.ensure_incident(
            conn, sha256=original, md5=None, size=None, media_type=None, width=None,
            height=None, verdict_id=d.get("original_verdict"), origin=origin)
        conn.execute("INSERT OR IGNORE INTO incident_content (incident_id, sha256, role, "
                     "original_sha256, identifier, variant, verdict_id, added_at) "
                     "VALUES (?,?,?,?,?,?,?,?)",
                     (incident_id, sha256, d.get("role"), original, d.get("identifier"),
                      d.get("variant"), vid, iso()))
        audit.append(conn, "flagged", f"incident:{incident_id}",
                     {**audit_details, "sha256": sha256, "verdict_id": vid, "method": METHOD,
                      "reason": v.reason, "variant_of": original, "role": d.get("role"),
                      "original_verdict": d.get("original_verdict")})
    return vid, incident_id


class VariantPlanner:
    """The scanner's side of variant linkage for one pass at a time (see the module doc).
    All methods but ``_prepare`` run in the scanner's (writer) thread."""

    def __init__(self, links: Any, *, batch: int | None = None) -> None:
        self.links = links                    # fsq.lemmy.variants.RepoLinks (or a stand-in)
        self.batch = batch or getattr(links, "BATCH", 256)
        self._sc: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._waiting: dict[str, list[Any]] = {}   # original sha256 -> deferred items
        self._released: deque[Any] = deque()
        self._after: int | None = None
        self._broken = False
        self.deferred = 0

    # -- pass lifetime ------------------------------------------------------------------------

    def start(self, scanner: Any) -> None:
        self._sc = scanner
        self._pool = ThreadPoolExecutor(max_workers=max(1, scanner.cfg.workers),
                                        thread_name_prefix="fsq-variant")
        self._waiting, self._released, self._broken, self.deferred = {}, deque(), False, 0
        self._after = None
        if scanner.cfg.rescan:  # --rescan: only decisions made in this pass are inherited
            self._after = int(scanner.conn.execute(
                "SELECT COALESCE(MAX(id), 0) FROM verdicts").fetchone()[0])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._waiting.clear()
        self._released.clear()
        self.links.close()

    # -- linkage ------------------------------------------------------------------------------

    def listing(self, infos: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """(info, link or None) for each listed object, one repo query per batch."""
        it = iter(infos)
        while True:
            batch = list(itertools.islice(it, self.batch))
            if not batch:
                return
            found: dict[str, Any] = {}
            if not self._broken:
                keys = [i.key for i in batch if i.skip_reason is None
                        and key_problem(i.key) is None]
                try:
                    found = self.links.lookup(keys)
                except ExternalError as exc:
                    # Linkage only saves work: without it every file is classified.
                    self._broken = True
                    log.warning("variant linkage off for the rest of this pass: %s; every "
                                "file is classified", exc.message)
            for info in batch:
                yield info, found.get(info.key)

    # -- routing ------------------------------------------------------------------------------

    def route(self, item: Any) -> str:
        """'inherit' (submit with ``submit``), 'defer' (held here) or 'scan' (normally)."""
        link = item.link
        if link is None or not link.derived:
            return "scan"
        parent = original_decision(self._sc.conn, link.original_sha256,
                                   settings_digest=self._sc.cfg.settings_digest,
                                   after_verdict=self._after)
        if parent is not None:
            item.parent = parent
            return "inherit"
        if item.deferred:
            return "scan"  # its original was not decided in this pass: a file like any other
        item.deferred = True
        self.deferred += 1
        self._waiting.setdefault(link.original_sha256, []).append(item)
        return "defer"

    def submit(self, item: Any) -> Future:
        assert self._pool is not None
        return self._pool.submit(self._prepare, item)

    def _prepare(self, item: Any) -> Any:
        """Worker thread: fetch and hash (for the record, and to seal a flagged file), the
        checks of its own bytes, then the inherited verdict. Never decoded."""
        sc = self._sc
        if not sc._fetch(item):
            return item
        data = item.data
        sc._early_verdict(item, lambda: sniff(data))
        item.verdict = inherited_verdict(item.verdict, item.parent, item.link,
                                         lambda: sniff(data))
        return item

    def recorded(self, sha256: str | None) -> None:
        """An object with content ``sha256`` was recorded: its waiting derived files go."""
        if sha256 is not None:
            self._released.extend(self._waiting.pop(sha256, ()))

    def take(self) -> list[Any]:
        out = list(self._released)
        self._released.clear()
        return out

    def flush(self) -> bool:
        """Everything else is done: release whatever still waits. True if anything did."""
        for items in self._waiting.values():
            self._released.extend(items)
        self._waiting.clear()
        return bool(self._released)


def flag_derived(conn: sqlite3.Connection, source: str, originals: set[str], *,
                 origin: str, audit_details: dict[str, Any]) -> list[str]:
    """Originals just flagged without a scan (`fsq rescore`): the files of ``source`` that had
    inherited a clean verdict from one of them are flagged with it now, into its incident
    (their link as their verdict recorded it: trusting it can only flag more). Returns their
    keys, for the caller to quarantine like `fsq apply`. Inside the caller's transaction."""
    from fsq.lemmy.variants import Link
    if not originals:
        return []
    parents: dict[str, Parent | None] = {}
    keys: list[str] = []
    rows = conn.execute(
        "SELECT o.id, o.key, o.sha256, o.md5, o.size, o.media_type, v.details FROM objects o "
        "JOIN verdicts v ON v.id = o.verdict_id WHERE o.source = ? AND o.status = 'clean' "
        "AND v.method = ? AND v.outcome = 'clean'", (source, METHOD)).fetchall()
    for r in rows:
        d = _details(r)
        orig = d.get("original_sha256")
        if orig not in originals or not r["sha256"]:
            continue
        if orig not in parents:
            parents[orig] = original_decision(conn, orig)
        parent = parents[orig]
        if parent is None or parent.outcome != "flagged":
            continue
        link = Link(key=r["key"], role="motion" if d.get("role") == "motion" else "variant",
                    identifier=str(d.get("identifier") or r["key"]),
                    original_identifier=str(d.get("original_identifier") or "?"),
                    original_sha256=orig, pictrs_hash=str(d.get("pictrs_hash") or ""),
                    variant=d.get("variant") if isinstance(d.get("variant"), str) else None)
        v = inherited_verdict(None, parent, link, lambda: r["media_type"])
        record_inherited(conn, object_id=int(r["id"]), sha256=r["sha256"], md5=r["md5"],
                         size=int(r["size"] or 0), verdict=v, origin=origin,
                         audit_details={**audit_details, "key": r["key"]})
        keys.append(r["key"])
    return keys
