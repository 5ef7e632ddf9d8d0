"""Evidence first: find the stored file behind every alias a Lemmy action would delete, and seal
each one that is not in the vault yet -- before the action is sent.

Locating (``locate``, read-only, also used by ``--dry-run``): alias -> pict-rs identifier from
the state DB's ``identifier_aliases`` cache, else the pict-rs 0.5 PostgreSQL repo, else the
pict-rs internal API (``GET /internal/identifier?alias=``). The identifier is the file's key in
the pict-rs store (FSQ_SOURCE); cached storage keys learnt by linkage are tried too.

Preserving (``preserve``): for each located file, in order --

1. a ``done`` vault entry already holds that storage key -> ``in-vault`` (e.g. a scan
   quarantined it; the source copy is gone, the sealed one is the evidence);
2. read the bytes from FSQ_SOURCE; a ``done`` entry with the same SHA-256 -> ``in-vault``;
3. otherwise open (or reuse) the incident of that SHA-256 with origin ``lemmy-action``, linked
   to the triggering incident, and seal a copy with ``Quarantiner.seal_copy`` -- the same
   crash-safe journal as every other sealing path (fsq.quarantine.move), minus the removal:
   Lemmy removes the original. The copy's metadata names the action, the alias and where the
   bytes were read.

Any failure (store or vault down, lookup failed, a file pict-rs knows but FSQ_SOURCE lacks)
raises before Lemmy is called: the caller sends nothing. Sealed files stay sealed, so a rerun
skips them (step 1/2) and completes.
"""

from __future__ import annotations

import hashlib
import mimetypes
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from fsq.config import mask_url
from fsq.errors import ConfigError, ExternalError, FsqError
from fsq.ledger import state
from fsq.ledger.db import transaction

# status values of an EvidenceFile
PLANNED, IN_VAULT, SEALED, UNKNOWN, UNRESOLVED, MISSING, FAILED = (
    "to-seal", "in-vault", "sealed", "not-in-pictrs", "unresolved", "missing", "failed")


@dataclass
class EvidenceFile:
    alias: str
    why: str                                 # "post url", "upload of person 3", ...
    identifier: str | None = None
    keys: list[str] = field(default_factory=list)   # storage keys to try, in order
    status: str = PLANNED
    detail: str | None = None
    key: str | None = None                   # the key the bytes were read from
    sha256: str | None = None
    size: int | None = None
    incident_id: int | None = None
    entry_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cached_keys(conn: sqlite3.Connection, alias: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT identifier FROM identifier_aliases WHERE alias = ? ORDER BY via = 'linkage', "
        "identifier", (alias,))]


def _vault_entry_for_keys(conn: sqlite3.Connection, keys: list[str]) -> sqlite3.Row | None:
    if not keys:
        return None
    return conn.execute(
        f"SELECT * FROM vault_entries WHERE state = 'done' AND key IN "
        f"({','.join('?' * len(keys))}) ORDER BY created_at LIMIT 1", keys).fetchone()


def _valid_key(key: str) -> bool:
    from fsq.sources.base import check_key
    try:
        check_key(key)
        return True
    except FsqError:
        return False


