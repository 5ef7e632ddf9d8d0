"""Local decisions -> signed statements -> the published feed.

Where decisions come from (all of them are a person's, except opt-in model verdicts):

* ``fsq release`` (audit action ``released``): a false positive -> ``safe``;
* ``fsq incident mark-reported`` (audit ``incident.reported``): an admin reported the content
  to the authority, i.e. confirmed it -> ``unsafe``;
* ``on_human_decision()``: for the review console's "confirm" / "false positive";
* with ``FSQ_ATTEST_PUBLISH_MODEL=true``, the latest model verdict of content no person has
  decided on.

The first two are read from the audit log (each event once: its seq is the decision's ref),
so `fsq release` and `mark-reported` need no hook and a decision made before the signing key
existed is still published. Nothing here prints or needs the vault key. What a statement may
carry is fixed by fsq.exchange.dsse: digests, verdict, method (+ model facts), instance URL,
times, supersedes. Never a storage key, alias, Lemmy text, reviewer name or reason.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fsq.errors import NotFound, UsageError
from fsq.exchange import dsse
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.timeutil import iso

FEED_PAGE_MAX = 500
_AUDIT_DECISIONS = {"released": "safe", "incident.reported": "unsafe"}


@dataclass
class Publisher:
    """What signing needs: the key and the instance URL that goes into every statement."""

    key: Ed25519PrivateKey
    instance: str
    include_model: bool = False


# --- decisions ---------------------------------------------------------------------------------

def on_human_decision(conn: sqlite3.Connection, incident_id: int, verdict: str,
                      reviewer: str) -> int:
    """Record a person's decision about an incident's content ("safe" = false positive,
    "unsafe" = confirmed) for the next `fsq attest publish`. Returns the decision id.
    Needs no key: signing happens at publish time (the signing key is passphrase-protected).
    Plain INSERT: call it inside the transaction that records the decision itself."""
    if verdict not in ("safe", "unsafe"):
        raise UsageError("a human decision is 'safe' or 'unsafe'")
    row = conn.execute("SELECT sha256, md5 FROM incidents WHERE id=?", (incident_id,)).fetchone()
    if row is None:
        raise NotFound(f"no incident {incident_id}")
    now = iso()
    cur = conn.execute(
        "INSERT INTO attest_decisions (sha256, md5, verdict, method, reviewer, incident_id, "
        "origin, ref, decided_at) VALUES (?,?,?, 'human', ?,?, 'console', ?, ?)",
        (row["sha256"], row["md5"], verdict, reviewer, incident_id,
         f"{incident_id}:{now}", now))
    return int(cur.lastrowid)


def sync_decisions(conn: sqlite3.Connection, *, include_model: bool = False) -> int:
    """Derive decisions from the audit log (and, opt-in, model verdicts). Idempotent."""
    n = 0
    for r in conn.execute("SELECT seq, ts, actor, action, subject, details FROM audit WHERE "
                          "action IN ('released', 'incident.reported') ORDER BY seq"
                          ).fetchall():
        d = json.loads(r["details"])
        sha, md5 = d.get("sha256"), d.get("md5")
        iid = int(r["subject"].split(":", 1)[1]) if r["subject"].startswith("incident:") \
            else None
        if not sha and iid is not None:
            inc = conn.execute("SELECT sha256, md5 FROM incidents WHERE id=?", (iid,)).fetchone()
            sha, md5 = (inc["sha256"], inc["md5"]) if inc else (None, None)
        if not sha:
            continue
        origin = "release" if r["action"] == "released" else "reported"
        cur = conn.execute(
            "INSERT OR IGNORE INTO attest_decisions (sha256, md5, verdict, method, reviewer, "
            "incident_id, origin, ref, decided_at) VALUES (?,?,?, 'human', ?,?,?,?,?)",
            (sha, md5, _AUDIT_DECISIONS[r["action"]], r["actor"], iid, origin,
             str(r["seq"]), r["ts"]))
        n += cur.rowcount
    if include_model:
        n += _sync_model(conn)
    return n


def _sync_model(conn: sqlite3.Connection) -> int:
    """The latest model verdict per content nobody decided on, as a model decision."""
    n = 0
    rows = conn.execute(
        "SELECT v.* FROM verdicts v JOIN (SELECT sha256, MAX(id) AS id FROM verdicts "
        "WHERE method='clip' AND outcome IN ('clean','flagged') GROUP BY sha256) l ON l.id=v.id "
        "WHERE v.sha256 NOT IN (SELECT sha256 FROM attest_decisions WHERE method='human')"
    ).fetchall()
    for v in rows:
        det = json.loads(v["details"] or "{}")
        scores = det.get("scores") if isinstance(det.get("scores"), dict) else {}
        scores = {str(k)[:100]: float(s) for k, s in list(scores.items())[:dsse.MAX_SCORES]
                  if type(s) in (int, float)}
        md5 = conn.execute("SELECT md5 FROM objects WHERE sha256=? AND md5 IS NOT NULL LIMIT 1",
                           (v["sha256"],)).fetchone()
        model = {"id": str(v["model_id"] or "unknown")[:200],
                 "concepts_digest": (v["concepts_digest"] or None), "scores": scores}
        cur = conn.execute(
            "INSERT OR IGNORE INTO attest_decisions (sha256, md5, verdict, method, origin, ref, "
            "decided_at, details) VALUES (?,?,?, 'model', 'model', ?, ?, ?)",
            (v["sha256"], md5[0] if md5 else None,
             "unsafe" if v["outcome"] == "flagged" else "safe", f"verdict:{v['id']}",
             v["created_at"], json.dumps(model, sort_keys=True)))
        n += cur.rowcount
    return n


# --- statements --------------------------------------------------------------------------------

def current_statement(conn: sqlite3.Connection, sha256: str) -> sqlite3.Row | None:
    """This instance's newest statement about ``sha256`` (a revocation included)."""
    return conn.execute("SELECT * FROM attest_statements WHERE sha256=? ORDER BY seq DESC "
                        "LIMIT 1", (sha256,)).fetchone()


