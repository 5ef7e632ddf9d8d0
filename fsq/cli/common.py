"""Shared CLI plumbing: settings with flag overrides, database, output, logging, progress.

Conventions every command follows (ARCHITECTURE.md "Interface conventions"):

* Options that correspond to a setting default to None and are passed to ``load(...)`` as
  overrides, so precedence is flag > FSQ_* env > .env > default.
* Core code raises ``fsq.errors.FsqError``; ``fsq.cli.main`` turns it into one stderr line and
  the exit code. Commands never call sys.exit themselves except through ``Exit``.
* ``--json`` prints exactly one JSON document on stdout; human text goes to stdout, warnings and
  progress to stderr.
* Secrets never reach output: print ``settings.masked()`` values only; ``echo_json``,
  ``warn``, log lines and error lines all pass through ``fsq.secrets.mask_secrets``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from typing import Any

import click

from fsq.config import Settings, load_settings
from fsq.ledger import audit
from fsq.ledger.db import connect
from fsq.secrets import MaskingFormatter, mask_secrets, redact


class Exit(Exception):
    """Leave with an exit code after output has been printed (no extra message)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


_LAST: dict[str, Any] = {}


def load(**overrides: Any) -> Settings:
    settings = load_settings({k: v for k, v in overrides.items() if v is not None})
    setup_logging(settings.log_level)
    _LAST["settings"] = settings
    return settings


def publish_witness() -> None:
    """After a command: if it appended audit rows and FSQ_AUDIT_WITNESS is set, append the new
    chain head there. A witness outage is a warning: the command's own work stands."""
    from fsq.custody import witness
    from fsq.errors import FsqError
    from fsq.runtime import public_key_path
    settings = _LAST.pop("settings", None)
    try:
        if not audit._context.pop("appended", None):
            return
        if settings is None or not settings.audit_witness:
            return
        conn = connect(settings.db, create=False)
        try:
            witness.publish(conn, settings, public_key_path(settings))
        finally:
            conn.close()
    except FsqError as exc:
        warn(f"audit witness not updated: {exc.message}")
    finally:
        witness.remember_signer(None)  # an unlocked key never outlives its command


def setup_logging(level: str) -> None:
    root = logging.getLogger("fsq")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                        "%Y-%m-%dT%H:%M:%SZ"))
        logging.Formatter.converter = time.gmtime
        root.addHandler(h)
        root.propagate = False
    root.setLevel(level.upper())


def open_db(settings: Settings, *, create: bool = True) -> sqlite3.Connection:
    return connect(settings.db, create=create)


def echo_json(obj: Any) -> None:
    click.echo(mask_secrets(json.dumps(redact(obj), indent=2, sort_keys=True, default=str,
                                       ensure_ascii=False)))


def show_key(stored: str) -> str:
    """Every human-readable printer of an object key uses this: the key as stored (state DB,
    summaries) shown with control characters, escape sequences, newlines and raw bytes
    escaped, so a hostile name cannot rewrite the terminal or forge a line (fsq.names).
    ``--json`` output carries the stored form instead (reversible: fsq.names.key_from_db)."""
    from fsq.names import show_stored_key
    return show_stored_key(stored)


