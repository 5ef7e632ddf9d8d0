"""Every vault the ledger references: which are reachable, verifying all of them, relocating.

Each vault entry records the vault URL it was sealed into (an absolute ``file://`` path or an
``s3://bucket/prefix``). A working directory copied or moved elsewhere keeps the old URLs, so
checking only the configured vault would report "0 entries, all good" while the ledger lists
evidence somewhere else. Verification therefore walks the URLs the ledger references, and a
vault that cannot be reached is a failure, never silently skipped.

``relocate`` rewrites the URL of every live entry from OLD to NEW, but only after checking that
NEW actually holds every one of those entries with the recorded hashes: pointing the ledger at
the wrong directory must be impossible, since purge and release act on what it says.

Probing a ``file://`` vault never creates its directory (opening a DirStore would).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable

from fsq.errors import FsqError, IntegrityError, UsageError
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.quarantine.move import blob_name, key_name
from fsq.quarantine.store import VaultMissing, VaultStore

# Entries whose sealed copy must be in the vault (see schema: vault_entries.state).
LIVE = ("done", "verified", "source_removed")


@dataclass
class Probe:
    url: str
    store: VaultStore | None
    problem: str | None  # why it is unreachable
    missing: bool = False  # a file:// directory that does not exist (vs. a failing service)


def referenced(conn: sqlite3.Connection) -> dict[str, int]:
    """{vault URL: number of live entries} for every vault the ledger says holds evidence."""
    return {r[0]: r[1] for r in conn.execute(
        f"SELECT vault, COUNT(*) FROM vault_entries WHERE state IN ({','.join('?' * len(LIVE))})"
        " GROUP BY vault ORDER BY vault", LIVE)}


def _file_root(url: str) -> str | None:
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    scheme, path = url.split("://", 1)
    return os.path.abspath(os.path.expanduser(path)) if scheme.lower() == "file" else None


def probe(url: str, open_vault: Callable[[str], VaultStore]) -> Probe:
    """Open ``url`` if it can be reached, without creating anything."""
    root = _file_root(url)
    if root is not None and not os.path.isdir(root):
        return Probe(url, None, f"directory {root} does not exist", missing=True)
    try:
        store = open_vault(url)
        next(iter(store.names()), None)  # one listing call: credentials, bucket, network
    except FsqError as exc:
        return Probe(url, None, exc.message)
    return Probe(url, store, None)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def relocate(conn: sqlite3.Connection, old: str, new_store: VaultStore, *,
             dry_run: bool = False) -> dict[str, Any]:
    """Point every live entry recorded under ``old`` at ``new_store`` (checked first)."""
    new = new_store.url
    if old == new:
        raise UsageError(f"OLD and NEW are the same vault ({new})")
    rows = conn.execute(f"SELECT * FROM vault_entries WHERE vault=? AND state IN "
                        f"({','.join('?' * len(LIVE))})", (old, *LIVE)).fetchall()
    if not rows:
        known = ", ".join(referenced(conn)) or "none"
        raise UsageError(f"no live vault entries are recorded under {old}; vaults the database "
                         f"references: {known}")
    bad = []
    for r in rows:
        for name, want in ((blob_name(r["id"]), r["blob_sha256"]),
                           (key_name(r["id"]), r["key_sha256"])):
            try:
                ok = _sha(new_store.get(name)) == want
            except VaultMissing:
                ok = False
            if not ok:
                bad.append(r["id"])
                break
    if bad:
        raise IntegrityError(f"{len(bad)} of {len(rows)} entries recorded under {old} are "
                             f"missing or different in {new} (first: {bad[0]}); nothing was "
                             "changed. Copy the whole vault directory, then run this again")
    res = {"old": old, "new": new, "entries": len(rows), "dry_run": dry_run}
    if dry_run:
        return res
    # All rows under OLD move, not only live ones: unfinished moves must be finished or rolled
    # back from where the objects now are, and lock-retained released copies are there too.
    # The change and its audit event commit together.
    with transaction(conn):
        n = conn.execute("UPDATE vault_entries SET vault=? WHERE vault=?", (new, old)).rowcount
        audit.append(conn, "vault.relocated", "vault", {"old": old, "new": new,
                                                        "entries": n, "live_checked": len(rows)})
    res["rows_updated"] = n
    return res
