"""Report versions: ``<id>.html`` is the newest report with the most linkage, never a worse one.

A report regenerated while a linkage source is down (Lemmy's PostgreSQL, the pict-rs repo)
lacks the uploader, the posts or the IPs that the previous report had. Replacing the complete
report with it would silently lose what an admin may already have relied on. So:

* the previous ``<id>.html`` is never deleted: when a new report replaces it, it is first kept
  as ``<id>.<UTC timestamp>.html`` (hard link, then atomic rename of the new file over the
  name, so ``<id>.html`` exists at every instant);
* a new report that used fewer linkage sources than the current ``<id>.html`` (a source that
  answered then did not answer now) is written beside it as ``<id>.<timestamp>.html`` and
  ``<id>.html`` stays; the caller warns.

Which sources the current ``<id>.html`` used comes from the audit log (``report.generated``
events record the file written and its ``linkage_sources``), not from parsing the HTML.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Placement:
    name: str                      # file name the new report gets
    replaces_current: bool         # True: it becomes <id>.html
    superseded_as: str | None = None   # where the previous <id>.html was kept
    lost_sources: list[str] = field(default_factory=list)  # used before, not now


def stamp(t: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if t is None else t))


def current_sources(conn: sqlite3.Connection, iid: int) -> list[str] | None:
    """Linkage sources of the report now at ``<id>.html`` (None: no record of one)."""
    want = f"{iid}.html"
    for (details,) in conn.execute(
            "SELECT details FROM audit WHERE action='report.generated' AND subject=? "
            "ORDER BY seq DESC", (f"incident:{iid}",)):
        d = json.loads(details)
        if d.get("file") == want:
            return list(d.get("linkage_sources") or [])
    return None


def _free_name(directory: Path, iid: int, ts: str) -> str:
    name, n = f"{iid}.{ts}.html", 2
    while (directory / name).exists():
        name, n = f"{iid}.{ts}-{n}.html", n + 1
    return name


def place(conn: sqlite3.Connection, directory: Path, iid: int, sources: list[str]
          ) -> Placement:
    """Decide the new report's name (no file is changed here)."""
    current = directory / f"{iid}.html"
    if not current.exists():
        return Placement(current.name, True)
    before = current_sources(conn, iid) or []
    lost = [s for s in before if s not in sources]
    if lost:
        return Placement(_free_name(directory, iid, stamp()), False, lost_sources=lost)
    old_ts = stamp(current.stat().st_mtime)
    return Placement(current.name, True, superseded_as=_free_name(directory, iid, old_ts))


def keep_previous(directory: Path, p: Placement) -> None:
    """Keep the current ``<id>.html`` under ``p.superseded_as`` (before it is replaced)."""
    if p.superseded_as is None:
        return
    src, dst = directory / p.name, directory / p.superseded_as
    try:
        os.link(src, dst)
    except OSError:  # no hard links here (some network filesystems): copy, same mode
        data = src.read_bytes()
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
