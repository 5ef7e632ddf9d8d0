"""The evidence package for a report: `fsq export ID --out DIR` (and the console's button).

What a person attaches to a CyberTipline report, in a directory they name:

* ``<sha256>.<ext>``: the original bytes, decrypted and checked against the recorded sha256;
* ``manifest.json``: sha256, md5, size, media type, storage keys, pict-rs aliases, upload time,
  Lemmy URLs, uploader fields, every view of the evidence, the files with their hashes;
* ``report.html``: the incident's report (the same renderer as `fsq report`);
* ``audit.json``: the incident's audit rows and the chain head (with its verification).

Safety: the directory is created 0700 (or must exist empty, and is then made 0700; a non-empty
one is refused, so nothing is mixed into or overwritten), every file is created 0600 with
O_EXCL|O_NOFOLLOW. ``evidence.exported`` (who, where, which entries) is appended *before* any
plaintext is written. A failure removes what this export wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

from fsq import __version__
from fsq.errors import UsageError
from fsq.ledger import audit
from fsq.quarantine.release import decrypt_entry
from fsq.timeutil import iso

EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/apng": "png", "image/gif": "gif",
              "image/webp": "webp", "image/avif": "avif", "image/heic": "heic",
              "image/jxl": "jxl", "image/bmp": "bmp", "image/tiff": "tiff",
              "video/mp4": "mp4", "video/webm": "webm"}


def _prepare_dir(out: Path) -> bool:
    """Make ``out`` a private, empty directory; True if this call created it."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        if not out.parent.is_dir():
            raise UsageError(f"{out.parent} does not exist; create it or choose another --out")
        try:
            os.mkdir(out, 0o700)
        except OSError as exc:
            raise UsageError(f"cannot create {out}: {exc.strerror}") from None
        os.chmod(out, 0o700)
        return True
    import stat
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{out} exists and is not a directory; choose a new --out directory")
    if any(os.scandir(out)):
        raise UsageError(f"{out} is not empty; fsq exports only into a new or empty directory")
    os.chmod(out, 0o700)
    return False


def _write(path: Path, data: bytes, written: list[Path]) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    written.append(path)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str)
            + "\n").encode("utf-8")


def export_incident(conn: sqlite3.Connection, incident: sqlite3.Row, out_dir: str | os.PathLike,
                    *, private_key: Any, vault_for: Callable[[str], Any], settings: Any,
                    by: str) -> dict[str, Any]:
    """Write the evidence package of ``incident`` into ``out_dir``; returns the manifest."""
    from fsq.reports.model import build_model
    from fsq.reports.render import render_html

    iid = int(incident["id"])
    entry = conn.execute("SELECT * FROM vault_entries WHERE incident_id=? AND state='done' "
                         "ORDER BY created_at, id LIMIT 1", (iid,)).fetchone()
    if entry is None:
        raise UsageError(f"incident {iid} has no sealed copy in the vault (state "
                         f"{incident['state']}); nothing to export")
    out = Path(out_dir).expanduser().absolute()
    created = _prepare_dir(out)
    written: list[Path] = []
    try:
        audit.append(conn, "evidence.exported", f"incident:{iid}",
                     {"by": by, "out": str(out), "entry": entry["id"],
                      "sha256": incident["sha256"], "purpose": "export"})
        _, content = decrypt_entry(vault_for(entry["vault"]), entry, private_key)
        name = f"{incident['sha256']}.{EXTENSIONS.get(incident['media_type'] or '', 'bin')}"
        files = {name: {"sha256": _write(out / name, content, written), "size": len(content),
                        "md5": hashlib.md5(content, usedforsecurity=False).hexdigest(),
                        "what": "original bytes (decrypted)"}}
        del content
        model = build_model(conn, iid, settings)
        html = render_html(model, getattr(settings, "templates_dir", None)).encode("utf-8")
        files["report.html"] = {"sha256": _write(out / "report.html", html, written),
                                "what": "incident report"}
        rows = [dict(r) for r in audit.events(conn, subject=f"incident:{iid}")]
        chain = audit.verify(conn)
        excerpt = {"incident": iid, "rows": rows, "chain_head": chain.head,
                   "chain_verified": chain.ok, "chain_rows": chain.rows,
                   "chain_problem": chain.problem}
        files["audit.json"] = {"sha256": _write(out / "audit.json", _json(excerpt), written),
                               "what": "audit rows of this incident and the chain head"}
        manifest = _manifest(model, incident, files, by, out, chain.head)
        _write(out / "manifest.json", _json(manifest), written)
    except BaseException:
        for p in written:
            try:
                p.unlink()
            except OSError:
                pass
        if created:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    return manifest


def _manifest(model: dict[str, Any], incident: sqlite3.Row, files: dict[str, Any], by: str,
              out: Path, head: str | None) -> dict[str, Any]:
    inc, ct, lk = model["incident"], model["cybertip"], model["linkage"]
    lemmy_urls = sorted({u for h in lk.get("hits", []) for u in
                         ([h.get("ap_id")] if h.get("ap_id") else [])})
    return {
        "format": "fsq-evidence-export", "version": 1, "tool_version": __version__,
        "exported_at": iso(), "exported_by": by, "directory": str(out),
        "incident": inc["id"], "sha256": inc["sha256"], "md5": inc["md5"],
        "size": inc["size"], "media_type": inc["media_type"],
        "width": inc["width"], "height": inc["height"], "state": inc["state"],
        "storage_keys": [{"source": s["source"], "key": s["key"], "status": s["status"]}
                         for s in model["storage"]],
        "aliases": lk.get("all_aliases", []),
        "upload_time": ct["file"]["uploadedToEspTimestamp"],
        "upload_time_source": ct["file"]["uploadedToEspTimestamp_source"],
        "file_urls": ct["file"]["locationOfFile"],
        "lemmy_urls": lemmy_urls,
        "uploader": ct["personOrUserReported"],
        "ip_capture_events": ct["ipCaptureEvents"],
        "file_viewed_by_esp": ct["file"]["fileViewedByEsp"],
        "views": ct["file"].get("views", []),
        "linkage_complete": not lk.get("problems"),
        "audit_chain_head": head,
        "files": files,
    }
