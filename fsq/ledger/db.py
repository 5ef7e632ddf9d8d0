"""SQLite state database: connection setup and migrations.

WAL mode lets a daemon scan while an admin runs read commands. ``busy_timeout`` makes writers
wait for each other instead of failing. Foreign keys are on.

Durability: ``synchronous=FULL`` because the quarantine journal (vault_entries) must survive a
power cut between "blob verified" and "source removed" (invariant 1).

Opening is the one place a state database is checked before anything trusts it:

* ``create=False`` (every command that only reads or acts on earlier results) refuses a missing
  or empty file instead of creating one (exit 2, naming ``fsq init``).
* A file that is not SQLite, or an SQLite database without fsq's tables, is refused (exit 2):
  fsq never turns somebody else's file into its ledger.
* A damaged fsq database - header overwritten, pages corrupted - is an integrity failure
  (exit 4), found by ``PRAGMA quick_check`` once per process and path, before any command
  reads from it (a damaged ledger must not be read as "no incidents" or "audit intact").
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fsq.errors import ConfigError, ExternalError, IntegrityError
from fsq.ledger.schema import LATEST, MIGRATIONS
from fsq.timeutil import iso


SQLITE_MAGIC = b"SQLite format 3\x00"
# Text that only fsq's schema puts into a database file (sqlite_master keeps the CREATE
# statements as text): a file without the SQLite magic but with this is a damaged fsq ledger.
_FSQ_MARKERS = (b"schema_migrations", b"CREATE TABLE vault_entries")
_SNIFF_BYTES = 1 << 20
_checked: set[str] = set()  # paths already sniffed and quick-checked in this process


def connect(path: str | os.PathLike, *, create: bool = True) -> sqlite3.Connection:
    """Open (and migrate) the state database.

    ``create=False`` refuses a missing or empty database (read-only and follow-up commands).
    The first time this process opens ``path``, the file is sniffed and ``PRAGMA quick_check``
    runs. Only the first time: closing any other descriptor of a database file drops the POSIX
    locks SQLite holds on it through *every* descriptor of this process, so the file must never
    be opened beside a live connection (and a daemon checks at start, not on each reconnect).
    """
    p = Path(path)
    if not create and not p.exists():
        raise ConfigError(f"state database {p} does not exist; run `fsq init` first or point "
                          "--db / FSQ_DB at the database it created")
    if p.parent and not p.parent.exists():
        raise ConfigError(f"directory of FSQ_DB ({p.parent}) does not exist; create it or "
                          "point FSQ_DB elsewhere")
    key = str(p.resolve())
    first = key not in _checked
    if first and p.exists():
        _check_file(p, create=create)
    try:
        new = not p.exists()
        conn = sqlite3.connect(str(p), timeout=30, isolation_level=None,
                               check_same_thread=False)
        if new:
            os.chmod(p, 0o600)  # holds hashes, keys of evidence, audit: not world-readable
        conn.row_factory = sqlite3.Row
        if first:
            _quick_check(conn, p)
        _check_is_fsq(conn, p, create=create)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        migrate(conn)
        _checked.add(key)
    except sqlite3.OperationalError as exc:
        if is_corruption(exc):
            raise IntegrityError(_damaged(p, str(exc))) from None
        raise ExternalError(f"state database {p}: {exc}; check its permissions and that no "
                            "other program holds it locked") from None
    except sqlite3.DatabaseError as exc:
        # The file has the SQLite magic (checked above), so this is a damaged database.
        raise IntegrityError(_damaged(p, str(exc))) from None
    return conn


def _damaged(p: Path, what: str) -> str:
    what = " ".join(what.split())  # SQLite's reports span lines; errors are one line
    return (f"state database {p} is damaged ({what}); stop fsq, keep the file for "
            "inspection, and restore the last backup (see docs/operations.md)")


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    msg = str(exc).lower()
    return "malformed" in msg or "not a database" in msg or "corrupt" in msg


def _check_file(p: Path, *, create: bool) -> None:
    """Refuse files that are not SQLite before sqlite3 touches (or initialises) them."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise ExternalError(f"state database {p}: {exc.strerror}; check its permissions") \
            from None
    if not head:
        if create:
            return  # an empty file (e.g. `touch fsq.db`): SQLite treats it as a new database
        raise ConfigError(f"state database {p} is empty, not an fsq database; run `fsq init` "
                          "first or point --db / FSQ_DB at the database it created")
    if head.startswith(SQLITE_MAGIC):
        return
    if any(m in head for m in _FSQ_MARKERS):
        raise IntegrityError(_damaged(p, "its SQLite header is overwritten"))
    raise ConfigError(f"{p} is not an fsq state database (not an SQLite file); point --db / "
                      "FSQ_DB at the database `fsq init` created")


def _quick_check(conn: sqlite3.Connection, p: Path) -> None:
    """``PRAGMA quick_check``: page-level consistency, O(database size), no index cross-check."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    if rows != ["ok"]:
        raise IntegrityError(_damaged(p, "quick_check: " + "; ".join(rows)[:300]))


def integrity_check(conn: sqlite3.Connection) -> list[str]:
    """The full ``PRAGMA integrity_check`` (indexes too); [] when intact. For `fsq audit verify`."""
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else [" ".join(r.split()) for r in rows]


def _check_is_fsq(conn: sqlite3.Connection, p: Path, *, create: bool) -> None:
    names = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_migrations" in names:
        return
    if names:
        raise ConfigError(f"{p} is an SQLite database but not an fsq one (no schema_migrations "
                          "table); fsq will not write into it. Point --db / FSQ_DB at the "
                          "database `fsq init` created")
    if not create:
        raise ConfigError(f"state database {p} is empty, not an fsq database; run `fsq init` "
                          "first or point --db / FSQ_DB at the database it created")


def migrate(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                 "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    have = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    if have and max(have) > LATEST:
        raise ConfigError(f"state database schema v{max(have)} is newer than this fsq "
                          f"(v{LATEST}); upgrade fsq")
    for version, name, sql in MIGRATIONS:
        if version in have:
            continue
        # executescript() commits first; run the script statements in one explicit transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _split_sql(sql):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (?,?,?)", (version, name, iso()))
            # A migration filling a gap (numbers are assigned per branch) must not lower it.
            have.add(version)
            conn.execute(f"PRAGMA user_version={int(max(have))}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return LATEST


def _split_sql(script: str) -> Iterator[str]:
    """Split a migration into statements (sqlite3.complete_statement handles triggers)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        if not buf and (not line.strip() or line.strip().startswith("--")):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    if buf.strip():
        yield buf.strip()


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error). Not re-entrant."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


@contextmanager
def atomic(conn: sqlite3.Connection, name: str = "fsq_atomic") -> Iterator[None]:
    """A transaction of its own, or a savepoint in the caller's open transaction (so a write
    group of the scanner stays open and this block is still all or nothing)."""
    if not conn.in_transaction:
        with transaction(conn):
            yield
        return
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")