def locate(conn: sqlite3.Connection, settings: Any, files: list[EvidenceFile]) -> list[str]:
    """Fill ``identifier``/``keys``/``status`` of each file (read-only). Returns notes."""
    from fsq.lemmy import pictrs_api
    from fsq.lemmy.pictrs_repo import PictrsRepo

    notes: list[str] = []
    todo = []
    for f in files:
        if f.status != PLANNED:
            continue
        f.keys = _cached_keys(conn, f.alias)
        if f.keys:
            f.identifier = f.keys[0]
        else:
            todo.append(f)
    repo_url = getattr(settings, "pictrs_database_url", None)
    purl, pkey = getattr(settings, "pictrs_url", None), getattr(settings, "pictrs_api_key", None)
    if todo and repo_url:
        try:
            with PictrsRepo(repo_url) as repo:
                found = repo.identifiers_of(f.alias for f in todo)
            pairs = []
            for f in todo:
                if f.alias in found:
                    f.identifier = found[f.alias]
                    f.keys = [f.identifier]
                    pairs.append((f.identifier, f.alias))
                elif not (purl and pkey):
                    f.status, f.detail = UNKNOWN, "pict-rs repo has no such alias"
            pictrs_api.cache_put(conn, pairs, pictrs_api.VIA_REPO)
            todo = [f for f in todo if f.identifier is None and f.status == PLANNED]
        except ExternalError as exc:
            notes.append(f"pict-rs repo unavailable: {exc.message}")
    if todo and purl and pkey:
        try:
            api = pictrs_api.PictrsApi(purl, pkey)
            for f in todo:
                ident = api.identifier(f.alias)
                if ident is None:
                    f.status, f.detail = UNKNOWN, "pict-rs does not know this alias"
                    continue
                f.identifier, f.keys = ident, [ident]
                pictrs_api.cache_put(conn, [(ident, f.alias)], pictrs_api.VIA_API)
            todo = []
        except ExternalError as exc:
            notes.append(f"pict-rs API unavailable: {exc.message}")
    for f in todo:
        if f.identifier is None and f.status == PLANNED:
            f.status = UNRESOLVED
            f.detail = ("no pict-rs source answered (set FSQ_PICTRS_DATABASE_URL, or "
                        "FSQ_PICTRS_URL and FSQ_PICTRS_API_KEY)" if not notes else notes[-1])
    for f in files:
        # Identifiers come from databases an attacker may have written to: a key that could
        # leave the store root is never read (FSQ_SOURCE would refuse it anyway).
        good = [k for k in f.keys if _valid_key(k)]
        if f.keys and not good:
            f.status = FAILED
            f.detail = "pict-rs names a storage key fsq refuses (absolute, '..' or NUL)"
        f.keys = good
        if f.status == PLANNED:
            e = _vault_entry_for_keys(conn, f.keys)
            if e is not None:
                f.status, f.entry_id, f.incident_id, f.sha256 = (IN_VAULT, e["id"],
                                                                 e["incident_id"], e["sha256"])
                f.detail = "sealed earlier"
    return notes


def blockers(files: list[EvidenceFile]) -> list[EvidenceFile]:
    """Files that stop the action: not located, missing from the store, or failed."""
    return [f for f in files if f.status in (UNRESOLVED, MISSING, FAILED)]


def _incident_for(conn: sqlite3.Connection, sha256: str, md5: str, size: int,
                  media_type: str | None, linked: int | None) -> int:
    with transaction(conn):
        iid, created = state.ensure_incident(conn, sha256=sha256, md5=md5, size=size,
                                             media_type=media_type, width=None, height=None,
                                             verdict_id=None, origin="lemmy-action")
        if created and linked is not None and linked != iid:
            conn.execute("UPDATE incidents SET linked_incident_id = ? WHERE id = ?",
                         (linked, iid))
    return iid


def check_ready(settings: Any, files: list[EvidenceFile]) -> None:
    """Fail before anything is recorded or sent when sealing cannot even start: a blocked
    file, no FSQ_SOURCE to read from, no vault public key to seal with."""
    from pathlib import Path

    from fsq.runtime import public_key_path

    stop = blockers(files)
    if stop:
        f = stop[0]
        raise ConfigError(f"cannot tell which stored file alias {f.alias} is ({f.detail}); "
                          "nothing was sent to Lemmy") if f.status == UNRESOLVED else \
            ExternalError(f"evidence for alias {f.alias}: {f.detail}; nothing was sent to Lemmy")
    if not any(f.status == PLANNED for f in files):
        return
    if not getattr(settings, "source", None):
        raise ConfigError("FSQ_SOURCE is not set: fsq must read the files this action would "
                          "delete from the pict-rs store to seal them first; set it to the "
                          "store root (file:///..., sftp://..., s3://...)")
    if not Path(public_key_path(settings)).exists():
        raise ConfigError(f"vault public key {public_key_path(settings)} not found: run `fsq "
                          "init` first or set FSQ_VAULT_PUBLIC_KEY; nothing was sent to Lemmy")


