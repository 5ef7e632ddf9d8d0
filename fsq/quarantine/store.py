"""VaultStore: where sealed evidence objects live (a directory or an S3 bucket).

The store knows nothing about cryptography: it keeps opaque named objects. Names are
``<entry-id>.blob`` (sealed metadata + content) and ``<entry-id>.key`` (the data key wrapped to
the vault public key). Entry ids are random, so listing the store reveals nothing.

Contract (the same for every implementation, tested by one suite):

* ``put`` is atomic and durable when it returns: either the whole object exists under its name
  or nothing does; it refuses to overwrite an existing name (``VaultError``).
* ``get`` returns the exact bytes; ``ObjectMissing``-like absence raises ``VaultMissing``.
* ``delete`` is idempotent; ``deleted afterwards`` can be checked with ``exists``.
* ``set_retention`` (object lock) is a no-op where unsupported; ``retention_blocks_delete``
  tells purge whether a delete would be refused now.
"""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Iterator

from fsq.errors import UsageError, VaultError


class VaultMissing(VaultError):
    """A named vault object does not exist."""


class VaultLocked(VaultError):
    """The store refuses to delete an object yet (S3 Object Lock retention)."""

    def __init__(self, name: str, until: datetime | None) -> None:
        super().__init__(f"vault object {name} is under object-lock retention"
                         + (f" until {until.isoformat()}" if until else ""))
        self.name = name
        self.until = until


class VaultStore(abc.ABC):
    url: str  # without secrets

    @abc.abstractmethod
    def put(self, name: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get(self, name: str) -> bytes: ...

    @abc.abstractmethod
    def delete(self, name: str) -> None: ...

    @abc.abstractmethod
    def exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def names(self) -> Iterator[str]: ...

    def set_retention(self, name: str, until: datetime) -> None:
        """Apply/extend write-once retention where supported (never shortens)."""

    def close(self) -> None:
        pass


def open_vault(url: str, settings) -> VaultStore:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("file", ""):
        from fsq.quarantine.store_dir import DirStore
        return DirStore.from_url(url)
    if scheme == "s3":
        from fsq.quarantine.store_s3 import S3Store
        return S3Store.from_url(url, settings)
    raise UsageError(f"unsupported vault scheme {scheme!r} in FSQ_VAULT; use file:// or s3://")
