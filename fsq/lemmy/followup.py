"""The report's follow-up section: Lemmy actions taken for an incident and the ones to consider.

Suggestions come from the linkage (posts and comments that carry the file, the uploader). Each
is an ``fsq lemmy ...`` command line built from numeric ids and fixed words only: names, titles
and every other string from Lemmy are untrusted and never reach a command line someone might
paste into a shell. Purges and bans with ``--remove-data`` seal what they would destroy first.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from fsq.lemmy.actions import actions_for


def follow_up(conn: sqlite3.Connection, incident_id: int, linkage: dict[str, Any]
              ) -> dict[str, Any]:
    reason = f"'fsq incident {int(incident_id)}'"
    inc = f"--incident {int(incident_id)}"
    sugg: list[dict[str, Any]] = []
    for h in linkage.get("hits") or []:
        if h.get("kind") not in ("post", "comment") or not isinstance(h.get("id"), int):
            continue
        kind, hid = h["kind"], int(h["id"])
        if not h.get("removed"):
            sugg.append({"what": f"remove {kind} {hid}", "destroys": False,
                         "command": f"fsq lemmy remove {kind} {hid} {inc} --reason {reason}"})
        sugg.append({"what": f"purge {kind} {hid} (seals its local images first)",
                     "destroys": True,
                     "command": f"fsq lemmy purge {kind} {hid} {inc} --reason {reason}"})
    seen: set[int] = set()
    for u in linkage.get("uploads") or []:
        p = u.get("person") or {}
        pid = p.get("id")
        if not isinstance(pid, int) or pid in seen:
            continue
        seen.add(pid)
        sugg.append({"what": f"ban uploader (person {pid}) and seal all their uploads",
                     "destroys": True,
                     "command": f"fsq lemmy ban {pid} --remove-data {inc} --reason {reason}"})
        sugg.append({"what": f"show everything about person {pid}", "destroys": False,
                     "command": f"fsq uploader {pid}"})
    taken = [{"id": a["id"], "created_at": a["created_at"], "action": a["action"],
              "target": f"{a['target_kind']} {a['target_id']}", "state": a["state"],
              "http_status": a["http_status"], "lemmy_version": a["lemmy_version"],
              "error": a["error"], "snapshot_sha256": a.get("snapshot_sha256"),
              "sealed": sum(1 for f in a.get("evidence") or [] if f.get("status") == "sealed")}
             for a in actions_for(conn, incident_id=incident_id)]
    return {"taken": taken, "suggested": sugg,
            "note": "Run with --dry-run first to see the exact call and the files it seals."}
