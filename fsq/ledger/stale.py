"""Stale verdicts: objects decided under other decision settings than the current ones.

A scan skips keys whose size and mtime are unchanged, so changing the model, the concept set or
the severity has no effect on files already scanned. Every model verdict is therefore tagged
with ``settings_digest``, the digest of the settings that decided it (model, pretrained
weights, concept-set digest, severity, decision-rule version); a scan counts the objects whose
current verdict carries another digest, and ``--rescan-stale`` re-decides exactly those.

Only model verdicts (method ``clip``, and ``cache`` verdicts reusing one) depend on these
settings: allowlist, hash-list and unreadable verdicts do not, and are never stale here.
Verdicts written before digests were recorded (no ``settings_digest``) are compared on the
columns they do have: concept digest, severity and rule version.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from typing import Any

def pretrained_identity(pretrained: str | None) -> str | None:
    """A tag as given; a local checkpoint by (real path, size, mtime): cheap, no hashing of a
    multi-GB file at every start. Replacing the file counts as a change (conservative)."""
    if not pretrained:
        return pretrained
    p = os.path.expanduser(pretrained)
    try:
        st = os.stat(p)
    except OSError:
        return pretrained  # a tag (or a file that is not there: the model load will say so)
    return f"file:{os.path.realpath(p)}:{st.st_size}:{st.st_mtime_ns}"


def settings_digest(*, model: str, pretrained: str | None, concepts_digest: str | None,
                    severity: str | None, rule_version: str | None) -> str:
    doc = {"model": model, "pretrained": pretrained_identity(pretrained),
           "concepts_digest": concepts_digest, "severity": severity,
           "rule_version": rule_version}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# The verdict that decided each object: its own row, for a 'cache' verdict the reused one, for
# a 'variant-of' verdict (fsq.engine.variants) its original's: stale when its original's is.
_DECIDING = """
SELECT o.id AS object_id, o.key, o.status,
       COALESCE(d.settings_digest, v.settings_digest) AS digest,
       COALESCE(d.concepts_digest, v.concepts_digest) AS concepts_digest,
       COALESCE(d.severity, v.severity) AS severity,
       COALESCE(d.rule_version, v.rule_version) AS rule_version,
       COALESCE(d.method, v.method) AS method
FROM objects o
JOIN verdicts v ON v.id = o.verdict_id
LEFT JOIN verdicts d ON v.method IN ('cache', 'variant-of')
                    AND d.id = CAST(COALESCE(json_extract(v.details, '$.reused_verdict'),
                                             json_extract(v.details, '$.original_verdict'))
                                    AS INTEGER)
WHERE o.source = ? AND o.status IN ('clean', 'flagged')
"""


def stale_objects(conn: sqlite3.Connection, source: str, *, digest: str,
                  concepts_digest: str | None, severity: str | None,
                  rule_version: str | None) -> list[dict[str, Any]]:
    """Objects of ``source`` decided by the model under other settings, with what differs."""
    out = []
    for r in conn.execute(_DECIDING, (source,)):
        if r["method"] not in ("clip", "rescore"):  # rescore: fsq.rescore
            continue
        if r["digest"] is not None:
            if r["digest"] == digest:
                continue
        elif (r["concepts_digest"], r["severity"], r["rule_version"]) == \
                (concepts_digest, severity, rule_version):
            continue  # recorded before digests: what it does record is unchanged
        what = [name for name, old, new in (("concept set", r["concepts_digest"], concepts_digest),
                                            ("severity", r["severity"], severity),
                                            ("rule version", r["rule_version"], rule_version))
                if old != new]
        if r["digest"] is not None and not what:
            what = ["model"]
        out.append({"object_id": r["object_id"], "key": r["key"], "status": r["status"],
                    "changed": what})
    return out


def describe(stale: list[dict[str, Any]]) -> str:
    """'concept set/severity' style summary of what changed, for one message line."""
    seen: list[str] = []
    for s in stale:
        for w in s["changed"]:
            if w not in seen:
                seen.append(w)
    return "/".join(seen) or "settings"
