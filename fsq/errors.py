"""One exception hierarchy for fsq.

Every error carries a message that says what went wrong *and what to do next*, plus the
process exit code the CLI maps it to (see ARCHITECTURE.md, "Interface conventions"):

    0 success, 2 usage/configuration, 3 external service failed, 4 integrity failure, 1 other.

Only ``fsq.cli`` turns these into exit codes and stderr lines; the core raises them.
Messages must never contain secrets (keys, passphrases, passwords in URLs).
"""

from __future__ import annotations


class FsqError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class UsageError(FsqError):
    """Bad command-line usage or configuration (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A setting is unknown, malformed or missing (exit 2)."""


class ExternalError(FsqError):
    """An external service failed: storage, database, pict-rs, Lemmy (exit 3)."""

    exit_code = 3


class SourceError(ExternalError):
    """The image source (local dir, SFTP, S3) failed."""


class VaultError(ExternalError):
    """The vault store (directory or bucket) failed."""


class IntegrityError(FsqError):
    """Something that must be intact is not: audit chain, vault entry, checksum (exit 4)."""

    exit_code = 4


class NotFound(UsageError):
    """A named incident, hold or entry does not exist (exit 2: the command named something
    that is not there, like any other bad argument)."""

    exit_code = 2
