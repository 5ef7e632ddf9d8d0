"""Audit witnesses: the chain head, published outside the database, routinely.

The hash chain (``fsq.ledger.audit``) catches edited, deleted, inserted and reordered rows, but
not a *truncated* tail, nor a log that was rewritten and re-chained from some row on: both are
valid chains. Only a head saved elsewhere earlier proves it. ``FSQ_AUDIT_WITNESS`` makes that
routine: after every command that appended audit rows (and every
``FSQ_AUDIT_WITNESS_INTERVAL`` seconds in ``fsq serve``) fsq appends the head::

    {"v": 1, "seq": 41, "hash": "<64 hex>", "time": "<UTC>", "signer": "custodian"|"scanner",
     "key": "<fingerprint>", "sig": "<base64 Ed25519 over fsq-witness-v1\\0 || canonical JSON
     of the other fields>"}

Witness kinds (the value's scheme):

* a file path (or ``file:///path``): one JSON line appended and fsync'ed per head. Put it where
  the state database's writers cannot rewrite it (another host's mount, ``chattr +a``);
* ``s3://bucket/prefix``: one object per head (``prefix/<seq>-<time>.json``); with an Object
  Lock bucket each object gets governance retention for FSQ_RETENTION_DAYS + 30 days, so not
  even the bucket's writers can remove it early;
* ``syslog://host:port`` (UDP) or ``syslog:///dev/log``: a log line to a syslog server. It
  cannot be read back by fsq: compare the heads there by hand (``fsq audit head``).

Signatures: with the custodian key when the command unlocked it (clear, hold lift, purge),
otherwise with a *scanner witness key*, an unencrypted Ed25519 key made on first use beside
the vault public key (``witness.key``, 0600; ``witness.pub``). Its limit: anyone who holds the
scanner host can sign heads with it, so a scanner-signed head only proves it came from a host
with that file; the protection comes from the witness medium (append-only, elsewhere). A head
with a bad signature is reported as forged.

``verify_heads`` checks the chain against every head: a head's row must still exist (else the
log was truncated) with the same hash (else it was rewritten since).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fsq.errors import ConfigError, ExternalError, UsageError
from fsq.ledger import audit
from fsq.timeutil import iso, utcnow

log = logging.getLogger("fsq.witness")

CONTEXT = b"fsq-witness-v1\0"
_state: dict[str, Any] = {"signer": None}


def remember_signer(signer: Any) -> None:
    """The custodian key unlocked by this process (heads published later are signed with it)."""
    _state["signer"] = signer


# --- keys ----------------------------------------------------------------------------------------

def scanner_key_path(public_vault_key: Path) -> Path:
    return public_vault_key.with_name("witness.key")


def _scanner_signer(path: Path) -> Any:
    """Load, or make on first use, the scanner-side witness key (unencrypted, 0600)."""
    from fsq.custody.custodian import Signer
    from fsq.quarantine.store_dir import write_new_file
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            write_new_file(str(path), pem, 0o600)
        except FileExistsError:
            key = serialization.load_pem_private_key(path.read_bytes(), None)
        pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        try:
            write_new_file(str(path.with_suffix(".pub")), pub, 0o644)
        except FileExistsError:
            pass
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the witness key {path}: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return Signer(key)


def _message(head: dict[str, Any]) -> bytes:
    body = {k: v for k, v in head.items() if k != "sig"}
    return CONTEXT + audit.canonical_json(body).encode("utf-8")


def make_head(conn: sqlite3.Connection, signer: Any, kind: str) -> dict[str, Any] | None:
    r = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if r is None:
        return None
    head = {"v": 1, "seq": int(r[0]), "hash": r[1], "time": iso(), "signer": kind,
            "key": signer.fingerprint}
    head["sig"] = signer.sign(_message(head))
    return head


# --- witness media ------------------------------------------------------------------------------

@dataclass
class Witness:
    url: str
    settings: Any

    @property
    def kind(self) -> str:
        u = self.url
        if u.startswith("s3://"):
            return "s3"
        if u.startswith("syslog://"):
            return "syslog"
        if "://" in u and not u.startswith("file://"):
            raise ConfigError(f"FSQ_AUDIT_WITNESS {u.split('://', 1)[0]}:// is not supported; "
                              "use a file path, s3://bucket/prefix or syslog://host:port")
        return "file"

    def _path(self) -> str:
        return self.url[len("file://"):] if self.url.startswith("file://") else self.url

    def append(self, head: dict[str, Any]) -> None:
        line = audit.canonical_json(head)
        kind = self.kind
        if kind == "file":
            path = os.path.expanduser(self._path())
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, (line + "\n").encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise ExternalError(f"cannot append to the audit witness {path}: "
                                    f"{e.strerror or e}") from None
        elif kind == "s3":
            self._s3_put(head, line)
        else:
            self._syslog(line)

    def heads(self) -> list[dict[str, Any]]:
        kind = self.kind
        if kind == "syslog":
            raise UsageError("a syslog witness cannot be read back by fsq; compare the heads "
                             "in your log server with `fsq audit head`")
        if kind == "file":
            path = os.path.expanduser(self._path())
            try:
                with open(path, encoding="utf-8") as f:
                    lines = [ln for ln in f.read().splitlines() if ln.strip()]
            except FileNotFoundError:
                return []
            except OSError as e:
                raise ExternalError(f"cannot read the audit witness {path}: "
                                    f"{e.strerror or e}") from None
            return [_parse(ln, f"{path} line {i}") for i, ln in enumerate(lines, 1)]
        return self._s3_heads()

    # -- s3 --
    def _s3(self) -> tuple[Any, str, str]:
        from fsq.sources.s3 import make_s3_client, parse_s3_url
        bucket, prefix = parse_s3_url(self.url, "audit witness")
        return make_s3_client(self.settings), bucket, prefix

    def _s3_put(self, head: dict[str, Any], line: str) -> None:
        client, bucket, prefix = self._s3()
        key = f"{prefix}{head['seq']:012d}-{head['time'].replace(':', '')}.json"
        extra: dict[str, Any] = {}
        try:
            try:
                lock = client.get_object_lock_configuration(Bucket=bucket)
                enabled = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
            except Exception:
                enabled = None
            if enabled == "Enabled":
                days = int(getattr(self.settings, "retention_days", 365)) + 30
                extra = {"ObjectLockMode": "GOVERNANCE",
                         "ObjectLockRetainUntilDate": utcnow() + timedelta(days=days),
                         "ChecksumAlgorithm": "SHA256"}
            client.put_object(Bucket=bucket, Key=key, Body=line.encode("utf-8"), **extra)
        except Exception as e:  # botocore errors: one line, no URL secrets
            raise ExternalError(f"cannot write the audit witness s3://{bucket}/{prefix}: "
                                f"{e.__class__.__name__}") from None

    def _s3_heads(self) -> list[dict[str, Any]]:
        client, bucket, prefix = self._s3()
        out = []
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                          Prefix=prefix):
                for o in page.get("Contents", []):
                    body = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                    out.append(_parse(body.decode("utf-8", "replace"), o["Key"]))
        except Exception as e:
            raise ExternalError(f"cannot read the audit witness s3://{bucket}/{prefix}: "
                                f"{e.__class__.__name__}") from None
        return sorted(out, key=lambda h: (h.get("seq", 0), h.get("time", "")))

    # -- syslog --
    def _syslog(self, line: str) -> None:
        import logging.handlers
        rest = self.url[len("syslog://"):]
        if rest.startswith("/"):
            address: Any = rest
        else:
            host, _, port = rest.partition(":")
            address = (host or "localhost", int(port or 514))
        h = logging.handlers.SysLogHandler(address=address)
        try:
            h.emit(logging.LogRecord("fsq.audit", logging.INFO, "", 0, "fsq-audit-head %s",
                                     (line,), None))
        finally:
            h.close()


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        d = json.loads(text)
        if not isinstance(d, dict) or not isinstance(d.get("seq"), int) \
                or not isinstance(d.get("hash"), str):
            raise ValueError
        return d
    except ValueError:
        return {"seq": None, "hash": None, "malformed": where}


# --- publishing and verification ---------------------------------------------------------------

def publish(conn: sqlite3.Connection, settings: Any, public_vault_key: Path) -> dict | None:
    """Append the current head to the configured witness (no-op when none is set)."""
    url = getattr(settings, "audit_witness", None)
    if not url:
        return None
    signer, kind = _state["signer"], "custodian"
    if signer is None:
        signer, kind = _scanner_signer(scanner_key_path(public_vault_key)), "scanner"
    head = make_head(conn, signer, kind)
    if head is not None:
        Witness(url, settings).append(head)
    return head


def verify_heads(conn: sqlite3.Connection, heads: list[dict[str, Any]],
                 verifiers: dict[str, Any]) -> list[str]:
    """Problems found checking the chain against witnessed heads ([] = consistent)."""
    problems: list[str] = []
    rows = {int(r[0]): r[1] for r in conn.execute("SELECT seq, hash FROM audit")}
    last = max(rows) if rows else 0
    for h in heads:
        if h.get("malformed"):
            problems.append(f"witnessed head at {h['malformed']} is malformed")
            continue
        v = verifiers.get(h.get("key"))
        if v is None or not v.verify(_message(h), str(h.get("sig", ""))):
            problems.append(f"witnessed head {h['seq']} ({h.get('time')}) has no valid "
                            "signature by the custodian or scanner witness key (forged?)")
            continue
        seq = h["seq"]
        if seq not in rows:
            problems.append(f"row {seq} was witnessed at {h.get('time')} but the log ends at "
                            f"row {last}: the audit log was truncated")
        elif rows[seq] != h["hash"]:
            problems.append(f"row {seq} differs from the head witnessed at {h.get('time')}: "
                            "the audit log was rewritten and re-chained since")
    return problems


class Periodic:
    """Publish the head every ``interval`` seconds from a daemon thread (``fsq serve``)."""

    def __init__(self, connect: Any, settings: Any, public_vault_key: Path,
                 interval: float) -> None:
        self._stop = threading.Event()
        self._last: int | None = None

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    conn = connect()
                    try:
                        r = conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
                        if r != self._last:
                            publish(conn, settings, public_vault_key)
                            self._last = r
                    finally:
                        conn.close()
                except Exception as exc:  # never kill the daemon for a witness outage
                    log.warning("audit witness: %s", getattr(exc, "message", exc))

        self._thread = threading.Thread(target=run, name="fsq-witness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
