"""Reading evidence back: release (false positive), and vault verification.

Everything that decrypts evidence needs the private key and is audited as
``evidence.decrypted`` *before* plaintext is used (legal-and-evidence.md: whether a person at
the provider could have viewed a file matters; record every decryption).

Release is two-phase so that one corrupt entry changes nothing:
  1. decrypt every entry of the incident and check plaintext sha256 == recorded sha256 and the
     sealed metadata names the same key; any failure -> IntegrityError, nothing written;
  2. write each original key back (refusing to replace different content unless ``force``),
     then shred the vault copies (wrapped key first), allowlist the sha256, add its sha256
     and PDQ to the 'safe' hash bank, mark released.
A crash in phase 2 is safe to rerun: a key that already holds the same bytes counts as
restored, and entries stay 'done' until their vault copy is deleted.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from typing import Any, Callable

from fsq.errors import FsqError, IntegrityError, UsageError
from fsq.ledger import audit, state
from fsq.ledger.db import transaction
from fsq.quarantine.move import UPLOAD_SOURCE, blob_name, key_name
from fsq.quarantine.store import VaultLocked, VaultMissing, VaultStore
from fsq.signals.banks import SAFE, add_incident
from fsq.sources.base import ObjectError, ObjectMissing, Source
from fsq.timeutil import iso

log = logging.getLogger("fsq.release")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def decrypt_entry(vault: VaultStore, entry: sqlite3.Row, private_key: Any
                  ) -> tuple[dict[str, Any], bytes]:
    """Decrypt one entry and check it end to end; IntegrityError on any mismatch."""
    from fsq.quarantine.seal import open_sealed
    eid = entry["id"]
    try:
        blob = vault.get(blob_name(eid))
        wkey = vault.get(key_name(eid))
    except VaultMissing:
        raise IntegrityError(f"vault entry {eid} is missing from {vault.url}") from None
    if entry["blob_sha256"] and _sha(blob) != entry["blob_sha256"]:
        raise IntegrityError(f"vault entry {eid}: sealed blob does not match its recorded hash "
                             "(corrupted or altered)")
    if entry["key_sha256"] and _sha(wkey) != entry["key_sha256"]:
        raise IntegrityError(f"vault entry {eid}: wrapped key does not match its recorded hash")
    meta, content = open_sealed(eid, blob, wkey, private_key)
    if _sha(content) != entry["sha256"]:
        raise IntegrityError(f"vault entry {eid}: decrypted content sha256 differs from the "
                             "record")
    check_binding(entry, meta)
    return meta, content


#: Sealed metadata field -> vault_entries column it must equal (entries are bound to their
#: incident: the seal authenticates the metadata, so only the database can disagree).
BINDING = (("entry_id", "id"), ("incident_id", "incident_id"), ("source", "source"),
           ("key", "key"), ("sha256", "sha256"))


def check_binding(entry: sqlite3.Row, meta: dict[str, Any]) -> None:
    """IntegrityError naming the entry if its sealed metadata disagrees with its row (e.g. the
    row was moved to another incident): nothing may be restored or destroyed on its account."""
    for field, column in BINDING:
        if meta.get(field) != entry[column]:
            raise IntegrityError(
                f"vault entry {entry['id']}: sealed metadata says {field}="
                f"{meta.get(field)!r} but the database says {entry[column]!r} (the database "
                "was edited, or the entry was moved); nothing is restored or destroyed")


def release_incident(conn: sqlite3.Connection, incident: sqlite3.Row, *, private_key: Any,
                     vault_for: Callable[[str], VaultStore],
                     source_for: Callable[[str], Source], reason: str, force: bool = False,
                     dry_run: bool = False) -> dict[str, Any]:
    iid = incident["id"]
    if incident["state"] == "released":
        return _retry_retained(conn, incident, vault_for, dry_run)
    if incident["state"] == "purged":
        raise UsageError(f"incident {iid} is already purged; nothing to release")
    if incident["state"] == "purging":
        raise UsageError(f"incident {iid} is being purged (its keys may already be shredded); "
                         "run `fsq purge --after-clearance` to finish, nothing to release")
    if not reason.strip():
        raise UsageError("--reason must say why this is a false positive")
    held = conn.execute("SELECT * FROM vault_entries WHERE incident_id=? AND state='done'",
                        (iid,)).fetchall()
    unfinished = conn.execute(
        "SELECT COUNT(*) FROM vault_entries WHERE incident_id=? AND state IN "
        "('sealing','stored','verified','source_removed')", (iid,)).fetchone()[0]
    if unfinished:
        raise UsageError(f"incident {iid} has {unfinished} unfinished quarantine move(s); run "
                         "`fsq recover` first")
    # Phase 1: decrypt and check everything (audited), write nothing.
    plain: list[tuple[sqlite3.Row, bytes]] = []
    if held:
        audit.append(conn, "evidence.decrypted", f"incident:{iid}",
                     {"entries": [e["id"] for e in held], "purpose": "release",
                      "dry_run": dry_run})
    for e in held:
        _, content = decrypt_entry(vault_for(e["vault"]), e, private_key)
        plain.append((e, content))
    # Uploads rejected by `fsq serve` were discarded by pict-rs: there is no original key to
    # write back to. Their release shreds the sealed copy and allowlists the content, so the
    # uploader can simply upload it again.
    restorable = [(e, c) for e, c in plain if e["source"] != UPLOAD_SOURCE]
    uploads = [e for e, _ in plain if e["source"] == UPLOAD_SOURCE]
    # Check the targets before writing any of them.
    for e, content in restorable:
        src = source_for(e["source"])
        try:
            current = src.read(e["key"])
        except ObjectMissing:
            continue
        except ObjectError as exc:
            raise UsageError(f"cannot check {e['key']} before restoring: {exc.reason}")
        if _sha(current) != _sha(content) and not force:
            raise UsageError(f"something else now sits at {e['key']} in {e['source']}; "
                             "refusing to overwrite it (use --force to replace it)")
    result = {"incident": iid, "restored": [e["key"] for e, _ in restorable],
              "uploads_not_restored": [e["key"] for e in uploads], "dry_run": dry_run}
    if dry_run:
        return result
    # Phase 2: write back, then shred vault copies.
    for e, content in plain:
        if e["source"] == UPLOAD_SOURCE:
            _shred_released(conn, e, vault_for(e["vault"]), reason, result)
            continue
        src = source_for(e["source"])
        try:
            current = src.read(e["key"])
            if _sha(current) != _sha(content):
                src.write(e["key"], content, overwrite=True)  # only reachable with --force
        except ObjectMissing:
            src.write(e["key"], content, overwrite=False)
        back = src.read(e["key"])
        if _sha(back) != e["sha256"]:
            raise IntegrityError(f"restored {e['key']} reads back with a different sha256")
        _shred_released(conn, e, vault_for(e["vault"]), reason, result)
    with transaction(conn):
        now = iso()
        conn.execute("UPDATE incidents SET state='released', released_at=?, release_reason=?, "
                     "review_state='false_positive' WHERE id=?", (now, reason, iid))
        # Flagged-but-never-quarantined keys of the same content are cleared too.
        conn.execute("UPDATE objects SET status='released', reason=? WHERE sha256=? AND "
                     "status='flagged'", (f"released: {reason}"[:500], incident["sha256"]))
        state.allowlist_add(conn, incident["sha256"], f"released: {reason}", iid)
        # Variants and motion files sealed with the original (fsq.engine.variants) are
        # released with it: a false positive's thumbnails are false positives too.
        for (member,) in conn.execute("SELECT DISTINCT sha256 FROM incident_content WHERE "
                                      "incident_id=?", (iid,)).fetchall():
            conn.execute("UPDATE objects SET status='released', reason=? WHERE sha256=? AND "
                         "status='flagged'", (f"released: {reason}"[:500], member))
            state.allowlist_add(conn, member, f"released with incident {iid}: {reason}", iid)
        # Re-encoded or resized copies of a false positive are not flagged again either:
        # its sha256 and PDQ go into the safe bank (fsq.signals.banks).
        add_incident(conn, iid, SAFE, origin=f"release:{iid}")
        audit.append(conn, "released", f"incident:{iid}",
                     {"sha256": incident["sha256"], "md5": incident["md5"],
                      "restored": result["restored"], "reason": reason, "force": force,
                      "uploads_not_restored": result["uploads_not_restored"],
                      **({"retained_by_object_lock": result["retained"]}
                         if result.get("retained") else {})})
    return result


def _shred_released(conn: sqlite3.Connection, e: sqlite3.Row, vault: VaultStore, reason: str,
                    result: dict[str, Any]) -> None:
    """Delete a released entry's vault objects (wrapped key first) and mark it released."""
    retained = None
    try:
        vault.delete(key_name(e["id"]))   # crypto-shred first: the blob is now useless
        vault.delete(blob_name(e["id"]))
    except VaultLocked as exc:
        # Write-once storage keeps the sealed copy until its lock date; the file is
        # restored anyway. A later `fsq release ID` retries the deletion.
        retained = f"object lock: sealed copy retained until {exc.until or 'unknown'}"
        result.setdefault("retained", []).append({"entry": e["id"], "until":
                                                  str(exc.until) if exc.until else None})
    with transaction(conn):
        conn.execute("UPDATE vault_entries SET state='released', error=?, updated_at=? "
                     "WHERE id=?", (retained, iso(), e["id"]))
        if e["object_id"] is not None:
            conn.execute("UPDATE objects SET status='released', reason=? WHERE id=?",
                         (f"released: {reason}"[:500], e["object_id"]))


