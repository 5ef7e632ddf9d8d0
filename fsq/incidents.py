"""Incident queries: one incident per content sha256, with every storage key that held it."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from fsq.errors import NotFound, UsageError


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
    """Every storage key known to have held this content."""
    return conn.execute("SELECT * FROM objects WHERE sha256=? ORDER BY first_seen",
                        (sha256,)).fetchall()


def summary(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    ents = entries(conn, row["id"])
    held = [e for e in ents if e["state"] == "done"]
    return {
        "id": row["id"], "state": row["state"], "sha256": row["sha256"], "md5": row["md5"],
        "size": row["size"], "media_type": row["media_type"], "created_at": row["created_at"],
        "quarantined_at": row["quarantined_at"], "reported_at": row["reported_at"],
        "keys": len(keys(conn, row["sha256"])), "vault_entries": len(held),
        "origin": row["origin"],
    }


def detail(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    d = summary(conn, row)
    d.update({k: row[k] for k in ("width", "height", "report_reference", "cleared_at",
                                  "cleared_by", "clear_reason", "clear_reference", "purged_at",
                                  "purge_reason", "released_at", "release_reason")})
    d["storage_keys"] = [{"source": o["source"], "key": o["key"], "status": o["status"],
                          "first_seen": o["first_seen"], "last_seen": o["last_seen"]}
                         for o in keys(conn, row["sha256"])]
    d["entries"] = [{"entry": e["id"], "source": e["source"], "key": e["key"],
                     "state": e["state"], "vault": e["vault"], "created_at": e["created_at"],
                     "blob_sha256": e["blob_sha256"]} for e in entries(conn, row["id"])]
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
