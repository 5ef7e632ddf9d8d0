"""Which stored files are variants or motion files of which original (pict-rs 0.5 repo).

The scanner asks once per listing batch (``RepoLinks.lookup``: one query for up to a few
hundred keys, never one per object) what the pict-rs PostgreSQL repo (FSQ_PICTRS_DATABASE_URL)
knows about each key:

- ``hashes.identifier`` = key: an *original* (classified as usual);
- ``hashes.motion_identifier`` = key: the *motion* still pict-rs made from that original;
- ``variants.identifier`` = key: a *variant* (thumbnail, resize) of that original.

For a motion file or a variant the answer names the original: its identifier and the SHA-256
pict-rs recorded for it (the first 32 bytes of ``hashes.hash``, see fsq.lemmy.pictrs_repo). The
scanner then takes the original's verdict instead of classifying the file
(fsq.engine.variants).

The repo is an input an attacker can shape only through pict-rs itself, but it is still read
defensively: anything ambiguous - a key that is both an original and a variant, a key linked
to two different originals, a variant that names itself, a hash value that is not pict-rs's
39-byte form - gives *no* link, so the file is scanned normally. Failing to link only costs
time; a wrong link could hand a file a verdict that is not its own.

Read-only (fsq.lemmy.pg). Only the pict-rs repo can say this: pict-rs's HTTP API has no
endpoint that maps a variant or motion file to its original (reference "pict-rs HTTP API").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from fsq.lemmy.pictrs_repo import PictrsRepo, decode_hash, identifier_candidates

ROLES = ("original", "motion", "variant")


@dataclass(frozen=True)
class Link:
    """What the repo says about one storage key."""

    key: str
    role: str                     # original | motion | variant
    identifier: str               # the identifier that matched (from the repo)
    original_identifier: str
    original_sha256: str          # hex, from hashes.hash
    pictrs_hash: str              # the base64 hashes.hash value
    variant: str | None = None    # e.g. thumbnail/256/webp

    @property
    def derived(self) -> bool:
        """A motion file or a variant: it takes its original's verdict."""
        return self.role in ("motion", "variant")

    def facts(self) -> dict[str, Any]:
        """For the inherited verdict's details (traceability)."""
        return {"role": self.role, "identifier": self.identifier, "variant": self.variant,
                "original_identifier": self.original_identifier,
                "original_sha256": self.original_sha256, "pictrs_hash": self.pictrs_hash}


_SQL = (
    "SELECT identifier, 'original', NULL, hash, identifier FROM hashes "
    "WHERE identifier = ANY(%s) "
    "UNION ALL SELECT motion_identifier, 'motion', NULL, hash, identifier FROM hashes "
    "WHERE motion_identifier = ANY(%s) "
    "UNION ALL SELECT v.identifier, 'variant', v.variant, v.hash, h.identifier "
    "FROM variants v JOIN hashes h ON h.hash = v.hash WHERE v.identifier = ANY(%s)")


def links_from_rows(keys: Iterable[str], rows: Iterable[tuple]) -> dict[str, Link]:
    """The unambiguous link of each key from the rows of ``_SQL`` (pure; tests feed it
    hostile rows). A key with no row, or with rows that disagree, is left out."""
    by_ident: dict[str, list[tuple]] = {}
    for r in rows:
        if isinstance(r[0], str):
            by_ident.setdefault(r[0], []).append(r)
    out: dict[str, Link] = {}
    for key in keys:
        found: set[tuple] = set()
        for cand in identifier_candidates(key):
            for ident, role, variant, h, orig in by_ident.get(cand, []):
                found.add((ident, role, variant, h, orig))
        if len(found) != 1:
            continue  # unknown to pict-rs, or ambiguous: scan it normally
        ident, role, variant, h, orig = found.pop()
        decoded = decode_hash(h) if isinstance(h, str) else None
        if role not in ROLES or decoded is None or not isinstance(orig, str):
            continue
        if role != "original" and orig in identifier_candidates(key):
            continue  # a "variant" of itself
        out[key] = Link(key=key, role=role, identifier=ident, original_identifier=orig,
                        original_sha256=decoded.sha256, pictrs_hash=h,
                        variant=variant if isinstance(variant, str) else None)
    return out


class RepoLinks:
    """Bulk lookups against the pict-rs repo; the connection is opened on first use and
    closed by ``close`` (the scanner does both once per pass). Raises ExternalError (secrets
    masked) when the repo cannot be read; the scanner then scans those files normally."""

    BATCH = 256

    def __init__(self, url: str) -> None:
        self.url = url
        self._repo: PictrsRepo | None = None
        self.queries = 0

    def lookup(self, keys: list[str]) -> dict[str, Link]:
        if not keys:
            return {}
        if self._repo is None:
            self._repo = PictrsRepo(self.url)
        cands = sorted({c for k in keys for c in identifier_candidates(k)})
        self.queries += 1
        rows = self._repo._q(_SQL, [cands, cands, cands])
        return links_from_rows(keys, rows)

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None
