"""Signed decisions: the records that authorise destruction, and their verification by purge.

Three decisions can lead to evidence being destroyed: a *clearance* (``fsq clear``), a *hold
lift* (``fsq hold lift``) and a *destruction request* (``fsq purge --incident ...``). Each is
stored as a canonical JSON record plus an Ed25519 signature by the custodian key
(``fsq.custody.custodian``) in ``custody_signatures``, and the signature and record go into the
decision's audit event too.

Invariant (what ``verify_for_purge`` enforces before anything is destroyed): a database writer
without the passphrase cannot authorise a purge.

* A clearance or lift counts only with a valid signature by the custodian key whose fingerprint
  the audit log recorded first (``custodian.created``); a forged ``incident.cleared`` row, even
  correctly chained with ``audit.append``, has no signature.
* The signed record names the incident, its sha256 and the retention start. The retention start
  is recomputed from the audit chain's own events (the first ``quarantined`` event and the last
  ``incident.reported`` event since the incident was last reopened), never from the
  ``incidents`` columns; an edited ``quarantined_at``/``reported_at`` column, or an appended
  backdated ``incident.reported`` event, is a mismatch and purge refuses (exit 4).
* The record's who/why/when must equal the columns the rule reads; a copied signature from
  another incident names another incident.

What this does not stop (docs/threat-model.md): a writer can still append plausible scanner
events, add holds, or make purge refuse (denial of service); only the witness
(``fsq.custody.witness``) catches a rewritten and re-chained log.

Record shape (``v`` = 1; times ISO 8601 UTC)::

    {"v": 1, "kind": "clearance" | "hold-lift" | "destruction", "incident": 12,
     "sha256": "...", "retention_start": "...", "decision": "...", "by": "...",
     "reason": "...", "reference": "..." | null, "at": "...", "hold": 3 (hold-lift only),
     "key": "<custodian fingerprint>"}

Signed message: ``b"fsq-custody-v1\\0" || canonical_json(record)``.

Core API for other front ends (the review console calls these with an unlocked ``Signer``):
``clear``, ``lift_hold``, ``sign_destruction``, ``verify_for_purge``, ``resign_open``.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from fsq.custody.custodian import Signer, Verifier
from fsq.errors import IntegrityError
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.timeutil import iso, parse_iso, utcnow

CONTEXT = b"fsq-custody-v1\0"
RECORD_VERSION = 1
KIND_CLEARANCE = "clearance"
KIND_LIFT = "hold-lift"
KIND_DESTRUCTION = "destruction"
KIND_PURGE_START = "purge-start"   # the purge journal: resuming a purge shreds what it names
#: Quarantine events written before this version carry no exact time; their row time is within
#: a fraction of a second of ``quarantined_at`` (same code path, same transaction).
_OLD_EVENT_SKEW = 5.0
RESIGN_HINT = "run `fsq custody re-sign` once to have the custodian sign it"


def message(record: dict[str, Any]) -> bytes:
    return CONTEXT + audit.canonical_json(record).encode("utf-8")


# --- retention facts from the audit chain ------------------------------------------------------

def audit_times(conn: sqlite3.Connection, incident_id: int) -> tuple[str | None, str | None]:
    """(quarantined_at, reported_at) as the audit chain tells them, since the incident was last
    reopened. A quarantined event without an exact ``at`` contributes its row time."""
    quarantined = reported = None
    for e in audit.events(conn, subject=f"incident:{incident_id}"):
        act = e["action"]
        if act == "incident.reopened":
            quarantined = reported = None
        elif act == "quarantined" and quarantined is None:
            d = json.loads(e["details"])
            quarantined = d.get("at") or e["ts"]
        elif act == "incident.reported":
            reported = json.loads(e["details"]).get("reported_at")
    return quarantined, reported


def retention_start(conn: sqlite3.Connection, row: sqlite3.Row) -> str | None:
    """The retention start from the audit chain, after checking the incident's columns agree
    with it. Raises IntegrityError naming the column that was edited."""
    iid = int(row["id"])
    q, r = audit_times(conn, iid)
    if not _same_time(row["quarantined_at"], q):
        raise IntegrityError(f"incident {iid}: quarantined_at in the database "
                             f"({row['quarantined_at']}) differs from the audit log ({q}); "
                             "the database was edited, nothing is destroyed")
    if row["reported_at"] != r:
        raise IntegrityError(f"incident {iid}: reported_at in the database "
                             f"({row['reported_at']}) differs from the audit log ({r}); "
                             "the database was edited, nothing is destroyed")
    return r or q


def _same_time(db_value: str | None, audit_value: str | None) -> bool:
    if db_value == audit_value:
        return True
    if db_value is None or audit_value is None:
        return False
    try:
        delta = (parse_iso(audit_value) - parse_iso(db_value)).total_seconds()
    except ValueError:
        return False
    return 0 <= delta <= _OLD_EVENT_SKEW  # the event is written just after the column


# --- signing ------------------------------------------------------------------------------------

def _store(conn: sqlite3.Connection, signer: Signer, record: dict[str, Any],
           hold_id: int | None = None) -> dict[str, Any]:
    record = dict(record, v=RECORD_VERSION, key=signer.fingerprint)
    sig = signer.sign(message(record))
    conn.execute("INSERT INTO custody_signatures (kind, incident_id, hold_id, record, "
                 "signature, fingerprint, created_at) VALUES (?,?,?,?,?,?,?)",
                 (record["kind"], record["incident"], hold_id, audit.canonical_json(record),
                  sig, signer.fingerprint, iso()))
    return {"record": record, "signature": sig, "fingerprint": signer.fingerprint}


def clearance_record(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    return {"kind": KIND_CLEARANCE, "incident": int(row["id"]), "sha256": row["sha256"],
            "retention_start": retention_start(conn, row),
            "decision": "may be destroyed once retention has run out and no hold is active",
            "by": row["cleared_by"], "reason": row["clear_reason"],
            "reference": row["clear_reference"], "at": row["cleared_at"]}


def lift_record(conn: sqlite3.Connection, hold: sqlite3.Row, incident: sqlite3.Row
                ) -> dict[str, Any]:
    return {"kind": KIND_LIFT, "incident": int(incident["id"]), "sha256": incident["sha256"],
            "retention_start": retention_start(conn, incident), "hold": int(hold["id"]),
            "hold_kind": hold["kind"], "until": hold["until"], "decision": "hold lifted",
            "by": hold["lifted_by"], "reason": hold["lift_reason"], "reference": None,
            "at": hold["lifted_at"]}


def sign_clearance(conn: sqlite3.Connection, incident_id: int, signer: Signer
                   ) -> dict[str, Any]:
    """Sign the clearance now in the database (inside the caller's transaction)."""
    row = conn.execute("SELECT * FROM incidents WHERE id=?", (incident_id,)).fetchone()
    return _store(conn, signer, clearance_record(conn, row))


def sign_lift(conn: sqlite3.Connection, hold_id: int, signer: Signer) -> dict[str, Any]:
    hold = conn.execute("SELECT * FROM holds WHERE id=?", (hold_id,)).fetchone()
    inc = conn.execute("SELECT * FROM incidents WHERE id=?", (hold["incident_id"],)).fetchone()
    return _store(conn, signer, lift_record(conn, hold, inc), hold_id=hold_id)


def sign_destruction(conn: sqlite3.Connection, row: sqlite3.Row, reference: str,
                     signer: Signer, *, by: str | None = None,
                     now: datetime | None = None) -> dict[str, Any]:
    """A law-enforcement destruction request, signed when purge acts on it."""
    record = {"kind": KIND_DESTRUCTION, "incident": int(row["id"]), "sha256": row["sha256"],
              "retention_start": retention_start(conn, row),
              "decision": "destroy now: law-enforcement destruction request",
              "by": by or audit.actor(), "reason": reference, "reference": reference,
              "at": iso(now or utcnow())}
    with transaction(conn):
        return _store(conn, signer, record)


def sign_purge_start(conn: sqlite3.Connection, row: sqlite3.Row, entries: list[str],
                     mode: str, signer: Signer) -> dict[str, Any]:
    """Sign the purge journal (inside the caller's transaction). An interrupted purge is
    finished later from its ``purge.started`` event without the other checks, so that event
    must not be forgeable: ``verify_purge_start`` requires this signature before resuming."""
    return _store(conn, signer, {
        "kind": KIND_PURGE_START, "incident": int(row["id"]), "sha256": row["sha256"],
        "entries": sorted(entries), "mode": mode, "decision": "purge started",
        "by": audit.actor(), "reason": mode, "reference": None, "at": iso()})


def verify_purge_start(conn: sqlite3.Connection, row: sqlite3.Row, entries: list[str] | None,
                       verifier: Verifier | None) -> str | None:
    """Before resuming an interrupted purge: is its journal signed, for these entries?"""
    iid = int(row["id"])
    if verifier is None:
        return "no custodian key to verify the interrupted purge with; purge needs the passphrase"
    problem = check_key(conn, verifier)
    if problem:
        return problem
    rec, why = _signed(conn, verifier, KIND_PURGE_START, iid)
    if rec is None:
        hint = f"; {RESIGN_HINT}" if why == "not signed by the custodian" else ""
        return f"the interrupted purge of incident {iid} is {why}{hint}"
    if rec.get("sha256") != row["sha256"] or entries is None \
            or not set(entries) <= set(rec.get("entries") or []):
        return (f"the interrupted purge of incident {iid} names other entries than its signed "
                "journal; the database was edited")
    return None


def clear(conn: sqlite3.Connection, incident_id: int, *, by: str, reason: str,
          signer: Signer, reference: str | None = None,
          now: datetime | None = None) -> dict[str, Any]:
    """Clear an incident with a signed record (the API the review console uses)."""
    from fsq.custody.holds import clear_incident
    return clear_incident(conn, incident_id, by=by, reason=reason, reference=reference,
                          now=now, signer=signer)


def lift_hold(conn: sqlite3.Connection, hold_id: int, *, reason: str, signer: Signer,
              by: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Lift a hold with a signed record (the API the review console uses)."""
    from fsq.custody import holds
    return holds.lift_hold(conn, hold_id, reason=reason, by=by, now=now, signer=signer)


# --- verification -------------------------------------------------------------------------------

def pinned_fingerprint(conn: sqlite3.Connection) -> str | None:
    """The custodian key the audit log recorded first (later events cannot replace it)."""
    for e in audit.events(conn, subject="custodian-key", action_prefix="custodian.created"):
        return json.loads(e["details"]).get("fingerprint")
    return None


def check_key(conn: sqlite3.Connection, verifier: Verifier) -> str | None:
    pinned = pinned_fingerprint(conn)
    if pinned is None:
        return ("the audit log records no custodian key; create one with `fsq key "
                "custodian-init`")
    if pinned != verifier.fingerprint:
        return (f"the custodian public key ({verifier.fingerprint}) is not the one the audit "
                f"log recorded ({pinned}); restore custodian.pub")
    return None


def _signed(conn: sqlite3.Connection, verifier: Verifier, kind: str, incident_id: int,
            hold_id: int | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The newest validly signed record of this kind, or (None, why not)."""
    sql = "SELECT * FROM custody_signatures WHERE kind=? AND incident_id=?"
    args: list[Any] = [kind, incident_id]
    if hold_id is not None:
        sql += " AND hold_id=?"
        args.append(hold_id)
    rows = conn.execute(sql + " ORDER BY id DESC", args).fetchall()
    if not rows:
        return None, "not signed by the custodian"
    for r in rows:
        try:
            record = json.loads(r["record"])
        except ValueError:
            continue
        if (isinstance(record, dict) and verifier.verify(message(record), r["signature"])
                and audit.canonical_json(record) == r["record"]):
            return record, None
    return None, "its custodian signature does not verify (forged or altered)"


def _differs(record: dict[str, Any], want: dict[str, Any]) -> str | None:
    for k, v in want.items():
        if record.get(k) != v:
            return k
    return None


def verify_for_purge(conn: sqlite3.Connection, row: sqlite3.Row, *, clearance: bool,
                     verifier: Verifier) -> str | None:
    """Every signed decision purge rests on, checked against the database and the audit chain.
    Returns the first problem (purge refuses, exit 4) or None."""
    iid = int(row["id"])
    problem = check_key(conn, verifier)
    if problem:
        return problem
    try:
        start = retention_start(conn, row)
    except IntegrityError as exc:
        return exc.message
    if clearance:
        rec, why = _signed(conn, verifier, KIND_CLEARANCE, iid)
        if rec is None:
            hint = f"; {RESIGN_HINT}" if why == "not signed by the custodian" else ""
            return f"the clearance of incident {iid} is {why}{hint}"
        field = _differs(rec, {"incident": iid, "sha256": row["sha256"],
                               "retention_start": start, "by": row["cleared_by"],
                               "reason": row["clear_reason"], "at": row["cleared_at"]})
        if field:
            return (f"the clearance of incident {iid} differs from its signed record "
                    f"({field}); the database was edited")
    for h in conn.execute("SELECT * FROM holds WHERE incident_id=? AND lifted_at IS NOT NULL "
                          "ORDER BY id", (iid,)).fetchall():
        rec, why = _signed(conn, verifier, KIND_LIFT, iid, int(h["id"]))
        if rec is None:
            hint = f"; {RESIGN_HINT}" if why == "not signed by the custodian" else ""
            return f"the lift of hold {h['id']} is {why}{hint}"
        field = _differs(rec, {"incident": iid, "hold": int(h["id"]), "sha256": row["sha256"],
                               "at": h["lifted_at"], "by": h["lifted_by"],
                               "reason": h["lift_reason"], "until": h["until"]})
        if field:
            return (f"the lift of hold {h['id']} differs from its signed record ({field}); "
                    "the database was edited")
    return None


# --- the audit log as the record ------------------------------------------------------------

def audit_crosscheck(conn: sqlite3.Connection, row: sqlite3.Row, mode: str) -> str | None:
    """Does the database's clearance and hold record match the audit log? Returns a problem or
    None. The audit chain is tamper-evident; the incidents/holds tables are not, so a purge
    must not rest on a clearance or a missing hold that the log does not show."""
    subject = f"incident:{row['id']}"
    if mode == "clearance":
        cleared = [e for e in audit.events(conn, subject=subject, action_prefix="incident.cleared")
                   if e["action"] == "incident.cleared"]
        if not cleared:
            return "the clearance is not in the audit log (was the database edited?)"
        d = json.loads(cleared[-1]["details"])
        if d.get("by") != row["cleared_by"] or d.get("reason") != row["clear_reason"]:
            return "the clearance differs from its audit event (was the database edited?)"
    added: dict[int, dict[str, Any]] = {}
    lifted: set[int] = set()
    for e in audit.events(conn, subject=subject, action_prefix="hold."):
        d = json.loads(e["details"])
        if e["action"] == "hold.added":
            added[int(d["hold"])] = d
        elif e["action"] == "hold.lifted":
            lifted.add(int(d["hold"]))
    rows = {int(h["id"]): h for h in conn.execute("SELECT * FROM holds WHERE incident_id=?",
                                                  (row["id"],))}
    for hid, d in added.items():
        h = rows.get(hid)
        if h is None:
            return f"hold {hid} is in the audit log but not in the database"
        if h["until"] != d.get("until") or h["kind"] != d.get("kind"):
            return f"hold {hid} differs from its audit event"
        if h["lifted_at"] is not None and hid not in lifted:
            return f"hold {hid} is lifted in the database but the audit log has no lift"
    for hid in rows:
        if hid not in added:
            return f"hold {hid} has no audit event"
    return None


def _journal_entries(conn: sqlite3.Connection, row: sqlite3.Row) -> list[str]:
    last: list[str] = []
    for e in audit.events(conn, subject=f"incident:{row['id']}",
                          action_prefix="purge.started"):
        last = json.loads(e["details"]).get("entries") or []
    return last


# --- existing databases -------------------------------------------------------------------------

def unsigned_open(conn: sqlite3.Connection, verifier: Verifier) -> list[dict[str, Any]]:
    """Open clearances, lifts and interrupted purges without a valid signature."""
    out = []
    for row in conn.execute("SELECT * FROM incidents WHERE state='purging' ORDER BY id"):
        if _signed(conn, verifier, KIND_PURGE_START, int(row["id"]))[0] is None:
            out.append({"kind": KIND_PURGE_START, "incident": int(row["id"]), "hold": None,
                        "by": None, "reason": row["purge_reason"], "at": None})
    for row in conn.execute("SELECT * FROM incidents WHERE cleared_at IS NOT NULL AND state "
                            "NOT IN ('purged','released','purging') ORDER BY id").fetchall():
        if _signed(conn, verifier, KIND_CLEARANCE, int(row["id"]))[0] is None:
            out.append({"kind": KIND_CLEARANCE, "incident": int(row["id"]), "hold": None,
                        "by": row["cleared_by"], "reason": row["clear_reason"],
                        "at": row["cleared_at"]})
    for h in conn.execute("SELECT h.* FROM holds h JOIN incidents i ON i.id=h.incident_id "
                          "WHERE h.lifted_at IS NOT NULL AND i.state NOT IN "
                          "('purged','released','purging') ORDER BY h.id").fetchall():
        if _signed(conn, verifier, KIND_LIFT, int(h["incident_id"]), int(h["id"]))[0] is None:
            out.append({"kind": KIND_LIFT, "incident": int(h["incident_id"]),
                        "hold": int(h["id"]), "by": h["lifted_by"], "reason": h["lift_reason"],
                        "at": h["lifted_at"]})
    return out


def resign_open(conn: sqlite3.Connection, signer: Signer, *, dry_run: bool = False
                ) -> list[dict[str, Any]]:
    """Have the custodian sign the open clearances and lifts made before signing existed.

    Only decisions that the audit log shows (and that match it) are signed: this command is a
    person vouching for old decisions, so each must be listed to them first (the CLI does)."""
    todo = unsigned_open(conn, signer)
    done = []
    for item in todo:
        row = conn.execute("SELECT * FROM incidents WHERE id=?", (item["incident"],)).fetchone()
        problem = None if item["kind"] == KIND_PURGE_START else audit_crosscheck(
            conn, row, "clearance" if item["kind"] == KIND_CLEARANCE else "destruction-request")
        if problem:
            raise IntegrityError(f"incident {item['incident']}: {problem}; not signing it")
        if dry_run:
            done.append(item)
            continue
        with transaction(conn):
            if item["kind"] == KIND_CLEARANCE:
                signed = sign_clearance(conn, item["incident"], signer)
            elif item["kind"] == KIND_LIFT:
                signed = sign_lift(conn, item["hold"], signer)
            else:
                signed = sign_purge_start(conn, row, _journal_entries(conn, row),
                                          "resumed", signer)
            audit.append(conn, "custody.re-signed", f"incident:{item['incident']}",
                         {"kind": item["kind"], "hold": item["hold"],
                          "signature": signed["signature"],
                          "fingerprint": signed["fingerprint"]})
        done.append(item)
    return done
