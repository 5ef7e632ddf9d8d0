"""The hash-chained, append-only audit log (invariant 3).

Each row holds: seq (1, 2, 3, ... without gaps), UTC time, actor (OS user@host), tool version,
command, action, subject, details (canonical JSON), prev_hash and hash, where

    hash = SHA-256( prev_hash || "\\n" || canonical_json(row without prev_hash/hash) )

and prev_hash of seq 1 is 64 zeros. Consequences, which ``verify`` checks:

* editing any field of a row changes its hash -> that row fails;
* deleting a row leaves a gap in seq and breaks the next row's prev_hash -> named at the gap;
* inserting a row needs a free seq and a matching prev_hash: it breaks the row after it;
* reordering breaks prev_hash links;
* truncating the tail leaves a valid shorter chain: only an *anchor* (a SEQ:HASH head saved
  elsewhere earlier, e.g. ``fsq audit head`` in a ticket or a second machine) proves rows were
  dropped. ``verify(anchor=...)`` checks the anchor row is still there with that hash.

SQLite triggers refuse UPDATE and DELETE so ordinary code paths cannot shorten the log; an
attacker with file access can drop the triggers, which is why the chain exists.

Audit rows are never deleted, not even by purge (invariant 5 keeps a minimal trace here).
Details must never contain secrets or evidence bytes: hashes, ids, reasons and counts only.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterator

from fsq import __version__
from fsq.errors import IntegrityError, UsageError
from fsq.secrets import redact
from fsq.timeutil import iso

GENESIS = "0" * 64

# The command currently running; set once by the CLI entry point.
_context = {"command": "library"}


def set_command(command: str) -> None:
    _context["command"] = command


def actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = "uid-unknown"
    return f"{user}@{socket.gethostname()}"


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 (not \\u escapes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def row_hash(prev_hash: str, seq: int, ts: str, actor_: str, tool_version: str, command: str,
             action: str, subject: str, details: str) -> str:
    body = canonical_json({
        "seq": seq, "ts": ts, "actor": actor_, "tool_version": tool_version,
        "command": command, "action": action, "subject": subject, "details": details,
    })
    return hashlib.sha256((prev_hash + "\n" + body).encode("utf-8")).hexdigest()


def append(conn: sqlite3.Connection, action: str, subject: str | int = "",
           details: dict[str, Any] | None = None, *, command: str | None = None) -> int:
    """Append one event and return its seq.

    If the connection is already inside a transaction the row joins it (so the event commits or
    rolls back with the change it describes); otherwise it gets its own IMMEDIATE transaction,
    which serialises concurrent writers so two processes cannot both extend the same head.
    """
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        ts = iso()
        who = actor()
        cmd = command or _context["command"]
        # Details never carry secrets (see the module docstring); the one masking function is
        # the backstop for a message or URL that slipped in.
        det = canonical_json(redact(details or {}))
        h = row_hash(prev, seq, ts, who, __version__, cmd, action, str(subject), det)
        conn.execute(
            "INSERT INTO audit (seq, ts, actor, tool_version, command, action, subject, "
            "details, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (seq, ts, who, __version__, cmd, action, str(subject), det, prev, h))
        if own:
            conn.execute("COMMIT")
        _context["appended"] = "1"  # the CLI publishes the new head to the witness
    except BaseException:
        if own:
            conn.execute("ROLLBACK")
        raise
    return seq


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    head: str | None          # "SEQ:HASH" of the last good row
    bad_seq: int | None = None
    problem: str | None = None


def parse_anchor(text: str) -> tuple[int, str]:
    seq, sep, h = text.strip().partition(":")
    if not sep or not seq.isdigit() or len(h) != 64 or any(c not in "0123456789abcdef"
                                                             for c in h.lower()):
        raise UsageError(f"anchor {text!r} is not SEQ:HASH (as printed by `fsq audit head`)")
    return int(seq), h.lower()


def verify(conn: sqlite3.Connection, anchor: str | None = None) -> VerifyResult:
    """Recompute the chain from seq 1. Never raises for a broken chain: returns the first bad
    seq and a description (the CLI turns ok=False into exit 4)."""
    anchor_t = parse_anchor(anchor) if anchor else None
    prev = GENESIS
    expected = 1
    n = 0
    head = None
    anchor_seen = False
    for r in conn.execute("SELECT seq, ts, actor, tool_version, command, action, subject, "
                          "details, prev_hash, hash FROM audit ORDER BY seq"):
        seq = r[0]
        if seq != expected:
            return VerifyResult(False, n, head, expected,
                                f"row {expected} is missing (next row is {seq})"
                                if seq > expected else f"duplicate or out-of-order seq {seq}")
        if r[8] != prev:
            return VerifyResult(False, n, head, seq,
                                f"row {seq} does not link to row {seq - 1} (prev_hash differs)")
        h = row_hash(prev, seq, r[1], r[2], r[3], r[4], r[5], r[6], r[7])
        if h != r[9]:
            return VerifyResult(False, n, head, seq, f"row {seq} was altered (hash differs)")
        if anchor_t and seq == anchor_t[0]:
            if h != anchor_t[1]:
                return VerifyResult(False, n, head, seq,
                                    f"row {seq} does not match the anchor hash: the log was "
                                    "rewritten since the anchor was taken")
            anchor_seen = True
        prev = h
        expected += 1
        n += 1
        head = f"{seq}:{h}"
    if anchor_t and not anchor_seen:
        return VerifyResult(False, n, head, anchor_t[0],
                            f"anchor row {anchor_t[0]} is gone: the log was truncated "
                            f"(it now ends at row {n})")
    return VerifyResult(True, n, head)


def head(conn: sqlite3.Connection) -> str | None:
    r = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return f"{r[0]}:{r[1]}" if r else None


def events(conn: sqlite3.Connection, subject: str | None = None,
           action_prefix: str | None = None) -> Iterator[sqlite3.Row]:
    sql = "SELECT * FROM audit"
    where, args = [], []
    if subject is not None:
        where.append("subject = ?")
        args.append(str(subject))
    if action_prefix is not None:
        where.append("action LIKE ?")
        args.append(action_prefix + "%")
    if where:
        sql += " WHERE " + " AND ".join(where)
    yield from conn.execute(sql + " ORDER BY seq", args)


def require_intact(conn: sqlite3.Connection) -> None:
    """Raise IntegrityError if the chain is broken (for commands that must not proceed)."""
    res = verify(conn)
    if not res.ok:
        raise IntegrityError(f"audit log broken at row {res.bad_seq}: {res.problem}")
