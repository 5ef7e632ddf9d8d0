"""Legal-hold bookkeeping: holds, "marked reported" and clearance, each audited.

These are the database side of the rules in ``fsq.custody.retention`` (which stay pure).
Every change is one transaction that also appends its audit event (``hold.added``,
``hold.lifted``, ``incident.reported``, ``incident.cleared``), so the record and its audit row
commit together.

Validation mirrors what the law-shaped workflow needs: an unknown incident is ``NotFound``; a
purged, released or mid-purge incident cannot be held, reported or cleared (``UsageError``); a
hold cannot end in the past; lifting an already-lifted hold says when and by whom it was lifted.

Object Lock: when a hold with an ``until`` is added and the incident's vault supports retention
(S3 with Object Lock), the sealed objects' retention is extended to that date, best effort: the
hold is recorded first and a storage failure is reported, never fatal. Such retention can never
be shortened (that is its point), so lifting the hold early leaves the objects locked until the
date; purge then reports them as blocked by object lock.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, time, timedelta, timezone
from typing import Any, Callable

from fsq.custody import decisions
from fsq.custody.retention import HOLD_KINDS, HoldFacts, hold_active
from fsq.errors import FsqError, NotFound, UsageError
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.timeutil import iso, parse_iso, utcnow

log = logging.getLogger("fsq.custody.holds")

#: Clock skew tolerated for a report time given with --at.
FUTURE_SKEW = timedelta(minutes=5)

#: vault_entries states whose vault objects exist (or may exist).
LIVE_ENTRY_STATES = ("stored", "verified", "source_removed", "done")


def parse_until(text: str, now: datetime | None = None) -> datetime:
    """A hold end from the command line. A bare date (``2027-05-01``) means the hold covers that
    whole day (UTC): it ends at 23:59:59.999999. Must be in the future."""
    now = now or utcnow()
    t = text.strip()
    try:
        if len(t) == 10 and t[4] == "-" and t[7] == "-":
            d = datetime.strptime(t, "%Y-%m-%d").date()
            until = datetime.combine(d, time.max, tzinfo=timezone.utc)
        else:
            until = parse_iso(t)
    except ValueError:
        raise UsageError(f"--until {text!r} is not a date (2027-05-01) or an ISO 8601 time "
                         "(2027-05-01T12:00:00Z)") from None
    if until <= now:
        raise UsageError(f"--until {text} is in the past; a hold must end in the future "
                         "(omit --until for a hold that lasts until lifted)")
    return until


def parse_report_time(text: str, now: datetime | None = None) -> datetime:
    now = now or utcnow()
    try:
        at = parse_iso(text)
    except ValueError:
        raise UsageError(f"--at {text!r} is not an ISO 8601 time (2026-11-21T19:25:00Z or "
                         "2026-11-21)") from None
    if at > now + FUTURE_SKEW:
        raise UsageError(f"--at {text} is in the future; give the time the report was made")
    return at


def _incident(conn: sqlite3.Connection, incident_id: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM incidents WHERE id=?", (incident_id,)).fetchone()
    if row is None:
        raise NotFound(f"no incident {incident_id}; list them with `fsq incidents`")
    return row


def _refuse_final(row: sqlite3.Row, what: str) -> None:
    st = row["state"]
    if st == "purged":
        raise UsageError(f"incident {row['id']} was purged on {row['purged_at']}; its evidence "
                         f"is gone, so it cannot be {what}")
    if st == "released":
        raise UsageError(f"incident {row['id']} was released as a false positive on "
                         f"{row['released_at']}; nothing is kept, so it cannot be {what}")
    if st == "purging":
        raise UsageError(f"incident {row['id']} is being purged (an interrupted purge); run "
                         f"`fsq purge --after-clearance` to finish it; it cannot be {what}")


def _sign(signer: Any, sign: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Audit-event fields of a signed decision ({} when unsigned)."""
    if signer is None:
        return {}
    signed = sign(signer)
    return {"signature": signed["signature"], "fingerprint": signed["fingerprint"],
            "retention_start": signed["record"]["retention_start"]}


def _clean(text: str | None, option: str) -> str:
    value = (text or "").strip()
    if not value:
        raise UsageError(f"{option} must not be empty")
    return value


# --- holds -------------------------------------------------------------------------------------

def holds_for(conn: sqlite3.Connection, incident_id: int) -> list[HoldFacts]:
    return [HoldFacts.from_row(r) for r in
            conn.execute("SELECT * FROM holds WHERE incident_id=? ORDER BY id", (incident_id,))]


def hold_status(row: sqlite3.Row | dict[str, Any], now: datetime) -> str:
    """active | expired | lifted"""
    h = HoldFacts.from_row(row)
    if h.lifted_at is not None:
        return "lifted"
    return "active" if hold_active(h, now) else "expired"


def _hold_dict(row: sqlite3.Row, now: datetime) -> dict[str, Any]:
    d = {k: row[k] for k in ("id", "incident_id", "kind", "reason", "until", "created_at",
                             "created_by", "lifted_at", "lifted_by", "lift_reason")}
    d["status"] = hold_status(row, now)
    return d


