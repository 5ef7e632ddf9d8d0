"""The uploader view: one person, everything fsq and Lemmy know about them.

``uploader_view(conn, settings, person)`` (for ``fsq uploader`` and the review console):
the person (Lemmy DB), their uploads (``local_image``), their login IPs, every incident tied to
one of their uploads -- through the alias -> stored file map learnt by linkage and by ``fsq
lemmy`` (``identifier_aliases``), matched against the storage keys of fsq's objects and vault
entries -- and the Lemmy actions fsq took against them. Read-only.

The suggested follow-up is ``fsq lemmy ban ID --remove-data`` ("ban + seal all uploads": the
ban seals every upload first, see fsq.lemmy.actions). Command lines use the numeric id only,
never a name from Lemmy (untrusted text must not reach a shell).
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict
from typing import Any

from fsq.lemmy import targets
from fsq.lemmy.actions import _open_db, actions_for


def _incidents_for_keys(conn: sqlite3.Connection, keys: list[str]) -> dict[str, list[int]]:
    """storage key / identifier -> incident ids (via objects.sha256 and vault entries)."""
    out: dict[str, list[int]] = {}
    for k in dict.fromkeys(keys):
        ids = [r[0] for r in conn.execute(
            "SELECT i.id FROM objects o JOIN incidents i ON i.sha256 = o.sha256 WHERE o.key = ? "
            "UNION SELECT incident_id FROM vault_entries WHERE key = ? AND state = 'done' "
            "ORDER BY 1", (k, k))]
        if ids:
            out[k] = ids
    return out


def uploader_view(conn: sqlite3.Connection, settings: Any, person: str | int
                  ) -> dict[str, Any]:
    db = _open_db(settings, needed=True)
    try:
        p = targets.find_person(db, person)
        uploads = targets.person_upload_aliases(db, p.id)
        uid, email, logins = targets.person_logins(db, p.id)
        schema = db.schema.version
    finally:
        db.close()
    rows = []
    all_incidents: dict[int, None] = {}
    for alias, published in uploads:
        keys = [r[0] for r in conn.execute(
            "SELECT identifier FROM identifier_aliases WHERE alias = ? ORDER BY identifier",
            (alias,))]
        inc = sorted({i for ids in _incidents_for_keys(conn, keys).values() for i in ids})
        for i in inc:
            all_incidents[i] = None
        rows.append({"alias": alias, "published": published, "stored_as": keys,
                     "incidents": inc})
    incidents = []
    for iid in all_incidents:
        r = conn.execute("SELECT id, state, sha256, origin, created_at, linked_incident_id "
                         "FROM incidents WHERE id = ?", (iid,)).fetchone()
        incidents.append({k: r[k] for k in r.keys()})
    actions = actions_for(conn, person_id=p.id)
    for a in conn.execute("SELECT DISTINCT incident_id FROM lemmy_actions WHERE target_kind = "
                          "'person' AND target_id = ? AND incident_id IS NOT NULL", (p.id,)):
        if a[0] not in all_incidents:
            r = conn.execute("SELECT id, state, sha256, origin, created_at, linked_incident_id "
                             "FROM incidents WHERE id = ?", (a[0],)).fetchone()
            incidents.append({k: r[k] for k in r.keys()})
            all_incidents[a[0]] = None
    unmapped = sum(1 for r in rows if not r["stored_as"])
    return {
        "person": asdict(p), "lemmy_schema": schema, "local_user_id": uid, "email": email,
        "logins": [asdict(lg) for lg in logins], "uploads": rows, "incidents": incidents,
        "actions": actions,
        "notes": ([f"{unmapped} upload(s) not yet mapped to a stored file (a report or an "
                   "`fsq lemmy` action learns the mapping)"] if unmapped else []),
        "suggested": [
            {"label": "ban + seal all uploads",
             "command": f"fsq lemmy ban {p.id} --remove-data --reason 'REASON'"},
            {"label": "purge the account (seals all uploads first)",
             "command": f"fsq lemmy purge person {p.id} --reason 'REASON'"}],
    }
