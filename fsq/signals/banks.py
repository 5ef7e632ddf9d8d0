"""Hash banks in the state database: named collections of signals with a purpose.

* ``confirmed`` (kind unsafe): content a reviewer confirmed (``add_incident``, called when an
  incident is confirmed) or an admin added (``fsq hashes add``).
* ``safe`` (kind safe): released false positives (``fsq.quarantine.release`` calls
  ``add_incident(conn, id, "safe")``) and ``fsq hashes add --safe``.
* any imported list (kind unsafe, created on first import).

Safe banks never hold MD5s: MD5 collisions can be made on purpose, and a safe match skips the
model. Unsafe banks may (a wrong MD5 match is a false positive a person reviews, not a miss).

Every change is an audit event: ``hashes.imported`` / ``hashes.removed`` name the list file's
sha256, ``hashes.added`` the incident or files. The functions here write inside the caller's
transaction when there is one (a savepoint), else in their own: release adds to ``safe`` in
the same transaction that marks the incident released.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from fsq.errors import NotFound, UsageError
from fsq.ledger import audit
from fsq.ledger.db import atomic
from fsq.signals.formats import Signal
from fsq.signals.pdq import MIN_QUALITY, FrameHash
from fsq.timeutil import iso

CONFIRMED = "confirmed"
SAFE = "safe"
BUILTIN = (CONFIRMED, SAFE)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Bank:
    name: str
    kind: str      # unsafe | safe


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise UsageError(f"bank name {name!r} is not valid: use 1-64 of a-z 0-9 _ . - "
                         "(starting with a letter or digit)")
    return name


def get_bank(conn: sqlite3.Connection, name: str) -> Bank | None:
    r = conn.execute("SELECT name, kind FROM banks WHERE name=?", (name,)).fetchone()
    return Bank(r["name"], r["kind"]) if r else None


def require_bank(conn: sqlite3.Connection, name: str) -> Bank:
    b = get_bank(conn, name)
    if b is None:
        raise NotFound(f"no bank named {name!r}; `fsq hashes list` shows the banks")
    return b


def ensure_bank(conn: sqlite3.Connection, name: str, kind: str = "unsafe") -> Bank:
    b = get_bank(conn, check_name(name))
    if b is not None:
        return b
    conn.execute("INSERT INTO banks (name, kind, description, created_at) VALUES (?,?,?,?)",
                 (name, kind, "imported list", iso()))
    return Bank(name, kind)


def _usable_for(bank: Bank, signals: Iterable[Signal]) -> tuple[list[Signal], int]:
    keep, dropped = [], 0
    for s in signals:
        if bank.kind == "safe" and s.signal_type in ("md5", "video_md5"):
            dropped += 1   # see module docstring: never trust an MD5 to skip the model
            continue
        keep.append(s)
    return keep, dropped


def _insert(conn: sqlite3.Connection, bank: Bank, signals: list[Signal], origin: str,
            incident_id: int | None) -> int:
    now = iso()
    added = 0
    for s in signals:
        cur = conn.execute(
            "INSERT OR IGNORE INTO bank_signals (bank, signal_type, signal_value, quality, "
            "incident_id, origin, note, added_at) VALUES (?,?,?,?,?,?,?,?)",
            (bank.name, s.signal_type, s.signal_value, s.quality, incident_id, origin, s.note,
             now))
        added += cur.rowcount
    return added


def import_signals(conn: sqlite3.Connection, bank_name: str, signals: list[Signal], *,
                   file_name: str, file_sha256: str) -> dict[str, Any]:
    """Add a parsed list to a bank (created as unsafe if new), in one transaction."""
    with atomic(conn, "fsq_bank"):
        bank = ensure_bank(conn, bank_name)
        keep, dropped = _usable_for(bank, signals)
        added = _insert(conn, bank, keep, f"import:{file_sha256}", None)
        result = {"bank": bank.name, "kind": bank.kind, "file": file_name,
                  "file_sha256": file_sha256, "lines": len(signals), "added": added,
                  "already_present": len(keep) - added, "refused_md5_in_safe": dropped,
                  "by_type": _by_type(keep)}
        audit.append(conn, "hashes.imported", f"bank:{bank.name}", result)
    return result


def remove_signals(conn: sqlite3.Connection, bank_name: str, *,
                   signals: list[Signal] | None = None, ids: list[int] | None = None,
                   everything: bool = False, file_name: str | None = None,
                   file_sha256: str | None = None) -> dict[str, Any]:
    """Remove the listed signals, entry ids, or (``everything``) all of a bank's signals; an
    imported bank left empty by ``everything`` is dropped. One transaction, audited."""
    with atomic(conn, "fsq_bank"):
        bank = require_bank(conn, bank_name)
        removed = 0
        if everything:
            removed = conn.execute("DELETE FROM bank_signals WHERE bank=?",
                                   (bank.name,)).rowcount
            if bank.name not in BUILTIN:
                conn.execute("DELETE FROM banks WHERE name=?", (bank.name,))
        for s in signals or ():
            removed += conn.execute(
                "DELETE FROM bank_signals WHERE bank=? AND signal_type=? AND signal_value=?",
                (bank.name, s.signal_type, s.signal_value)).rowcount
        for i in ids or ():
            removed += conn.execute("DELETE FROM bank_signals WHERE bank=? AND id=?",
                                    (bank.name, int(i))).rowcount
        result = {"bank": bank.name, "removed": removed, "all": everything,
                  **({"file": file_name, "file_sha256": file_sha256} if file_sha256 else {}),
                  **({"ids": list(ids)} if ids else {})}
        audit.append(conn, "hashes.removed", f"bank:{bank.name}", result)
    return result


def incident_signals(conn: sqlite3.Connection, incident: sqlite3.Row) -> list[Signal]:
    """sha256, md5 and the usable PDQs on record for an incident's content (stored when it was
    decoded; no evidence is decrypted)."""
    out = [Signal("sha256", incident["sha256"])]
    if incident["md5"]:
        out.append(Signal("md5", incident["md5"]))
    for r in conn.execute("SELECT pdq, quality FROM content_pdq WHERE sha256=? AND quality>=? "
                          "ORDER BY frame", (incident["sha256"], MIN_QUALITY)):
        out.append(Signal("pdq", r["pdq"], r["quality"]))
    return out


def add_incident(conn: sqlite3.Connection, incident_id: int, bank: str, *,
                 origin: str | None = None, actor_note: str | None = None) -> dict[str, Any]:
    """Put an incident's signals into ``bank`` (review confirm -> 'confirmed', release ->
    'safe'). Returns what was added; ``pdq`` 0 means the content was never decoded (flagged by
    an exact hash) or is a flat image: only exact hashes then."""
    with atomic(conn, "fsq_bank"):
        inc = conn.execute("SELECT * FROM incidents WHERE id=?", (int(incident_id),)).fetchone()
        if inc is None:
            raise NotFound(f"no incident {incident_id}")
        b = require_bank(conn, bank)
        keep, dropped = _usable_for(b, incident_signals(conn, inc))
        if actor_note:
            keep = [Signal(s.signal_type, s.signal_value, s.quality, actor_note) for s in keep]
        added = _insert(conn, b, keep, origin or f"incident:{inc['id']}", int(inc["id"]))
        result = {"bank": b.name, "incident": int(inc["id"]), "sha256": inc["sha256"],
                  "added": added, "already_present": len(keep) - added,
                  "by_type": _by_type(keep)}
        audit.append(conn, "hashes.added", f"bank:{b.name}", result)
    return result


def add_files(conn: sqlite3.Connection, bank: str, files: list[tuple[str, str, str,
                                                                     list[FrameHash]]]
              ) -> dict[str, Any]:
    """Add computed signals of files: [(name, sha256, md5, frame hashes)]."""
    with atomic(conn, "fsq_bank"):
        b = require_bank(conn, bank)
        total = 0
        sigs: list[Signal] = []
        for name, sha, md5, frames in files:
            one = [Signal("sha256", sha), Signal("md5", md5)]
            one += [Signal("pdq", f.pdq, f.quality) for f in frames if f.usable]
            keep, _ = _usable_for(b, one)
            total += _insert(conn, b, keep, f"file:{sha}", None)
            sigs += keep
        result = {"bank": b.name, "files": [{"name": n, "sha256": s} for n, s, _, _ in files],
                  "added": total, "already_present": len(sigs) - total,
                  "by_type": _by_type(sigs)}
        audit.append(conn, "hashes.added", f"bank:{b.name}", result)
    return result


def _by_type(signals: Iterable[Signal]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in signals:
        out[s.signal_type] = out.get(s.signal_type, 0) + 1
    return out


def list_banks(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = []
    for b in conn.execute("SELECT * FROM banks ORDER BY name"):
        counts = {r[0]: r[1] for r in conn.execute(
            "SELECT signal_type, COUNT(*) FROM bank_signals WHERE bank=? GROUP BY signal_type",
            (b["name"],))}
        rows.append({"name": b["name"], "kind": b["kind"], "description": b["description"],
                     "created_at": b["created_at"], "signals": sum(counts.values()),
                     "by_type": counts})
    return rows


def bank_entries(conn: sqlite3.Connection, bank: str) -> Iterator[dict[str, Any]]:
    require_bank(conn, bank)
    for r in conn.execute("SELECT * FROM bank_signals WHERE bank=? ORDER BY id", (bank,)):
        yield dict(r)
