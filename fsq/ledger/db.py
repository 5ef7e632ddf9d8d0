"""SQLite state database: connection setup and migrations.

WAL mode lets a daemon scan while an admin runs read commands. ``busy_timeout`` makes writers
wait for each other instead of failing. Foreign keys are on.

Durability: ``synchronous=FULL`` because the quarantine journal (vault_entries) must survive a
power cut between "blob verified" and "source removed" (invariant 1).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fsq.errors import ConfigError, ExternalError
from fsq.ledger.schema import LATEST, MIGRATIONS
from fsq.timeutil import iso


def connect(path: str | os.PathLike, *, create: bool = True) -> sqlite3.Connection:
    """Open (and migrate) the state database."""
    p = Path(path)
    if not create and not p.exists():
        raise ConfigError(f"state database {p} does not exist; run `fsq init` or set FSQ_DB")
    if p.parent and not p.parent.exists():
        raise ConfigError(f"directory of FSQ_DB ({p.parent}) does not exist; create it or "
                          "point FSQ_DB elsewhere")
    try:
        new = not p.exists()
        conn = sqlite3.connect(str(p), timeout=30, isolation_level=None,
                               check_same_thread=False)
        if new:
            os.chmod(p, 0o600)  # holds hashes, keys of evidence, audit: not world-readable
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        migrate(conn)
    except sqlite3.DatabaseError as exc:
        raise ExternalError(f"state database {p}: {exc}; is FSQ_DB an fsq database?") from None
    return conn


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
            conn.execute(f"PRAGMA user_version={int(version)}")
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
