"""Incident queries: one incident per content sha256, with every storage key that held it."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from fsq.custody.retention import EVIDENCE_STATES, HoldFacts, IncidentFacts, active_holds, \
    display_state, retention_end
from fsq.errors import NotFound, UsageError
from fsq.timeutil import iso, utcnow


def resolve(conn: sqlite3.Connection, ref: str | int) -> sqlite3.Row:
    """An incident by id ("12") or by a sha256 prefix of at least 8 hex chars."""
    text = str(ref).strip()
    if text.isdigit():
        row = conn.execute("SELECT * FROM incidents WHERE id=?", (int(text),)).fetchone()
        if row is None:
            raise NotFound(f"no incident {text}; list them with `fsq incidents`")
        return row
    t = text.lower()
    if len(t) >= 8 and all(c in "0123456789abcdef" for c in t):
        rows = conn.execute("SELECT * FROM incidents WHERE sha256 LIKE ? LIMIT 2",
                            (t + "%",)).fetchall()
        if not rows:
            raise NotFound(f"no incident with sha256 starting {t}")
        if len(rows) > 1:
            raise UsageError(f"sha256 prefix {t} is ambiguous; give more characters or the id")
        return rows[0]
    raise UsageError(f"{text!r} is not an incident id or a sha256 prefix (8+ hex characters)")


def entries(conn: sqlite3.Connection, incident_id: int) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM vault_entries WHERE incident_id=? ORDER BY created_at",
                        (incident_id,)).fetchall()


def keys(conn: sqlite3.Connection, sha256: str) -> list[sqlite3.Row]:
    """Every storage key known to have held this content, and the keys of content sealed
    into its incident with it (pict-rs variants and motion files: incident_content)."""
    return conn.execute("SELECT * FROM objects WHERE sha256=? OR sha256 IN (SELECT ic.sha256 "
                        "FROM incident_content ic JOIN incidents i ON i.id = ic.incident_id "
                        "WHERE i.sha256=?) ORDER BY first_seen", (sha256, sha256)).fetchall()


def summary(conn: sqlite3.Connection, row: sqlite3.Row, *, retention_days: int | None = None,
            now: datetime | None = None) -> dict[str, Any]:
    """One incident for listings. ``display_state`` is what a person should see (``held``
    when a hold is active; see fsq.custody.retention.display_state); ``retention_end`` is given
    for incidents whose evidence is in the vault when ``retention_days`` is passed."""
    now = now or utcnow()
    ents = entries(conn, row["id"])
    held = [e for e in ents if e["state"] == "done"]
    facts = IncidentFacts.from_row(row)
    holds = [HoldFacts.from_row(h) for h in
             conn.execute("SELECT * FROM holds WHERE incident_id=? ORDER BY id", (row["id"],))]
    end = None
    if retention_days is not None and row["state"] in EVIDENCE_STATES:
        end_dt = retention_end(facts, retention_days)
        end = iso(end_dt) if end_dt else None
    return {
        "id": row["id"], "state": row["state"], "sha256": row["sha256"], "md5": row["md5"],
        "size": row["size"], "media_type": row["media_type"], "created_at": row["created_at"],
        "quarantined_at": row["quarantined_at"], "reported_at": row["reported_at"],
        "keys": len(keys(conn, row["sha256"])), "vault_entries": len(held),
        "origin": row["origin"],
        "display_state": display_state(facts, holds, now), "retention_end": end,
        "cleared_at": row["cleared_at"], "purged_at": row["purged_at"],
        "active_holds": [h.id for h in active_holds(holds, now)],
    }


def detail(conn: sqlite3.Connection, row: sqlite3.Row, *, retention_days: int | None = None,
           now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    d = summary(conn, row, retention_days=retention_days, now=now)
    d.update({k: row[k] for k in ("width", "height", "report_reference", "cleared_at",
                                  "cleared_by", "clear_reason", "clear_reference", "purged_at",
                                  "purge_reason", "released_at", "release_reason")})
    d["storage_keys"] = [{"source": o["source"], "key": o["key"], "status": o["status"],
                          "first_seen": o["first_seen"], "last_seen": o["last_seen"]}
                         for o in keys(conn, row["sha256"])]
    d["entries"] = [{"entry": e["id"], "source": e["source"], "key": e["key"],
                     "state": e["state"], "vault": e["vault"], "created_at": e["created_at"],
                     "blob_sha256": e["blob_sha256"]} for e in entries(conn, row["id"])]
    d["holds"] = [{"id": h["id"], "kind": h["kind"], "reason": h["reason"], "until": h["until"],
                   "lifted_at": h["lifted_at"],
                   "active": h["id"] in d["active_holds"]}
                  for h in conn.execute("SELECT * FROM holds WHERE incident_id=? ORDER BY id",
                                        (row["id"],))]
    v = conn.execute("SELECT * FROM verdicts WHERE id=?", (row["verdict_id"],)).fetchone() \
        if row["verdict_id"] else None
    if v is not None:
        det = json.loads(v["details"] or "{}")
        d["verdict"] = {"method": v["method"], "reason": v["reason"], "model_id": v["model_id"],
                        "concepts_digest": v["concepts_digest"], "severity": v["severity"],
                        "rule_version": v["rule_version"], "fired": det.get("fired", []),
                        "underage_count": det.get("underage_count")}
    else:
        d["verdict"] = None
    return d
