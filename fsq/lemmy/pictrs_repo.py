"""Reader for the pict-rs 0.5 PostgreSQL metadata repo (``PICTRS__REPO__TYPE=postgres``).

A stored file is named by its *identifier* (its path under the store root, or its object key).
pict-rs links identifiers to a *hash* (``hashes.identifier`` for originals,
``hashes.motion_identifier`` for the still made from a video, ``variants.identifier`` for
thumbnails and resizes) and a hash to its *aliases* (the names Lemmy puts in URLs).

The ``hash`` column is standard base64 of 39 bytes: SHA-256 of the stored file, its length as 6
big-endian bytes, one format byte. Decoding it lets the report cross-check pict-rs's SHA-256
against the incident's (they match for an original; a variant or motion file has its own bytes,
so only the original's hash is pict-rs's).

Read-only: see fsq.lemmy.pg.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Iterable

from fsq.errors import ExternalError
from fsq.lemmy.pg import connect_readonly, scrub, text

SETTING = "FSQ_PICTRS_DATABASE_URL"


@dataclass(frozen=True)
class DecodedHash:
    sha256: str          # hex
    size: int
    format_byte: int


def decode_hash(value: str) -> DecodedHash | None:
    """Decode a ``hashes.hash`` value; None if it is not the 39-byte form."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 39:
        return None
    return DecodedHash(raw[:32].hex(), int.from_bytes(raw[32:38], "big"), raw[38])


def encode_hash(sha256_hex: str, size: int, format_byte: int = 0) -> str:
    """Inverse of ``decode_hash`` (used by tests and fixtures)."""
    raw = bytes.fromhex(sha256_hex) + size.to_bytes(6, "big") + bytes([format_byte])
    return base64.b64encode(raw).decode("ascii")


def identifier_candidates(key: str) -> list[str]:
    """Identifiers a storage key may correspond to.

    Keys are relative to the scanned root. Scanning the store root (``.../pictrs/files`` or the
    bucket) gives the identifier itself; scanning one level up (``.../pictrs``) prefixes
    ``files/``. Nothing looser than that: a wrong identifier would link the wrong people.
    """
    k = key.lstrip("/")
    out = [k]
    if k.startswith("files/"):
        out.append(k[len("files/"):])
    return out


@dataclass
class RepoLookup:
    """What the repo knows about one stored file."""

    identifier: str                      # the identifier as found in the repo
    key: str                             # the storage key we asked about
    role: str                            # original | motion | variant
    variant: str | None                  # e.g. thumbnail/256/webp, for role=variant
    hash: str                            # the base64 hash value
    decoded: DecodedHash | None
    original_identifier: str
    motion_identifier: str | None
    created_at: str | None
    aliases: list[str] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)   # {variant, identifier, accessed}
    proxies: list[dict[str, Any]] = field(default_factory=list)    # {url, alias, accessed}
    details: dict[str, Any] | None = None
    migrated_from: str | None = None

    def sha256_check(self, incident_sha256: str | None) -> str:
        """'match' | 'mismatch' | 'not-comparable' (a variant/motion file has other bytes)."""
        if self.decoded is None or not incident_sha256:
            return "not-comparable"
        if self.role != "original":
            return "not-comparable"
        return "match" if self.decoded.sha256 == incident_sha256.lower() else "mismatch"


def _iso(v: Any) -> str | None:
    if v is None:
        return None
    if hasattr(v, "isoformat"):
        if getattr(v, "tzinfo", None) is None:   # pict-rs uses `timestamp` (UTC, no zone)
            return v.isoformat() + "Z"
        return v.isoformat()
    return str(text(v))


class PictrsRepo:
    """``with PictrsRepo(url) as repo: repo.lookup(keys)``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = connect_readonly(url, "pict-rs database", SETTING)

    def __enter__(self) -> "PictrsRepo":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    def _q(self, sql: str, args: Iterable[Any]) -> list[tuple]:
        import psycopg

        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, tuple(args))
                rows = cur.fetchall()
            self.conn.rollback()   # end the read-only transaction; nothing to keep
            return [tuple(text(v) for v in r) for r in rows]
        except psycopg.Error as exc:
            try:
                self.conn.rollback()
            except Exception:
                pass
            if getattr(exc, "sqlstate", None) == "42P01":
                raise ExternalError("pict-rs database: a pict-rs 0.5 table is missing "
                                    f"({scrub(str(exc), self.url)}); is {SETTING} the pict-rs "
                                    "repo (PICTRS__REPO__URL)?") from None
            raise ExternalError(f"pict-rs database query failed: {scrub(str(exc), self.url)}") \
                from None

    def lookup(self, key: str) -> RepoLookup | None:
        """Everything about the file stored under ``key``; None if pict-rs has no record."""
        cands = identifier_candidates(key)
        migrated_from = None
        # A store migration renamed identifiers; follow old -> new.
        rows = self._q("SELECT old_identifier, new_identifier FROM store_migrations "
                       "WHERE old_identifier = ANY(%s)", [cands])
        if rows:
            migrated_from = rows[0][0]
            cands = cands + [rows[0][1]]

        found = self._q(
            "SELECT hash, identifier, motion_identifier, created_at, "
            "CASE WHEN identifier = ANY(%s) THEN identifier ELSE motion_identifier END "
            "FROM hashes WHERE identifier = ANY(%s) OR motion_identifier = ANY(%s)",
            [cands, cands, cands])
        role, variant = "original", None
        if found:
            h, ident, motion, created, matched = found[0]
            if matched != ident:
                role = "motion"
        else:
            v = self._q("SELECT v.hash, v.variant, v.identifier, h.identifier, "
                        "h.motion_identifier, h.created_at FROM variants v "
                        "JOIN hashes h ON h.hash = v.hash WHERE v.identifier = ANY(%s)",
                        [cands])
            if not v:
                return None
            h, variant, matched, ident, motion, created = v[0]
            role = "variant"

        result = RepoLookup(identifier=matched, key=key, role=role, variant=variant, hash=h,
                            decoded=decode_hash(h), original_identifier=ident,
                            motion_identifier=motion, created_at=_iso(created),
                            migrated_from=migrated_from)
        result.aliases = [r[0] for r in self._q(
            "SELECT alias FROM aliases WHERE hash = %s ORDER BY alias", [h])]
        result.variants = [{"variant": r[0], "identifier": r[1], "accessed": _iso(r[2])}
                           for r in self._q("SELECT variant, identifier, accessed FROM variants "
                                            "WHERE hash = %s ORDER BY variant", [h])]
        if result.aliases:
            result.proxies = [{"url": r[0], "alias": r[1], "accessed": _iso(r[2])}
                              for r in self._q("SELECT url, alias, accessed FROM proxies "
                                               "WHERE alias = ANY(%s) ORDER BY url",
                                               [result.aliases])]
        d = self._q("SELECT json FROM details WHERE identifier = %s", [ident])
        if d and isinstance(d[0][0], dict):
            result.details = d[0][0]
        return result

    def identifiers_of(self, aliases: Iterable[str]) -> dict[str, str]:
        """alias -> identifier of its original, for the aliases pict-rs knows (``fsq lemmy``
        needs the stored file behind each alias an action would delete)."""
        aliases = list(dict.fromkeys(aliases))
        if not aliases:
            return {}
        return {r[0]: r[1] for r in self._q(
            "SELECT a.alias, h.identifier FROM aliases a JOIN hashes h ON h.hash = a.hash "
            "WHERE a.alias = ANY(%s)", [aliases])}