def _store(conn: sqlite3.Connection, env: dict[str, Any], st: dict[str, Any]) -> str:
    body = dsse.unb64(env["payload"], "payload")
    sid = dsse.statement_id(body)
    p = st["predicate"]
    conn.execute("INSERT INTO attest_statements (id, sha256, verdict, method, time, supersedes, "
                 "keyid, envelope) VALUES (?,?,?,?,?,?,?,?)",
                 (sid, st["subject"][0]["digest"]["sha256"], p["verdict"], p["method"],
                  p["time"], p["supersedes"], env["signatures"][0]["keyid"],
                  json.dumps(env, sort_keys=True, separators=(",", ":"))))
    return sid


def publish(conn: sqlite3.Connection, pub: Publisher, *, dry_run: bool = False
            ) -> dict[str, Any]:
    """Sign a statement for each content whose newest pending decision differs from what this
    instance last said about it; the new statement supersedes the old one."""
    new: list[dict[str, Any]] = []
    with transaction(conn):
        sync_decisions(conn, include_model=pub.include_model)
        pending = conn.execute("SELECT * FROM attest_decisions WHERE statement_id IS NULL "
                               "ORDER BY decided_at, id").fetchall()
        latest: dict[str, sqlite3.Row] = {}
        for d in pending:  # human beats model; among equals, the newest
            cur = latest.get(d["sha256"])
            if cur is None or d["method"] == "human" or cur["method"] == "model":
                latest[d["sha256"]] = d
        for sha, d in latest.items():
            prev = current_statement(conn, sha)
            if prev is not None and prev["verdict"] == d["verdict"] \
                    and prev["method"] == d["method"]:
                sid = prev["id"]  # already said; nothing new to sign
            else:
                st = dsse.build_statement(
                    sha256=sha, md5=d["md5"], verdict=d["verdict"], method=d["method"],
                    instance=pub.instance,
                    supersedes=prev["id"] if prev is not None and prev["verdict"] != "unknown"
                    else None,
                    model=json.loads(d["details"]) if d["method"] == "model" else None)
                sid = _store(conn, dsse.sign(st, pub.key), st)
                new.append({"statement": sid, "sha256": sha, "verdict": d["verdict"],
                            "method": d["method"],
                            "supersedes": st["predicate"]["supersedes"]})
            conn.execute("UPDATE attest_decisions SET statement_id=? WHERE statement_id IS NULL "
                         "AND sha256=?", (sid, sha))
        if new:
            audit.append(conn, "attest.published", "attestations",
                         {"count": len(new), "statements": [n["statement"] for n in new][:100]})
        if dry_run:
            raise _Rollback(new)
    return {"published": new, "dry_run": False}


class _Rollback(Exception):
    def __init__(self, new: list[dict[str, Any]]) -> None:
        super().__init__("dry run")
        self.new = new


def publish_or_rehearse(conn: sqlite3.Connection, pub: Publisher, *, dry_run: bool
                        ) -> dict[str, Any]:
    """``publish`` with --dry-run support: a rehearsal signs and rolls everything back."""
    try:
        return publish(conn, pub, dry_run=dry_run)
    except _Rollback as r:
        return {"published": r.new, "dry_run": True}