def preserve(conn: sqlite3.Connection, settings: Any, files: list[EvidenceFile], *,
             meta: dict[str, Any], linked_incident: int | None,
             progress: Callable[[EvidenceFile, int, int], None] | None = None) -> None:
    """Seal every file still ``to-seal`` (see the module docstring). Raises FsqError on the
    first failure, with that file marked ``failed``/``missing``; nothing else is undone."""
    from fsq.quarantine.move import COPY_SOURCE, Quarantiner
    from fsq.sources.base import ObjectError, ObjectMissing, open_source

    check_ready(settings, files)
    pending = [f for f in files if f.status == PLANNED]
    if not pending:
        return
    q = Quarantiner.from_settings(settings)
    # Finish or roll back copies an interrupted run left half-sealed (their names are ours).
    # Two `fsq lemmy` runs at once could roll back each other's seal in progress; the other
    # run then fails verification before its call -- nothing is sent, a rerun completes.
    q.recover(conn, {COPY_SOURCE: None})
    source = open_source(settings.source, settings)
    try:
        for n, f in enumerate(pending, 1):
            data = None
            for key in f.keys:
                try:
                    data = source.read(key, settings.max_bytes)
                    f.key = key
                    break
                except ObjectMissing:
                    continue
                except ObjectError as exc:
                    f.status, f.detail = FAILED, f"cannot read {key}: {exc.reason}"
                    raise ExternalError(f"evidence for alias {f.alias}: {f.detail}; nothing "
                                        "was sent to Lemmy") from None
            if data is None:
                f.status = MISSING
                f.detail = (f"pict-rs names {', '.join(f.keys)} but {mask_url(source.url)} has "
                            "no such file (is FSQ_SOURCE the store root?)")
                raise ExternalError(f"evidence for alias {f.alias}: {f.detail}; nothing was "
                                    "sent to Lemmy")
            f.sha256 = hashlib.sha256(data).hexdigest()
            f.size = len(data)
            e = conn.execute("SELECT * FROM vault_entries WHERE state = 'done' AND sha256 = ? "
                             "ORDER BY created_at LIMIT 1", (f.sha256,)).fetchone()
            if e is not None:
                f.status, f.entry_id, f.incident_id = IN_VAULT, e["id"], e["incident_id"]
                f.detail = "same content sealed earlier"
            else:
                media_type = mimetypes.guess_type("x" + (f.alias[f.alias.rfind("."):]
                                                         if "." in f.alias else ""))[0]
                try:
                    f.incident_id = _incident_for(conn, f.sha256, hashlib.md5(data).hexdigest(),
                                                  len(data), media_type, linked_incident)
                    f.entry_id = q.seal_copy(
                        conn, key=f.key or f.keys[0], data=data, sha256=f.sha256,
                        md5=hashlib.md5(data).hexdigest(), incident_id=f.incident_id,
                        media_type=media_type,
                        extra_meta={**meta, "origin": "lemmy-action", "alias": f.alias,
                                    "why": f.why, "read_from": mask_url(source.url),
                                    "linked_incident_id": linked_incident})
                except (FsqError, ObjectError) as exc:
                    f.status = FAILED
                    f.detail = getattr(exc, "message", None) or getattr(exc, "reason", str(exc))
                    raise ExternalError(f"sealing alias {f.alias} failed: {f.detail}; nothing "
                                        "was sent to Lemmy (rerun when the store is back: "
                                        "files sealed so far are kept)") from None
                f.status = SEALED
            if progress is not None:
                progress(f, n, len(pending))
    finally:
        try:
            source.close()
        except Exception:
            pass