def add_hold(conn: sqlite3.Connection, incident_id: int, *, kind: str, reason: str,
             until: datetime | None = None, by: str | None = None,
             vault_for: Callable[[str], Any] | None = None,
             now: datetime | None = None) -> dict[str, Any]:
    """Record a hold; returns it as a dict, plus ``object_lock`` (what the vault did)."""
    now = now or utcnow()
    if kind not in HOLD_KINDS:
        raise UsageError(f"hold kind {kind!r} is not one of {', '.join(HOLD_KINDS)}")
    reason = _clean(reason, "--reason")
    if until is not None and until <= now:
        raise UsageError("a hold must end in the future (omit --until for an open-ended hold)")
    by = by or audit.actor()
    with transaction(conn):
        row = _incident(conn, incident_id)
        _refuse_final(row, "held")
        cur = conn.execute(
            "INSERT INTO holds (incident_id, kind, reason, until, created_at, created_by) "
            "VALUES (?,?,?,?,?,?)",
            (incident_id, kind, reason, iso(until) if until else None, iso(now), by))
        hold_id = int(cur.lastrowid)
        audit.append(conn, "hold.added", f"incident:{incident_id}",
                     {"hold": hold_id, "kind": kind, "reason": reason,
                      "until": iso(until) if until else None, "by": by,
                      "sha256": row["sha256"]})
    result = _hold_dict(conn.execute("SELECT * FROM holds WHERE id=?", (hold_id,)).fetchone(),
                        now)
    result["object_lock"] = (_extend_retention(conn, incident_id, hold_id, until, vault_for)
                             if until is not None and vault_for is not None else None)
    return result


def _extend_retention(conn: sqlite3.Connection, incident_id: int, hold_id: int,
                      until: datetime, vault_for: Callable[[str], Any]) -> dict[str, Any]:
    """Best effort: extend object-lock retention of the incident's vault objects to ``until``."""
    from fsq.quarantine.move import blob_name, key_name
    rows = conn.execute(
        f"SELECT * FROM vault_entries WHERE incident_id=? AND state IN "
        f"({','.join('?' * len(LIVE_ENTRY_STATES))}) ORDER BY created_at",
        (incident_id, *LIVE_ENTRY_STATES)).fetchall()
    out: dict[str, Any] = {"entries": 0, "locked_until": None, "errors": []}
    for e in rows:
        try:
            store = vault_for(e["vault"])
            read_back = getattr(store, "retention", None)
            if read_back is None:
                continue  # the store has no object lock (e.g. a directory vault)
            got: datetime | None = None
            for name in (key_name(e["id"]), blob_name(e["id"])):
                store.set_retention(name, until)
                r = read_back(name)
                got = r if got is None or (r is not None and r < got) else got
            if got is not None:
                with transaction(conn):
                    conn.execute("UPDATE vault_entries SET retain_until=? WHERE id=?",
                                 (iso(got), e["id"]))
                out["entries"] += 1
                out["locked_until"] = iso(got)
        except FsqError as exc:
            out["errors"].append({"entry": e["id"], "error": exc.message})
            log.warning("hold %s: could not extend object lock of entry %s: %s", hold_id,
                        e["id"], exc.message)
    if out["entries"] or out["errors"]:
        audit.append(conn, "hold.object_lock", f"incident:{incident_id}",
                     {"hold": hold_id, "until": iso(until), "entries": out["entries"],
                      "errors": len(out["errors"])})
    return out