def _retry_retained(conn: sqlite3.Connection, incident: sqlite3.Row,
                    vault_for: Callable[[str], VaultStore], dry_run: bool) -> dict[str, Any]:
    """A released incident whose sealed copies object lock kept: try deleting them again."""
    iid = incident["id"]
    rows = conn.execute("SELECT * FROM vault_entries WHERE incident_id=? AND state='released' "
                        "AND error LIKE 'object lock:%'", (iid,)).fetchall()
    if not rows:
        raise UsageError(f"incident {iid} is already released; nothing to release")
    result: dict[str, Any] = {"incident": iid, "restored": [], "dry_run": dry_run,
                              "retained": [], "deleted": []}
    for e in rows:
        vault = vault_for(e["vault"])
        if dry_run:
            result["retained"].append({"entry": e["id"]})
            continue
        try:
            vault.delete(key_name(e["id"]))
            vault.delete(blob_name(e["id"]))
        except VaultLocked as exc:
            result["retained"].append({"entry": e["id"],
                                       "until": str(exc.until) if exc.until else None})
            continue
        with transaction(conn):
            conn.execute("UPDATE vault_entries SET error=NULL, updated_at=? WHERE id=?",
                         (iso(), e["id"]))
            audit.append(conn, "release.vault_deleted", f"incident:{iid}", {"entry": e["id"]})
        result["deleted"].append(e["id"])
    return result