def warn(msg: str) -> None:
    click.echo(mask_secrets(f"fsq: warning: {msg}"), err=True)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Plain fixed-width table (no colours: output is often piped or logged)."""
    if not rows:
        return ""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout (for scripts).")(f)


def db_option(f):
    return click.option("--db", type=click.Path(dir_okay=False),
                        help="State database (FSQ_DB, default ./fsq.db).")(f)


def set_command(name: str) -> None:
    audit.set_command(name)


class Progress:
    """count, rate and ETA on a terminal; a log line every ``every`` seconds otherwise.

    The listing is streamed (bounded memory), so the number of objects is not known until the
    pass ends. ``expected`` (e.g. what the last full pass of the source listed) gives a
    percentage and an ETA marked as an estimate; without it there is no ETA at all, rather
    than one that counts only what was listed so far."""

    def __init__(self, label: str, *, every: float = 30.0, stream=None,
                 expected: int | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if not self.tty else 0.2
        self.log = logging.getLogger("fsq.progress")
        self.start(expected)

    def start(self, expected: int | None = None) -> None:
        """A new pass: reset the clock (a daemon reuses one Progress)."""
        self.expected = expected
        self.t0 = time.monotonic()
        self.last = self.t0  # first periodic line after `every` seconds, not at once

    def __call__(self, summary: Any, total: int | None) -> None:
        now = time.monotonic()
        done = total is not None
        if not done and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        n = summary.scanned + summary.skipped
        rate = n / elapsed
        listed = summary.listed
        eta = ""
        if done:
            where = f"{n}/{listed}"
        elif self.expected and self.expected >= n:
            total = max(self.expected, listed)
            where = f"{n}/~{total} ({100 * n / total:.0f}%, total estimated from the last pass)"
            if rate > 0:
                eta = f" ETA ~{_fmt_s((total - n) / rate)}"
        else:
            where = f"{n} done, {listed} listed so far"
        text = f"{self.label}: {where}, {summary.flagged} flagged, {rate:.1f}/s{eta}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if done else ""))
            self.stream.flush()
        elif not done:
            self.log.info(text)


def _fmt_s(sec: float) -> str:
    sec = int(sec)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def passphrase_file_option(f):
    return click.option("--passphrase-file", type=click.Path(dir_okay=False),
                        help="File holding the vault passphrase (else FSQ_VAULT_PASSPHRASE or "
                             "a prompt; giving both is an error).")(f)


def private_key(settings: Settings, passphrase_file: str | None):
    """Load the vault private key (prompting if needed). Audited by the caller."""
    from fsq.quarantine.keys import load_private_key
    from fsq.runtime import private_key_path
    from fsq.secrets import get_passphrase
    path = private_key_path(settings)
    pw = get_passphrase(env=settings.vault_passphrase, file=passphrase_file, prompt=True)
    return load_private_key(path, pw)


class VaultCache:
    """Open each vault/source URL once per command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._vaults: dict[str, Any] = {}
        self._sources: dict[str, Any] = {}

    def vault(self, url: str):
        from fsq.quarantine.store import open_vault
        if url not in self._vaults:
            self._vaults[url] = open_vault(url, self.settings)
        return self._vaults[url]

    def source(self, url: str):
        from fsq.sources.base import open_source
        if url not in self._sources:
            self._sources[url] = open_source(url, self.settings)
        return self._sources[url]

    def close(self) -> None:
        for s in list(self._sources.values()) + list(self._vaults.values()):
            try:
                s.close()
            except Exception:
                pass


def host_key_option(f):
    """--accept-new-host-key for commands that may open an SFTP source."""
    return click.option("--accept-new-host-key", "accept_new_host_key", is_flag=True,
                        default=None,
                        help="SFTP: accept and record an unknown host key (never a changed "
                             "one) [FSQ_SFTP_ACCEPT_NEW_HOST_KEY].")(f)


def vault_options(f):
    """--vault and --vault-public-key: what the scanning side needs to seal."""
    f = click.option("--vault-public-key", type=click.Path(dir_okay=False),
                     help="Vault public key [FSQ_VAULT_PUBLIC_KEY, ./keys/vault.pub].")(f)
    return click.option("--vault", help="Vault URL [FSQ_VAULT, file://./quarantine].")(f)


def custodian_paths(settings: Settings):
    """(custodian.pub, custodian.key), beside the vault key pair."""
    from fsq.custody.custodian import paths
    from fsq.runtime import private_key_path, public_key_path
    return paths(public_key_path(settings), private_key_path(settings))


def custodian_verifier(settings: Settings):
    """The custodian public key (no secret needed), for dry runs and checks."""
    from fsq.custody.custodian import load_verifier
    return load_verifier(custodian_paths(settings)[0])


def unlock_custodian(settings: Settings, passphrase_file: str | None, *,
                     vault_key: bool = False):
    """Ask for the passphrase once; return the unlocked custodian Signer, plus the vault
    private key when ``vault_key`` (purge checks sealed metadata with it). The signer is also
    remembered for this process so the audit witness can sign heads with it."""
    from fsq.custody import witness
    from fsq.custody.custodian import unlock
    from fsq.quarantine.keys import load_private_key
    from fsq.runtime import private_key_path
    from fsq.secrets import get_passphrase
    pw = get_passphrase(env=settings.vault_passphrase, file=passphrase_file, prompt=True)
    signer = unlock(custodian_paths(settings)[1], pw)
    witness.remember_signer(signer)
    if not vault_key:
        return signer
    return signer, load_private_key(private_key_path(settings), pw)