def list_holds(conn: sqlite3.Connection, incident_id: int | None = None,
               now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or utcnow()
    if incident_id is not None:
        _incident(conn, incident_id)
        rows = conn.execute("SELECT * FROM holds WHERE incident_id=? ORDER BY id",
                            (incident_id,)).fetchall()
    else:
        rows = conn.execute("SELECT * FROM holds ORDER BY id").fetchall()
    return [_hold_dict(r, now) for r in rows]


def lift_hold(conn: sqlite3.Connection, hold_id: int, *, reason: str, by: str | None = None,
              now: datetime | None = None, signer: Any = None) -> dict[str, Any]:
    """Lift a hold. With ``signer`` (an unlocked ``fsq.custody.custodian.Signer``) the lift is
    signed in the same transaction; an unsigned lift never lets purge through (see
    ``fsq.custody.decisions``)."""
    now = now or utcnow()
    reason = _clean(reason, "--reason")
    by = by or audit.actor()
    with transaction(conn):
        row = conn.execute("SELECT * FROM holds WHERE id=?", (hold_id,)).fetchone()
        if row is None:
            raise NotFound(f"no hold {hold_id}; list them with `fsq hold list`")
        if row["lifted_at"] is not None:
            raise UsageError(f"hold {hold_id} was already lifted on {row['lifted_at']} by "
                             f"{row['lifted_by']} ({row['lift_reason']}); nothing to do")
        was = hold_status(row, now)
        conn.execute("UPDATE holds SET lifted_at=?, lifted_by=?, lift_reason=? WHERE id=?",
                     (iso(now), by, reason, hold_id))
        signed = _sign(signer, lambda s: decisions.sign_lift(conn, hold_id, s))
        audit.append(conn, "hold.lifted", f"incident:{row['incident_id']}",
                     {"hold": hold_id, "kind": row["kind"], "reason": reason, "by": by,
                      "was": was, **signed})
    result = _hold_dict(conn.execute("SELECT * FROM holds WHERE id=?", (hold_id,)).fetchone(),
                        now)
    result["was"] = was
    lock = conn.execute("SELECT MAX(retain_until) FROM vault_entries WHERE incident_id=? AND "
                        "state IN ('stored','verified','source_removed','done')",
                        (row["incident_id"],)).fetchone()[0]
    result["object_lock_until"] = lock if lock and parse_iso(lock) > now else None
    return result


# --- reported / cleared ------------------------------------------------------------------------

def mark_reported(conn: sqlite3.Connection, incident_id: int, *, reference: str,
                  at: datetime | None = None, now: datetime | None = None,
                  signer: Any = None) -> dict[str, Any]:
    """Record that the incident was reported (e.g. a CyberTipline report id). The retention
    clock starts at ``at`` (default now). Marking again replaces the time and reference; the
    audit event keeps the previous ones.

    A cleared incident's signed clearance names the retention start, so changing it needs the
    custodian (``signer``): the clearance is re-signed with the new start in the same
    transaction. Without a signer the clearance stops authorising a purge (purge refuses on
    the mismatch); that is the point: an appended backdated report must not shorten
    retention."""
    now = now or utcnow()
    at = at or now
    if at > now + FUTURE_SKEW:
        raise UsageError("the report time is in the future; give the time the report was made")
    reference = _clean(reference, "--reference")
    with transaction(conn):
        row = _incident(conn, incident_id)
        _refuse_final(row, "marked reported")
        # review_state follows from any path (CLI or console), so the console's tabs agree
        # with the lifecycle (the same mapping as migration 3).
        conn.execute("UPDATE incidents SET reported_at=?, report_reference=?, state=CASE WHEN "
                     "state='quarantined' THEN 'reported' ELSE state END, review_state=CASE "
                     "WHEN review_state='cleared' THEN review_state ELSE 'reported' END "
                     "WHERE id=?", (iso(at), reference, incident_id))
        details: dict[str, Any] = {"reference": reference, "reported_at": iso(at),
                                   "sha256": row["sha256"], "md5": row["md5"]}
        if row["reported_at"] is not None:
            details["previous"] = {"reported_at": row["reported_at"],
                                   "reference": row["report_reference"]}
        audit.append(conn, "incident.reported", f"incident:{incident_id}", details)
        if row["cleared_at"] is not None and signer is not None:
            signed = decisions.sign_clearance(conn, incident_id, signer)
            audit.append(conn, "custody.re-signed", f"incident:{incident_id}",
                         {"kind": "clearance", "hold": None, "signature": signed["signature"],
                          "fingerprint": signed["fingerprint"],
                          "retention_start": signed["record"]["retention_start"]})
    return {"incident": incident_id, "reported_at": iso(at), "reference": reference,
            "previous": details.get("previous")}


def clear_incident(conn: sqlite3.Connection, incident_id: int, *, by: str, reason: str,
                   reference: str | None = None, now: datetime | None = None,
                   signer: Any = None) -> dict[str, Any]:
    """A person states that the evidence may be destroyed once retention allows. Destroys
    nothing; `fsq purge --after-clearance` does, when the rule says so. With ``signer`` the
    clearance is signed by the custodian in the same transaction (after checking the retention
    start against the audit chain); purge refuses an unsigned one."""
    now = now or utcnow()
    by = _clean(by, "--by")
    reason = _clean(reason, "--reason")
    reference = (reference or "").strip() or None
    with transaction(conn):
        row = _incident(conn, incident_id)
        _refuse_final(row, "cleared")
        if row["cleared_at"] is not None:
            raise UsageError(f"incident {incident_id} was already cleared on {row['cleared_at']} "
                             f"by {row['cleared_by']} ({row['clear_reason']}); nothing to do")
        if row["quarantined_at"] is None or row["state"] == "flagged":
            raise UsageError(f"incident {incident_id} is not quarantined, so there is no evidence "
                             "to clear; quarantine it (`fsq apply`) or release it")
        conn.execute("UPDATE incidents SET cleared_at=?, cleared_by=?, clear_reason=?, "
                     "clear_reference=?, state='cleared', review_state='cleared' WHERE id=?",
                     (iso(now), by, reason, reference, incident_id))
        signed = _sign(signer, lambda s: decisions.sign_clearance(conn, incident_id, s))
        audit.append(conn, "incident.cleared", f"incident:{incident_id}",
                     {"by": by, "reason": reason, "reference": reference,
                      "sha256": row["sha256"], "md5": row["md5"], **signed})
    return {"incident": incident_id, "cleared_at": iso(now), "cleared_by": by,
            "reason": reason, "reference": reference}