def verify_vault(conn: sqlite3.Connection, vault: VaultStore, *, deep: bool = False,
                 private_key: Any = None) -> dict[str, Any]:
    """Check every live entry sealed into ``vault``. Public side: both objects exist and hash
    as recorded. ``deep``: also decrypt and check plaintext sha256 (audited)."""
    rows = conn.execute("SELECT * FROM vault_entries WHERE vault=? AND state IN "
                        "('done','verified','source_removed') ORDER BY created_at",
                        (vault.url,)).fetchall()
    bad: list[dict[str, str]] = []
    if deep and rows:
        audit.append(conn, "evidence.decrypted", "vault",
                     {"entries": len(rows), "purpose": "vault verify --deep"})
    for r in rows:
        try:
            if deep:
                decrypt_entry(vault, r, private_key)
            else:
                for name, want in ((blob_name(r["id"]), r["blob_sha256"]),
                                   (key_name(r["id"]), r["key_sha256"])):
                    if _sha(vault.get(name)) != want:
                        raise IntegrityError(f"vault entry {r['id']}: {name} does not match "
                                             "its recorded hash")
        except VaultMissing:
            bad.append({"entry": r["id"], "incident": str(r["incident_id"]),
                        "problem": "missing from the vault"})
        except IntegrityError as exc:
            bad.append({"entry": r["id"], "incident": str(r["incident_id"]),
                        "problem": exc.message})
    live = {r["id"] for r in conn.execute("SELECT id FROM vault_entries WHERE state IN "
                                          "('sealing','stored','verified','source_removed',"
                                          "'done')")}
    kept = {r["id"] for r in conn.execute("SELECT id FROM vault_entries WHERE state='released' "
                                          "AND error LIKE 'object lock:%'")}
    names = list(vault.names())
    stray = sorted(n for n in names if n.split(".", 1)[0] not in live | kept)
    retained = sorted(n for n in names if n.split(".", 1)[0] in kept)
    res = {"vault": vault.url, "entries": len(rows), "bad": bad, "deep": deep,
           "stray_objects": stray, "retained_after_release": retained, "ok": not bad}
    audit.append(conn, "vault.verified", "vault",
                 {"entries": len(rows), "bad": len(bad), "deep": deep, "stray": len(stray)})
    return res


def binding_problem(vault: VaultStore, entry: sqlite3.Row, private_key: Any) -> str | None:
    """Does the entry's sealed metadata name the incident, entry, source, key and sha256 the
    database row says? (Decrypts the metadata only, never the content.)"""
    from fsq.quarantine.seal import open_metadata
    eid = entry["id"]
    try:
        meta = open_metadata(eid, vault.get(blob_name(eid)), vault.get(key_name(eid)),
                             private_key)
        check_binding(entry, meta)
    except VaultMissing:
        return f"vault entry {eid} is missing from {vault.url}"
    except FsqError as exc:
        return exc.message
    return None
