"""Import fedi-safety's history (``lemmy_safety.db``) into the ledger, as history only.

fedi-safety records every file it checked in one SQLite table,
``images(id, filename UNIQUE, nsfw, csam, created)``: ``filename`` is the storage key (a path
relative to the pict-rs files directory, or the S3 object key), ``csam`` True for what it
flagged (and, unless run with --skip-unreadable, for every file it could not open), ``created``
a naive UTC timestamp. Whatever it flagged it deleted, unless it ran with --dry-run.

Nothing imported here is a finding, and nothing here deletes, moves or classifies:

* a row whose file still exists is queued for a normal scan (fsq has no verdict for it yet, so
  the next ``fsq scan --all`` decides it); the old flag is kept as a note;
* a row whose file is gone becomes an audit event with the key and the old tool's date:
  ``legacy.removed_before_fsq`` if the old tool had flagged it (so it deleted it: what may have
  been destroyed is now on the record), ``legacy.gone_before_fsq`` otherwise;
* every ``csam`` flag is marked "legacy flag, unverified".

Idempotent: one ``legacy_flags`` row per (tool, source, key), written in the same transaction
as its audit event; a key already imported is left alone, so importing twice changes nothing.
The fedi-safety file is opened read-only and its contents are untrusted: keys that could escape
the store root are recorded as invalid and never touched.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from fsq.errors import ConfigError, ExternalError, UsageError
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.sources.base import Source, check_key
from fsq.timeutil import iso, parse_iso

TOOL = "fedi-safety"
LEGACY_FLAG = "legacy flag, unverified (fedi-safety also flagged every file it could not open)"
OUTCOMES = ("queued", "already-scanned", "removed", "gone", "invalid")


def open_legacy(path: str | Path) -> sqlite3.Connection:
    """Open ``lemmy_safety.db`` read-only and check it has fedi-safety's table."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p} does not exist; give the path of fedi-safety's lemmy_safety.db "
                         "(its SQLITE_FILENAME setting)")
    try:
        conn = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        cols = {r["name"] for r in conn.execute("PRAGMA table_info(images)")}
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{p} is not a fedi-safety database ({exc})") from None
    need = {"id", "filename", "nsfw", "csam", "created"}
    if not need <= cols:
        conn.close()
        found = ", ".join(sorted(cols)) or "none"
        raise ConfigError(f"{p} is not a fedi-safety database: no table images(id, filename, "
                          f"nsfw, csam, created) (found columns: {found})")
    return conn


def _when(raw: Any) -> str | None:
    if raw is None:
        return None
    try:
        return iso(parse_iso(str(raw).replace(" ", "T", 1)))
    except ValueError:
        return str(raw)[:64]  # kept as given, cut


def _flag(v: Any) -> int | None:
    return None if v is None else int(bool(v))


def _key_for(source: Source, filename: str) -> str:
    """fedi-safety's filename -> fsq's key in ``source`` (S3: relative to the prefix)."""
    prefix = getattr(source, "prefix", "") or ""
    key = filename[len(prefix):] if prefix and filename.startswith(prefix) else filename
    return check_key(key)


def notes_for(state: sqlite3.Connection, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Imported legacy notes for (source, key) pairs, e.g. an incident's storage keys."""
    out = []
    for source, key in keys:
        for r in state.execute("SELECT tool, key, csam, nsfw, recorded_at, outcome, note FROM "
                               "legacy_flags WHERE source=? AND key=? ORDER BY id",
                               (source, key)):
            out.append({k: r[k] for k in r.keys()})
    return out


def import_rows(state: sqlite3.Connection, legacy: sqlite3.Connection, source: Source, *,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Import every row; returns counts per outcome plus ``already_imported`` and a sample."""
    counts: Counter[str] = Counter()
    legacy_csam = 0
    examples: dict[str, list[str]] = {o: [] for o in OUTCOMES}
    rows = legacy.execute("SELECT id, filename, nsfw, csam, created FROM images ORDER BY id")
    for n, r in enumerate(rows, 1):
        filename = r["filename"] if isinstance(r["filename"], str) else str(r["filename"])
        if state.execute("SELECT 1 FROM legacy_flags WHERE tool=? AND source=? AND key=?",
                         (TOOL, source.url, filename)).fetchone():
            counts["already_imported"] += 1
            continue
        csam, nsfw, when = _flag(r["csam"]), _flag(r["nsfw"]), _when(r["created"])
        notes = []
        if csam:
            legacy_csam += 1
            notes.append(LEGACY_FLAG)
        try:
            key = _key_for(source, filename)
        except UsageError:
            outcome, key = "invalid", None
            notes.append("not a valid storage key; not looked up")
        else:
            try:
                present = source.exists(key)
            except Exception as exc:  # one unreadable key must not stop the import
                if isinstance(exc, ExternalError):
                    raise  # the source itself is down: stop, rerun later (idempotent)
                present = None
            if present:
                known = state.execute("SELECT status FROM objects WHERE source=? AND key=? "
                                      "AND verdict_id IS NOT NULL", (source.url, key)).fetchone()
                outcome = "already-scanned" if known else "queued"
                notes.append("fsq has its own verdict" if known
                             else "file present: the next `fsq scan --all` decides it")
            elif present is None:
                outcome = "invalid"
                notes.append("could not be checked in the source")
            else:
                outcome = "removed" if csam else "gone"
                notes.append("removed by fedi-safety before fsq" if csam else
                             "gone before fsq; fedi-safety had not flagged it")
        note = "; ".join(notes)
        with transaction(state):
            state.execute(
                "INSERT INTO legacy_flags (tool, source, key, legacy_id, nsfw, csam, "
                "recorded_at, imported_at, outcome, note) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (TOOL, source.url, filename, r["id"], nsfw, csam, when, iso(), outcome, note))
            if outcome in ("removed", "gone"):
                audit.append(state, "legacy.removed_before_fsq" if outcome == "removed"
                             else "legacy.gone_before_fsq", f"key:{key}",
                             {"tool": TOOL, "source": source.url, "key": key,
                              "recorded_at": when, "csam": csam, "nsfw": nsfw, "note": note})
        counts[outcome] += 1
        if len(examples[outcome]) < 5:
            examples[outcome].append(filename)
        if progress:
            progress(n)
    imported = sum(counts[o] for o in OUTCOMES)
    if imported:
        audit.append(state, "legacy.imported", f"source:{source.url}",
                     {"tool": TOOL, "rows": imported,
                      **{o: counts[o] for o in OUTCOMES}, "legacy_csam_flags": legacy_csam})
    return {"tool": TOOL, "source": source.url, "imported": imported,
            "already_imported": counts["already_imported"],
            **{o.replace("-", "_"): counts[o] for o in OUTCOMES},
            "legacy_csam_flags": legacy_csam, "examples": examples}
