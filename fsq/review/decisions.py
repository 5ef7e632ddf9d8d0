"""Reviewer decisions: the ONE adapter between the review console and the incident lifecycle.

Every call the console makes into the lifecycle (release, holds, mark reported, clearance) is
in this module, so a change of those functions (fsq.custody: holds, incidents, custodian
signatures on clearances) is adapted here only.

Each decision needs a reason and the reviewer's name, runs the existing lifecycle function
(which appends its own audit event: ``released``, ``hold.added``, ``incident.reported``,
``incident.cleared``), then records the reviewer's decision in ``incidents.review_state`` and
appends ``review.decided`` in one transaction. A lifecycle refusal (e.g. clearing an incident
that was never quarantined) raises before anything is recorded.

Known-content matching (hash banks): ``on_confirmed`` adds a confirmed incident to the
`confirmed` bank after the decision is committed; a false positive reaches the `safe` bank
through the release itself.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from fsq.errors import FsqError, NotFound, UsageError
from fsq.custody.holds import add_hold, clear_incident, mark_reported, parse_until
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.quarantine.release import release_incident
from fsq.timeutil import iso

#: decision -> (label, review_state afterwards or None = unchanged)
DECISIONS: dict[str, tuple[str, str | None]] = {
    "confirm": ("Confirm: apparent CSAM, to report", "to_report"),
    "false_positive": ("False positive: restore and allowlist", "false_positive"),
    "keep": ("Not CSAM but keep (voluntary hold)", "kept"),
    "escalate": ("Escalate to a second reviewer", "escalated"),
    "hold": ("Add a hold", None),
    "mark_reported": ("Mark reported", "reported"),
    "clear": ("Clear (allow purge after retention)", "cleared"),
}
#: Decisions that need the vault private key.
NEEDS_KEY = ("false_positive",)
_FINAL = ("released", "purged", "purging")


def on_confirmed(conn: sqlite3.Connection, incident_id: int) -> None:
    """A reviewer confirmed the incident as apparent CSAM: its sha256, md5 and PDQ go into
    the `confirmed` bank, so re-uploads (also resized or re-encoded) flag without the model."""
    from fsq.signals.banks import add_incident
    add_incident(conn, incident_id, "confirmed")   # atomic on its own (audited)


def on_false_positive(conn: sqlite3.Connection, incident_id: int) -> None:
    """A reviewer released the incident as a false positive. Nothing more to do here: the
    release itself adds the content to the `safe` bank (fsq.quarantine.release)."""


@dataclass
class Lifecycle:
    """What the lifecycle functions need from the console's process (key held in memory)."""
    private_key: Any
    vault_for: Callable[[str], Any]
    source_for: Callable[[str], Any]
    signer: Any = None      # the unlocked custodian key (fsq.custody.custodian.Signer)


def _row(conn: sqlite3.Connection, incident_id: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM incidents WHERE id=?", (incident_id,)).fetchone()
    if row is None:
        raise NotFound(f"no incident {incident_id}")
    return row


def decide(conn: sqlite3.Connection, incident_id: int, decision: str, *, reason: str,
           reviewer: str, lifecycle: Lifecycle | None = None, reference: str | None = None,
           until: str | None = None, hold_kind: str = "voluntary",
           now: datetime | None = None) -> dict[str, Any]:
    """Apply one decision to one incident; returns what was done (JSON-ready)."""
    if decision not in DECISIONS:
        raise UsageError(f"unknown decision {decision!r}; one of {', '.join(DECISIONS)}")
    reason = (reason or "").strip()
    reviewer = (reviewer or "").strip()
    if not reason:
        raise UsageError("a decision needs a reason")
    if not reviewer:
        raise UsageError("a decision needs the reviewer's name (--reviewer)")
    row = _row(conn, incident_id)
    if row["state"] in _FINAL:
        raise UsageError(f"incident {incident_id} is {row['state']}; there is nothing left to "
                         "decide")
    result: dict[str, Any] = {}
    tag = f"{reason} (review by {reviewer})"
    if decision == "false_positive":
        if lifecycle is None:
            raise UsageError("releasing a false positive needs the vault private key")
        res = release_incident(conn, row, private_key=lifecycle.private_key,
                               vault_for=lifecycle.vault_for, source_for=lifecycle.source_for,
                               reason=tag)
        result = {"restored": res["restored"],
                  "uploads_not_restored": res.get("uploads_not_restored", []),
                  "retained": res.get("retained", [])}
    elif decision in ("keep", "hold"):
        kind = "voluntary" if decision == "keep" else hold_kind
        end = parse_until(until, now) if until else None
        h = add_hold(conn, incident_id, kind=kind, reason=tag, until=end, by=reviewer,
                     vault_for=lifecycle.vault_for if lifecycle else None, now=now)
        result = {"hold": h["id"], "kind": kind, "until": h["until"]}
    elif decision == "mark_reported":
        if not (reference or "").strip():
            raise UsageError("mark reported needs the report reference (e.g. the CyberTipline "
                             "report id)")
        r = mark_reported(conn, incident_id, reference=reference or "", now=now,
                          signer=lifecycle.signer if lifecycle else None)
        result = {"reference": r["reference"], "reported_at": r["reported_at"]}
    elif decision == "clear":
        # Purge honours only clearances signed by the custodian (fsq.custody.decisions).
        if lifecycle is None or lifecycle.signer is None:
            raise UsageError("clearing needs the custodian key; add it with `fsq key "
                             "custodian-init`, then restart fsq review")
        r = clear_incident(conn, incident_id, by=reviewer, reason=reason, reference=reference,
                           now=now, signer=lifecycle.signer)
        result = {"cleared_at": r["cleared_at"]}
    new_state = DECISIONS[decision][1]
    with transaction(conn):
        if new_state is not None:
            conn.execute("UPDATE incidents SET review_state=?, reviewed_at=?, reviewed_by=? "
                         "WHERE id=?", (new_state, iso(now), reviewer, incident_id))
        if decision == "confirm":
            # A person's confirmation is what peers may trust (published by `fsq attest
            # publish`; a false positive reaches it through the `released` audit event).
            from fsq.exchange.publish import on_human_decision
            on_human_decision(conn, incident_id, "unsafe", reviewer)
        audit.append(conn, "review.decided", f"incident:{incident_id}",
                     {"decision": decision, "reason": reason, "reviewer": reviewer,
                      "previous": row["review_state"], "review_state":
                      new_state or row["review_state"], **result})
    if decision == "confirm":
        on_confirmed(conn, incident_id)
    elif decision == "false_positive":
        on_false_positive(conn, incident_id)
    return {"incident": incident_id, "decision": decision,
            "review_state": new_state or row["review_state"], **result}


def decide_many(conn: sqlite3.Connection, incident_ids: list[int], decision: str, **kw: Any
                ) -> dict[str, Any]:
    """The same decision for each incident; one failure does not stop the others."""
    done, failed = [], []
    for iid in dict.fromkeys(incident_ids):
        try:
            done.append(decide(conn, iid, decision, **kw))
        except FsqError as exc:
            failed.append({"incident": iid, "error": exc.message})
    return {"decision": decision, "done": done, "failed": failed}


def learn_uploader(conn: sqlite3.Connection, incident_id: int, uploader: str | None) -> None:
    """Cache the uploader learnt by linkage, so the queue can filter by it."""
    if uploader:
        conn.execute("UPDATE incidents SET review_uploader=? WHERE id=? AND "
                     "review_uploader IS NOT ?", (uploader[:200], incident_id, uploader[:200]))