def revoke(conn: sqlite3.Connection, pub: Publisher, target: str) -> dict[str, Any]:
    """Sign an ``unknown`` statement superseding this instance's current statement about the
    content (``target``: a statement id or a content sha256, full 64 hex)."""
    t = target.strip().lower()
    with transaction(conn):
        row = conn.execute("SELECT * FROM attest_statements WHERE id=?", (t,)).fetchone() \
            or current_statement(conn, t)
        if row is None:
            raise NotFound(f"no statement {t} (give a statement id or content sha256 from "
                           "`fsq attest list`)")
        cur = current_statement(conn, row["sha256"])
        assert cur is not None
        if cur["id"] != row["id"]:
            raise UsageError(f"statement {row['id'][:16]} is already superseded by "
                             f"{cur['id'][:16]}; revoke the current one")
        if cur["verdict"] == "unknown":
            raise UsageError(f"the statement about {row['sha256'][:16]} is already revoked")
        old = json.loads(dsse.unb64(json.loads(cur["envelope"])["payload"], "payload"))
        md5 = old["subject"][0]["digest"].get("md5")
        st = dsse.build_statement(sha256=cur["sha256"], md5=md5, verdict="unknown",
                                  method=cur["method"], instance=pub.instance,
                                  supersedes=cur["id"],
                                  model=old["predicate"].get("model"))
        sid = _store(conn, dsse.sign(st, pub.key), st)
        audit.append(conn, "attest.revoked", f"statement:{cur['id']}",
                     {"sha256": cur["sha256"], "revoked": cur["id"], "statement": sid})
    return {"statement": sid, "revoked": cur["id"], "sha256": cur["sha256"]}


def list_statements(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    revoked = {r[0] for r in conn.execute("SELECT supersedes FROM attest_statements "
                                          "WHERE supersedes IS NOT NULL")}
    return [{"seq": r["seq"], "statement": r["id"], "sha256": r["sha256"],
             "verdict": r["verdict"], "method": r["method"], "time": r["time"],
             "supersedes": r["supersedes"], "superseded": r["id"] in revoked}
            for r in conn.execute("SELECT * FROM attest_statements ORDER BY seq")]


# --- the feed ----------------------------------------------------------------------------------

def keys_document(public_key: Ed25519PublicKey, instance: str | None) -> dict[str, Any]:
    raw = dsse.raw_public(public_key)
    return {"instance": instance, "format": "fsq-keys", "version": 1,
            "keys": [{"keyid": dsse.keyid(raw), "algorithm": "ed25519",
                      "public_key": dsse.b64(raw), "use": "attestations"}]}


def feed_page(conn: sqlite3.Connection, *, since: int, limit: int, include_model: bool
              ) -> tuple[list[dict[str, Any]], int, bool]:
    """Statements after cursor ``since``: (records, newest cursor, more?). Only human verdicts
    unless ``include_model``; a record is {"cursor": "N", "dsse": envelope}."""
    limit = max(1, min(limit, FEED_PAGE_MAX))
    methods = ("human", "model") if include_model else ("human",)
    rows = conn.execute(
        f"SELECT seq, envelope FROM attest_statements WHERE seq > ? AND method IN "
        f"({','.join('?' * len(methods))}) ORDER BY seq LIMIT ?",
        (since, *methods, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    records = [{"cursor": str(r["seq"]), "dsse": json.loads(r["envelope"])} for r in rows]
    if rows:
        cursor = rows[-1]["seq"]
    else:  # nothing (visible) after since: skip over hidden ones, never go backwards
        top = conn.execute("SELECT MAX(seq) FROM attest_statements").fetchone()[0] or 0
        cursor = max(since, top) if not more else since
    return records, int(cursor), more


def feed_lines(records: list[dict[str, Any]], cursor: int, more: bool) -> Iterator[bytes]:
    """The wire form: one JSON object per line, then an end record with the newest cursor."""
    for rec in records:
        yield json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    yield json.dumps({"end": True, "cursor": str(cursor), "more": more, "count": len(records)},
                     sort_keys=True, separators=(",", ":")).encode() + b"\n"


def export(conn: sqlite3.Connection, public_key: Ed25519PublicKey, instance: str | None, *,
           include_model: bool) -> Iterator[bytes]:
    """An offline copy of the whole feed: a header line with keys.json, then the records."""
    yield json.dumps({"fsq_export": 1, "keys": keys_document(public_key, instance)},
                     sort_keys=True, separators=(",", ":")).encode() + b"\n"
    since = 0
    while True:
        records, cursor, more = feed_page(conn, since=since, limit=FEED_PAGE_MAX,
                                          include_model=include_model)
        yield from feed_lines(records, cursor, more)
        if not more:
            return
        since = cursor
