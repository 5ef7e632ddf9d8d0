"""Scan state: objects, verdicts, scan runs, cursors, allowlist, incident creation.

Small functions over a sqlite3 connection; the pipeline is the only writer during a scan
(a single thread), so these functions do not lock beyond SQLite's own transactions.

Object keys are stored with ``fsq.names.db_key``: unchanged for every key fsq acts on, escaped
(reversibly) for names that are not valid UTF-8 or hold a backslash, which SQLite could not
store or which fsq only records as skipped.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterator

from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.names import db_key
from fsq.timeutil import iso

FINAL_STATUSES = ("clean", "flagged", "unreadable", "quarantined", "released", "skipped",
                  "review")


@dataclass
class VerdictRecord:
    outcome: str                 # clean | flagged | unreadable | error
    method: str                  # clip | hash-list | allowlist | unreadable-policy | cache
    reason: str | None = None
    model_id: str | None = None
    concepts_digest: str | None = None
    severity: str | None = None
    rule_version: str | None = None
    media_type: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    details: dict[str, Any] | None = None
    settings_digest: str | None = None  # decision settings of a model verdict (ledger.stale)


# --- objects -----------------------------------------------------------------------------------

def get_object(conn: sqlite3.Connection, source: str, key: str) -> sqlite3.Row | None:
    """``key`` as listed (raw); it is looked up in its stored form (``fsq.names.db_key``)."""
    return conn.execute("SELECT * FROM objects WHERE source=? AND key=?",
                        (source, db_key(key))).fetchone()


def unchanged(row: sqlite3.Row | None, size: int, mtime: float) -> bool:
    """True if a previous pass saw this key with the same size and mtime and finished it.

    'error' is never final (transient failures are retried); 'unreadable' is (same bytes
    would fail again); 'missing' means it vanished and came back: look again."""
    return (row is not None and row["status"] in FINAL_STATUSES
            and row["size"] == size and row["mtime"] is not None
            and abs(row["mtime"] - mtime) < 1e-6)


def touch_object(conn: sqlite3.Connection, source: str, key: str, size: int, mtime: float,
                 run_id: int | None) -> int:
    """Record that ``key`` was listed with ``size``/``mtime``; returns the object id.

    A known key whose size or mtime changed takes the new ones *and* status 'pending', so the
    next pass skips it only once this one recorded a result for the new bytes: a crash in
    between leaves it pending (looked at again), never "unchanged" with the old verdict. (A
    released file is written back with a new mtime: without the refresh it was downloaded
    again on every pass.)"""
    now = iso()
    cur = conn.execute(
        "INSERT INTO objects (source, key, size, mtime, status, first_seen, last_seen, last_scan)"
        " VALUES (?,?,?,?, 'pending', ?, ?, ?)"
        " ON CONFLICT(source, key) DO UPDATE SET last_seen=excluded.last_seen,"
        " last_scan=excluded.last_scan,"
        # 'skipped' rows (symlinks, non-regular files) keep theirs: the scanner re-decides
        # those on every listing, and a skipped row that turns into a file must not look
        # unchanged on the next pass.
        " status=CASE WHEN objects.status='skipped' OR (objects.size IS excluded.size"
        " AND objects.mtime IS excluded.mtime) THEN objects.status ELSE 'pending' END,"
        " size=CASE WHEN objects.status='skipped' THEN objects.size ELSE excluded.size END,"
        " mtime=CASE WHEN objects.status='skipped' THEN objects.mtime ELSE excluded.mtime END"
        " RETURNING id",
        (source, db_key(key), size, mtime, now, now, run_id))
    return cur.fetchone()[0]


def set_object_result(conn: sqlite3.Connection, object_id: int, *, status: str,
                      reason: str | None, size: int | None = None, mtime: float | None = None,
                      sha256: str | None = None, md5: str | None = None,
                      media_type: str | None = None, verdict_id: int | None = None) -> None:
    conn.execute(
        "UPDATE objects SET status=?, reason=?, size=COALESCE(?, size), "
        "mtime=COALESCE(?, mtime), sha256=COALESCE(?, sha256), md5=COALESCE(?, md5), "
        "media_type=COALESCE(?, media_type), verdict_id=COALESCE(?, verdict_id), last_seen=? "
        "WHERE id=?",
        (status, reason, size, mtime, sha256, md5, media_type, verdict_id, iso(), object_id))


def objects_with_status(conn: sqlite3.Connection, source: str, status: str
                        ) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM objects WHERE source=? AND status=? ORDER BY key",
                        (source, status)).fetchall()


# --- verdicts ----------------------------------------------------------------------------------

def insert_verdict(conn: sqlite3.Connection, sha256: str, v: VerdictRecord) -> int:
    cur = conn.execute(
        "INSERT INTO verdicts (sha256, created_at, outcome, reason, method, model_id, "
        "concepts_digest, severity, rule_version, media_type, width, height, frames, details, "
        "settings_digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (sha256, iso(), v.outcome, v.reason, v.method, v.model_id, v.concepts_digest,
         v.severity, v.rule_version, v.media_type, v.width, v.height, v.frames,
         json.dumps(v.details or {}, sort_keys=True), v.settings_digest))
    if v.outcome == "flagged":
        _forget_embeddings(conn, sha256)
    return int(cur.lastrowid)


def _forget_embeddings(conn: sqlite3.Connection, sha256: str) -> None:
    """Flagged content's stored embeddings are derived from evidence: never kept
    (fsq.ledger.embeddings; docs/threat-model.md "Stored embeddings")."""
    conn.execute("DELETE FROM embeddings WHERE sha256=?", (sha256,))


def cached_verdict(conn: sqlite3.Connection, sha256: str, settings_digest: str | None = None
                   ) -> sqlite3.Row | None:
    """Latest conclusive verdict for identical content (any key), so it is not classified
    again. Errors are not conclusive, and neither are peer attestations (method
    'attestation'): they apply only while the statement does (fsq.exchange.trust). With
    ``settings_digest``, a model verdict (or a reuse of one) counts only if it was decided under
    those settings (fsq.ledger.stale). Nor are inherited verdicts (method 'variant-of',
    fsq.engine.variants): they say what pict-rs made the file from, not what it shows, so they
    are re-derived from the original each time, never reused for the bytes alone."""
    if settings_digest is None:
        return conn.execute(
            "SELECT * FROM verdicts WHERE sha256=? AND outcome IN ('clean','flagged',"
            "'unreadable') AND method NOT IN ('attestation', 'variant-of') "
            "ORDER BY id DESC LIMIT 1", (sha256,)).fetchone()
    return conn.execute(
        "SELECT * FROM verdicts WHERE sha256=? AND outcome IN ('clean','flagged','unreadable') "
        "AND method NOT IN ('attestation', 'variant-of') AND (method NOT IN ('clip','cache','rescore') OR settings_digest=?) "
        "ORDER BY id DESC LIMIT 1", (sha256, settings_digest)).fetchone()


def get_verdict(conn: sqlite3.Connection, verdict_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM verdicts WHERE id=?", (verdict_id,)).fetchone()


# --- allowlist ---------------------------------------------------------------------------------

def is_allowlisted(conn: sqlite3.Connection, sha256: str) -> bool:
    return conn.execute("SELECT 1 FROM allowlist WHERE sha256=?", (sha256,)).fetchone() \
        is not None


def allowlist_add(conn: sqlite3.Connection, sha256: str, reason: str,
                  incident_id: int | None = None) -> None:
    conn.execute("INSERT OR REPLACE INTO allowlist (sha256, added_at, reason, incident_id) "
                 "VALUES (?,?,?,?)", (sha256, iso(), reason, incident_id))


# --- runs and cursors --------------------------------------------------------------------------

def _previous_settings(conn: sqlite3.Connection, source: str) -> dict[str, Any] | None:
    for (details,) in conn.execute("SELECT details FROM audit WHERE action='scan.started' "
                                   "ORDER BY seq DESC LIMIT 200"):
        d = json.loads(details)
        if d.get("source") == source and "settings" in d:
            return d["settings"]
    return None


def start_run(conn: sqlite3.Connection, source: str, mode: str, dry_run: bool,
              settings: dict[str, Any] | None = None) -> int:
    """Record a run's start. ``settings`` (verdict-relevant, no secrets) go into the audit
    event; if they differ from the previous run of this source, a ``settings.changed`` event
    names each changed setting with its old and new value."""
    with transaction(conn):
        cur = conn.execute("INSERT INTO scan_runs (started_at, source, mode, dry_run) "
                           "VALUES (?,?,?,?)", (iso(), source, mode, int(dry_run)))
        run_id = int(cur.lastrowid)
        details: dict[str, Any] = {"source": source, "mode": mode, "dry_run": dry_run}
        if settings is not None:
            details["settings"] = settings
            prev = _previous_settings(conn, source)
            if prev is not None and prev != settings:
                changed = {k: {"old": prev.get(k), "new": settings.get(k)}
                           for k in sorted(set(prev) | set(settings))
                           if prev.get(k) != settings.get(k)}
                audit.append(conn, "settings.changed", f"run:{run_id}",
                             {"source": source, "changed": changed})
        audit.append(conn, "scan.started", f"run:{run_id}", details)
    return run_id


def finish_run(conn: sqlite3.Connection, run_id: int, status: str, counts: dict[str, int],
               error: str | None = None) -> None:
    with transaction(conn):
        conn.execute("UPDATE scan_runs SET finished_at=?, status=?, counts=?, error=? "
                     "WHERE id=?", (iso(), status, json.dumps(counts, sort_keys=True), error,
                                    run_id))
        audit.append(conn, "scan.finished", f"run:{run_id}",
                     {"status": status, "counts": counts,
                      **({"error": error} if error else {})})


def get_cursor(conn: sqlite3.Connection, source: str) -> float | None:
    r = conn.execute("SELECT value FROM cursors WHERE source=?", (source,)).fetchone()
    return r[0] if r else None


def set_cursor(conn: sqlite3.Connection, source: str, value: float) -> None:
    conn.execute("INSERT INTO cursors (source, value, updated_at) VALUES (?,?,?) "
                 "ON CONFLICT(source) DO UPDATE SET value=excluded.value, "
                 "updated_at=excluded.updated_at", (source, value, iso()))


# --- incidents ---------------------------------------------------------------------------------

def incident_for_sha(conn: sqlite3.Connection, sha256: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM incidents WHERE sha256=?", (sha256,)).fetchone()


_LIFECYCLE_COLUMNS = ("quarantined_at", "reported_at", "report_reference", "cleared_at",
                      "cleared_by", "clear_reason", "clear_reference", "purged_at",
                      "purge_reason", "released_at", "release_reason")


def ensure_incident(conn: sqlite3.Connection, *, sha256: str, md5: str | None,
                    size: int | None, media_type: str | None, width: int | None,
                    height: int | None, verdict_id: int | None, origin: str = "scan"
                    ) -> tuple[int, bool]:
    """Return (incident id, created). One incident per content sha256.

    A released or purged incident whose content shows up flagged again (e.g. re-uploaded
    after a purge) is reopened as 'flagged': it is new evidence. Its lifecycle times (report,
    clearance, purge, release, quarantine) are reset - an old clearance or report must never
    shorten the retention of new evidence - and the old values go into the audit event."""
    _forget_embeddings(conn, sha256)  # an incident means evidence, whoever opened it
    row = incident_for_sha(conn, sha256)
    if row is not None:
        if row["state"] in ("purged", "released"):
            previous = {k: row[k] for k in _LIFECYCLE_COLUMNS if row[k] is not None}
            conn.execute("UPDATE incidents SET state='flagged', verdict_id=?, "
                         + ", ".join(f"{k}=NULL" for k in _LIFECYCLE_COLUMNS)
                         + " WHERE id=?", (verdict_id, row["id"]))
            audit.append(conn, "incident.reopened", f"incident:{row['id']}",
                         {"sha256": sha256, "previous_state": row["state"],
                          "previous": previous})
        return int(row["id"]), False
    cur = conn.execute(
        "INSERT INTO incidents (sha256, md5, size, media_type, width, height, state, "
        "verdict_id, created_at, origin) VALUES (?,?,?,?,?,?, 'flagged', ?,?,?)",
        (sha256, md5, size, media_type, width, height, verdict_id, iso(), origin))
    iid = int(cur.lastrowid)
    audit.append(conn, "incident.created", f"incident:{iid}",
                 {"sha256": sha256, "md5": md5, "verdict_id": verdict_id, "origin": origin})
    return iid, True


def flagged_pending(conn: sqlite3.Connection, source: str | None = None
                    ) -> Iterator[sqlite3.Row]:
    """Objects flagged by a scan that nothing has acted on yet (dry runs, failed moves)."""
    sql = ("SELECT o.*, v.method, v.reason AS verdict_reason, v.details, v.model_id, "
           "v.severity, v.concepts_digest, v.rule_version, i.id AS incident_id "
           "FROM objects o LEFT JOIN verdicts v ON v.id = o.verdict_id "
           # A variant flagged with its original belongs to the original's incident
           # (incident_content, fsq.engine.variants); other content to its own.
           "LEFT JOIN incidents i ON i.id = CASE WHEN v.method = 'variant-of' THEN "
           "COALESCE((SELECT MAX(ic.incident_id) FROM incident_content ic WHERE ic.sha256 = "
           "o.sha256), (SELECT id FROM incidents WHERE sha256 = o.sha256)) "
           "ELSE (SELECT id FROM incidents WHERE sha256 = o.sha256) END "
           "WHERE o.status = 'flagged'")
    args: tuple = ()
    if source:
        sql += " AND o.source = ?"
        args = (source,)
    yield from conn.execute(sql + " ORDER BY o.id", args)


def last_listed(conn: sqlite3.Connection, source: str) -> int | None:
    """How many objects the last finished full pass of ``source`` listed (a progress estimate)."""
    row = conn.execute("SELECT counts FROM scan_runs WHERE source=? AND mode='all' AND "
                       "status='finished' ORDER BY id DESC LIMIT 1", (source,)).fetchone()
    if row is None:
        return None
    n = json.loads(row["counts"] or "{}").get("listed")
    return int(n) if isinstance(n, int) and n > 0 else None
