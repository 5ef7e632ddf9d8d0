"""The crash-safe quarantine move (invariant 1) and its recovery.

Journal: one ``vault_entries`` row per (incident, storage key), whose ``state`` advances

    sealing -> stored -> verified -> source_removed -> done
        \\-> rolled_back          (recovery of an entry that never got verified)

and every transition is committed before the next side effect starts:

1. ``sealing``   row committed (the intent), *then* the sealed key and blob are written to the
                 vault (each put is atomic and durable: temp + fsync + rename + dir fsync).
2. ``stored``    committed with the sha256 of both vault objects as written.
3. ``verified``  committed after re-reading both objects from the vault and matching hashes.
4. The source is re-read and must still hash to the sealed sha256 (the file may have been
   replaced since it was classified); only then is it removed. ``source_removed`` committed.
5. ``done``      object and incident marked quarantined, audit event, in one transaction.

A SIGKILL between any two steps leaves a row whose state says exactly what is known to be
durable. ``recover`` resolves every unfinished row:

* ``sealing``: the vault objects may be partial or absent and were never verified -> delete
  whatever exists under the entry's names, mark ``rolled_back``. The source was never touched.
  The object stays 'flagged', so the next ``apply`` / ``scan`` quarantines it again.
* ``stored``: verify; good -> continue at step 4; bad -> delete, ``rolled_back``.
* ``verified``: continue at step 4 (a missing source means step 4 already removed it).
* ``source_removed``: do step 5.

So after recovery each original is either still in the source (rolled back) or in the vault
(done) -- never in neither, and the vault never keeps an unverified half-copy.

Uploads (``seal_upload``, used by ``fsq serve``): the bytes exist only in the request, there is
no source copy to re-read or remove, and the entry's ``source`` is ``UPLOAD_SOURCE``. The same
journal runs with step 4 left out: ``sealing -> stored -> verified -> done``. ``recover``
resolves such entries only when the caller names ``UPLOAD_SOURCE`` in its ``sources`` (the
server does, at start), so that a scanner's recovery never races a running server's seal:
``sealing`` -> rolled back (the answer never went out, so pict-rs rejected the upload and the
bytes are gone; the incident and its audit events remain), ``stored`` -> verify, then done or
rolled back, ``verified`` -> done.

The scanning side needs only the vault *public* key (invariant 2): sealing never decrypts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from fsq import __version__
from fsq.errors import ConfigError, FsqError, IntegrityError
from fsq.ledger import audit, state
from fsq.ledger.db import transaction
from fsq.quarantine.store import VaultMissing, VaultStore, open_vault
from fsq.names import show_stored_key
from fsq.sources.base import ObjectChanged, ObjectError, ObjectMissing, Source
from fsq.testonly import crash_point
from fsq.timeutil import iso, utcnow

log = logging.getLogger("fsq.quarantine")

UNFINISHED = ("sealing", "stored", "verified", "source_removed")

# vault_entries.source / objects.source of uploads sealed by `fsq serve` (no source store).
UPLOAD_SOURCE = "upload:pict-rs"
# vault_entries.source of copies sealed by `fsq lemmy ...` before a Lemmy action deletes the
# original from pict-rs: the bytes stay where they are (Lemmy removes them), so like uploads
# there is no step 4, and ``recover`` handles these entries only when a caller names them.
COPY_SOURCE = "copy:lemmy-action"
_NO_SOURCE_STEP = (UPLOAD_SOURCE, COPY_SOURCE)


def blob_name(entry_id: str) -> str:
    return f"{entry_id}.blob"


def key_name(entry_id: str) -> str:
    return f"{entry_id}.key"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Quarantiner:
    """Seals flagged objects into a vault and removes them from the source."""

    def __init__(self, vault: VaultStore, public_key: Any, *, retention_days: int | None = None
                 ) -> None:
        self.vault = vault
        self.public_key = public_key
        self.retention_days = retention_days

    @classmethod
    def from_settings(cls, settings) -> "Quarantiner":
        from fsq.quarantine.keys import load_public_key
        from fsq.runtime import public_key_path
        path = public_key_path(settings)
        if not Path(path).exists():
            raise ConfigError(f"vault public key {path} not found: run `fsq init` first, set "
                              "FSQ_VAULT_PUBLIC_KEY, or use --dry-run")
        return cls(open_vault(settings.vault, settings), load_public_key(path),
                   retention_days=settings.retention_days)

    # -- the move ---------------------------------------------------------------------------

    def quarantine(self, conn: sqlite3.Connection, *, source: Source, object_id: int, key: str,
                   data: bytes, sha256: str, md5: str, incident_id: int,
                   media_type: str | None) -> str:
        """Run steps 1-5 for one object; returns the vault entry id.

        Raises ObjectError if the source changed or could not be removed (the entry is rolled
        back or left for recovery; nothing is lost). Storage failures raise SourceError /
        VaultError (exit 3) and leave the journal for ``recover``."""
        return self._move(conn, source=source, source_url=source.url, object_id=object_id,
                          key=key, data=data, sha256=sha256, md5=md5, incident_id=incident_id,
                          media_type=media_type, extra_meta={})

    def seal_upload(self, conn: sqlite3.Connection, *, object_id: int, key: str, data: bytes,
                    sha256: str, md5: str, incident_id: int, media_type: str | None,
                    extra_meta: Mapping[str, Any]) -> str:
        """Seal bytes that exist only in memory (an upload pict-rs will discard): steps 1-3
        and 5, no source to remove. ``extra_meta`` (arrival time, media types, client) goes
        into the sealed metadata. Returns the vault entry id once the entry is 'done'.

        Raises ObjectError if the sealed copy failed verification (rolled back); storage
        failures raise VaultError and leave the journal for ``recover``."""
        return self._move(conn, source=None, source_url=UPLOAD_SOURCE, object_id=object_id,
                          key=key, data=data, sha256=sha256, md5=md5, incident_id=incident_id,
                          media_type=media_type, extra_meta=extra_meta)

    def seal_copy(self, conn: sqlite3.Connection, *, key: str, data: bytes, sha256: str,
                  md5: str, incident_id: int, media_type: str | None,
                  extra_meta: Mapping[str, Any]) -> str:
        """Seal a copy of a stored file and leave the original alone (``fsq lemmy``: Lemmy is
        about to delete it). The upload journal (steps 1-3 and 5) with source COPY_SOURCE;
        ``extra_meta`` (where the bytes were read, the action, the linkage) is sealed with it."""
        return self._move(conn, source=None, source_url=COPY_SOURCE, object_id=None, key=key,
                          data=data, sha256=sha256, md5=md5, incident_id=incident_id,
                          media_type=media_type, extra_meta=extra_meta)

    def _move(self, conn: sqlite3.Connection, *, source: Source | None, source_url: str,
              object_id: int | None, key: str, data: bytes, sha256: str, md5: str,
              incident_id: int, media_type: str | None, extra_meta: Mapping[str, Any]) -> str:
        from fsq.quarantine.seal import new_entry_id

        if _sha(data) != sha256:  # caller bug guard: never seal bytes we did not classify
            raise IntegrityError(f"bytes of {key} do not match their recorded sha256")
        entry_id = new_entry_id()
        now = iso()
        verdict = conn.execute(
            "SELECT v.id, v.method, v.reason, v.model_id, v.concepts_digest, v.severity, "
            "v.rule_version FROM objects o LEFT JOIN verdicts v ON v.id = o.verdict_id "
            "WHERE o.id = ?", (object_id,)).fetchone()
        metadata = {
            **dict(extra_meta),
            "entry_id": entry_id, "incident_id": incident_id, "source": source_url,
            "key": key, "sha256": sha256, "md5": md5, "size": len(data),
            "media_type": media_type, "sealed_at": now, "tool_version": __version__,
            "verdict": dict(verdict) if verdict is not None else None,
        }
        self._seal_and_store(conn, entry_id, source_url=source_url, key=key,
                             object_id=object_id, incident_id=incident_id, data=data,
                             metadata=metadata, now=now)
        self._finish(conn, entry_id, source)
        return entry_id

    def _seal_and_store(self, conn: sqlite3.Connection, entry_id: str, *, source_url: str,
                        key: str, object_id: int | None, incident_id: int, data: bytes,
                        metadata: dict[str, Any], now: str) -> None:
        """Steps 1-2: commit the intent, write both vault objects, commit 'stored'."""
        from fsq.quarantine.seal import seal

        with transaction(conn):  # step 1: intent
            conn.execute(
                "INSERT INTO vault_entries (id, incident_id, source, key, object_id, sha256, "
                "size, vault, state, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?, 'sealing', ?, ?)",
                (entry_id, incident_id, source_url, key, object_id, metadata["sha256"],
                 len(data), self.vault.url, now, now))
        crash_point("after-intent")
        sealed = seal(entry_id, data, metadata, self.public_key)
        self.vault.put(key_name(entry_id), sealed.wrapped_key)
        crash_point("after-put-key")
        self.vault.put(blob_name(entry_id), sealed.blob)
        crash_point("after-put-blob")
        self._set(conn, entry_id, "stored", blob_sha256=sealed.blob_sha256,
                  key_sha256=sealed.key_sha256)
        crash_point("after-stored")

    def _set(self, conn: sqlite3.Connection, entry_id: str, new_state: str,
             **cols: Any) -> None:
        sets = ", ".join(f"{c}=?" for c in cols)
        with transaction(conn):
            conn.execute(f"UPDATE vault_entries SET state=?, updated_at=?"
                         f"{', ' + sets if sets else ''} WHERE id=?",
                         (new_state, iso(), *cols.values(), entry_id))

    def verify_entry(self, row: Mapping[str, Any]) -> str | None:
        """Public-side check of one entry: both objects exist and hash as recorded.
        Returns None if good, else a reason."""
        try:
            blob = self.vault.get(blob_name(row["id"]))
            wkey = self.vault.get(key_name(row["id"]))
        except VaultMissing as exc:
            return f"missing in vault: {exc}"
        if row["blob_sha256"] is None or _sha(blob) != row["blob_sha256"]:
            return "sealed blob hash differs from the database"
        if row["key_sha256"] is None or _sha(wkey) != row["key_sha256"]:
            return "wrapped key hash differs from the database"
        return None

    def _finish(self, conn: sqlite3.Connection, entry_id: str, source: Source | None) -> None:
        """Steps 3-5 from state 'stored' (or later). ``source`` is None for uploads."""
        row = conn.execute("SELECT * FROM vault_entries WHERE id=?", (entry_id,)).fetchone()
        upload = row["source"] in _NO_SOURCE_STEP
        if row["state"] == "stored":
            problem = self.verify_entry(row)
            if problem:
                self._rollback(conn, row, f"verification failed: {problem}")
                raise ObjectError(row["key"], f"sealed copy failed verification ({problem}); "
                                              "rolled back, source untouched")
            self._set(conn, entry_id, "verified")
            self._lock(conn, row)
            crash_point("after-verified")
            row = conn.execute("SELECT * FROM vault_entries WHERE id=?", (entry_id,)).fetchone()
        if row["state"] == "verified" and not upload:  # step 4 (an upload has no source)
            assert source is not None
            try:
                current = source.read(row["key"])
            except ObjectMissing:
                current = None  # removed by an earlier attempt (or someone else): vault has it
            if current is not None:
                if _sha(current) != row["sha256"]:
                    self._rollback(conn, row, "source content changed since classification")
                    raise ObjectChanged(row["key"], "content changed since it was classified; "
                                                    "not removed (scanned again next pass)")
                source.remove(row["key"])
            crash_point("after-remove")
            self._set(conn, entry_id, "source_removed")
            crash_point("after-source-removed")
            row = conn.execute("SELECT * FROM vault_entries WHERE id=?", (entry_id,)).fetchone()
        if row["state"] == "source_removed" or (upload and row["state"] == "verified"):
            now = iso()
            with transaction(conn):
                conn.execute("UPDATE vault_entries SET state='done', updated_at=? WHERE id=?",
                             (now, entry_id))
                if row["object_id"] is not None:
                    conn.execute("UPDATE objects SET status='quarantined', reason=? WHERE id=?",
                                 (f"vault entry {entry_id}", row["object_id"]))
                conn.execute("UPDATE incidents SET state = CASE WHEN state IN "
                             "('flagged','released','purged') THEN 'quarantined' ELSE state END,"
                             " quarantined_at = COALESCE(quarantined_at, ?) WHERE id=?",
                             (now, row["incident_id"]))
                audit.append(conn, "quarantined", f"incident:{row['incident_id']}",
                             {"entry": entry_id, "source": row["source"], "key": row["key"],
                              "sha256": row["sha256"], "blob_sha256": row["blob_sha256"],
                              "vault": row["vault"], "at": now})

    def _lock(self, conn: sqlite3.Connection, row: Mapping[str, Any]) -> None:
        """Write-once retention (S3 Object Lock) for a verified entry, until the incident's
        retention end as known now (quarantine time + FSQ_RETENTION_DAYS; holds and reports
        extend it later). Best effort: the sealed copy is already durable, so a store that
        refuses is logged and audited, not fatal. Stores without object lock: no-op."""
        if not self.retention_days or getattr(self.vault, "retention", None) is None:
            return
        enabled = getattr(self.vault, "object_lock_enabled", None)
        if enabled is not None and not enabled():
            return
        until = utcnow() + timedelta(days=self.retention_days)
        try:
            for name in (key_name(row["id"]), blob_name(row["id"])):
                self.vault.set_retention(name, until)
            with transaction(conn):
                conn.execute("UPDATE vault_entries SET retain_until=? WHERE id=?",
                             (iso(until), row["id"]))
        except FsqError as exc:
            log.warning("entry %s: could not set object-lock retention: %s", row["id"],
                        exc.message)
            audit.append(conn, "vault.lock_failed", f"incident:{row['incident_id']}",
                         {"entry": row["id"], "error": exc.message})

    def _rollback(self, conn: sqlite3.Connection, row: Mapping[str, Any], why: str) -> None:
        for name in (blob_name(row["id"]), key_name(row["id"])):
            self.vault.delete(name)
        with transaction(conn):
            conn.execute("UPDATE vault_entries SET state='rolled_back', error=?, updated_at=? "
                         "WHERE id=?", (why, iso(), row["id"]))
            audit.append(conn, "quarantine.rolled_back", f"incident:{row['incident_id']}",
                         {"entry": row["id"], "key": row["key"], "why": why})

    # -- recovery ---------------------------------------------------------------------------

    def recover(self, conn: sqlite3.Connection, sources: Mapping[str, Source]) -> dict[str, int]:
        """Resolve every unfinished move whose source is among ``sources`` (URL -> Source)."""
        counts = {"rolled_back": 0, "completed": 0, "pending": 0}
        rows = conn.execute(
            f"SELECT * FROM vault_entries WHERE state IN ({','.join('?' * len(UNFINISHED))}) "
            "ORDER BY created_at", UNFINISHED).fetchall()
        for row in rows:
            src = sources.get(row["source"])
            # Uploads have no Source object: handled only if the caller names UPLOAD_SOURCE.
            if src is None and row["source"] not in sources:
                counts["pending"] += 1
                continue
            if row["vault"] != self.vault.url:
                counts["pending"] += 1
                log.warning("entry %s was sealed into %s, not %s; skipped", row["id"],
                            row["vault"], self.vault.url)
                continue
            if row["state"] == "sealing":
                self._rollback(conn, row, "interrupted before the sealed copy was stored")
                counts["rolled_back"] += 1
                continue
            try:
                self._finish(conn, row["id"], src)
                counts["completed"] += 1
            except ObjectError as exc:
                log.warning("recovery of %s: %s", show_stored_key(row["key"]), exc.reason)
                counts["rolled_back"] += 1
        if hasattr(self.vault, "cleanup_temp"):
            # Only old temp files: a young one may belong to a write in progress right now
            # (fsq serve, a concurrent scan). Leftovers are invisible to names() anyway.
            self.vault.cleanup_temp(min_age_seconds=3600)
        if any(counts.values()):
            audit.append(conn, "quarantine.recovered", "vault", counts)
        return counts

    # -- acting on earlier verdicts -----------------------------------------------------------

    def apply_pending(self, conn: sqlite3.Connection, source: Source, *,
                      keys: set[str] | None = None) -> dict[str, Any]:
        """Quarantine objects flagged earlier (dry runs) without classifying again."""
        result: dict[str, Any] = {"quarantined": 0, "failed": 0, "changed": 0, "problems": []}
        for r in list(state.flagged_pending(conn, source.url)):
            if keys is not None and r["key"] not in keys:
                continue
            try:
                data = source.read(r["key"])
            except ObjectMissing:
                state.set_object_result(conn, r["id"], status="missing",
                                        reason="gone before it was quarantined")
                result["failed"] += 1
                result["problems"].append({"key": r["key"], "reason": "missing"})
                continue
            except ObjectError as exc:
                result["failed"] += 1
                result["problems"].append({"key": r["key"], "reason": exc.reason})
                continue
            if _sha(data) != r["sha256"]:
                # Different bytes now: the verdict does not apply; let the next scan decide.
                state.set_object_result(conn, r["id"], status="pending",
                                        reason="content changed since it was flagged")
                result["changed"] += 1
                result["problems"].append({"key": r["key"], "reason": "content changed"})
                continue
            iid = r["incident_id"]
            if iid is None:
                with transaction(conn):
                    iid, _ = state.ensure_incident(
                        conn, sha256=r["sha256"], md5=r["md5"], size=r["size"],
                        media_type=r["media_type"], width=None, height=None,
                        verdict_id=r["verdict_id"])
            try:
                self.quarantine(conn, source=source, object_id=r["id"], key=r["key"],
                                data=data, sha256=r["sha256"], md5=r["md5"],
                                incident_id=int(iid), media_type=r["media_type"])
                result["quarantined"] += 1
            except ObjectError as exc:
                result["failed"] += 1
                result["problems"].append({"key": r["key"], "reason": exc.reason})
        return result


def entry_metadata_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True)
