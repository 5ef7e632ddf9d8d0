"""The Source interface: where pict-rs keeps its files.

A Source is deliberately small (list / stat / read / remove / write) so that local directories,
SFTP servers and S3 buckets behave the same and one contract test suite covers all of them.

Keys are POSIX paths relative to the source root (for S3: relative to the prefix). A key never
starts with '/', never contains '..' or '.' segments, empty segments or NUL, and a Source never
touches anything outside its root: ``check_key`` enforces that for every key that comes from
outside (CLI arguments, the database).

Names never stop a pass: a listed name fsq cannot represent or act on safely (not valid UTF-8,
a backslash, a NUL, an unsafe path) is *listed* with the skip reason of
``fsq.names.key_problem`` and never read; the pipeline records it as skipped and goes on.
Local names are kept exact (``os.fsdecode`` with surrogateescape; see fsq.names).

Errors: a Source raises ``SourceError`` (exit 3) when the storage itself fails (unreachable,
credentials), and ``ObjectError`` for a problem with one object (vanished, permission denied),
which the pipeline records against that object and carries on (invariant 6).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator

from fsq.errors import SourceError, UsageError
from fsq.names import display_key, key_problem


class ObjectError(Exception):
    """One object could not be read/removed; the run goes on. ``reason`` is short text."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ObjectMissing(ObjectError):
    """The object does not exist (any more)."""

    def __init__(self, key: str) -> None:
        super().__init__(key, "no such object")


class ObjectChanged(ObjectError):
    """The object's content changed under fsq (while read, or between reading and acting on
    it). An error on that object, done again next pass; never a failed pass."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed entry. ``skip_reason`` set = not a regular file; it is recorded, not read."""

    key: str
    size: int
    mtime: float  # seconds since the epoch, UTC
    skip_reason: str | None = None


def check_key(key: str) -> str:
    """Validate a relative POSIX key; raise UsageError for anything that could escape the root
    (or that fsq cannot represent: see ``fsq.names.key_problem``)."""
    problem = key_problem(key)
    if problem is not None:
        raise UsageError(f"invalid object key '{display_key(key)}': "
                         f"{problem.removesuffix('; never read')}")
    return key


class Source(abc.ABC):
    """Abstract image store. Implementations must be safe to call from several threads for
    ``read`` (the pipeline fetches on worker threads); ``list`` is consumed by one thread."""

    #: URL-ish description without secrets, e.g. "file:///srv/pictrs/files"
    url: str

    @abc.abstractmethod
    def list(self) -> Iterator[ObjectInfo]:
        """Every object under the root, in any order. Must not follow symlinks out of the root."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Current size/mtime of one key; raises ObjectMissing."""

    @abc.abstractmethod
    def read(self, key: str, max_bytes: int | None = None) -> bytes:
        """Whole content in memory. Raises ObjectMissing / ObjectError (e.g. too large)."""

    @abc.abstractmethod
    def remove(self, key: str) -> None:
        """Delete the object (for quarantine). Missing is not an error (idempotent)."""

    @abc.abstractmethod
    def write(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        """Create the object (for release), atomically where the store allows.
        Raises ObjectError if it exists and ``overwrite`` is false."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
            return True
        except ObjectMissing:
            return False

    def close(self) -> None:
        """Release connections. Default: nothing to do."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(url: str, settings) -> Source:  # settings: fsq.config.Settings
    """Pick the implementation from the URL scheme."""
    if url is None or url == "":
        raise UsageError("no source given: pass --source URL or set FSQ_SOURCE "
                         "(file:///path, sftp://user@host/path, s3://bucket/prefix)")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "" and not url.startswith(("/", "./", "../")):
        # A bare word like "upload:pict-rs" (the pseudo-source of fsq serve) must never be
        # taken for a relative directory: fsq could write evidence into it.
        raise UsageError(f"{url!r} is not a source URL; use file:///path, "
                         "sftp://user@host/path or s3://bucket/prefix")
    if scheme in ("file", ""):
        from fsq.sources.local import LocalSource
        return LocalSource.from_url(url)
    if scheme == "s3":
        from fsq.sources.s3 import S3Source
        return S3Source.from_url(url, settings)
    if scheme == "sftp":
        from fsq.sources.sftp import SFTPSource
        return SFTPSource.from_url(url, settings)
    raise UsageError(f"unsupported source scheme {scheme!r} in FSQ_SOURCE/--source; "
                     "use file://, sftp:// or s3://")


__all__ = ["ObjectInfo", "ObjectChanged", "ObjectError", "ObjectMissing", "Source", "SourceError",
           "check_key", "open_source"]
