"""Read-only PostgreSQL connections to someone else's database (Lemmy's, pict-rs's).

fsq only ever reads these databases. Every connection is opened with a short connect timeout,
a statement timeout, and ``default_transaction_read_only`` on (and psycopg's ``read_only``), so a
bug here cannot write to the instance's data even if the role could.

Failures become ``ExternalError`` (exit 3) with the URL's password masked; libpq messages do not
contain passwords, but we scrub it anyway in case a server or driver ever echoes one.
"""

from __future__ import annotations

from typing import Any

from fsq.secrets import mask_secrets
from fsq.errors import ExternalError

CONNECT_TIMEOUT = 5          # seconds
STATEMENT_TIMEOUT_MS = 120_000


def _password_of(url: str) -> str | None:
    try:
        from psycopg.conninfo import conninfo_to_dict

        return conninfo_to_dict(url).get("password")  # type: ignore[return-value]
    except Exception:
        return None


def scrub(message: str, url: str) -> str:
    """Remove the connection string, and its password, from an error message."""
    pw = _password_of(url)
    message = message.replace(url, "(the connection string)")
    if pw:
        message = message.replace(str(pw), "***")
    return " ".join(mask_secrets(message).split())


def connect_readonly(url: str, what: str, setting: str) -> Any:
    """Open ``url`` read-only. ``what`` names the database in messages ("Lemmy database"),
    ``setting`` the FSQ_* variable to fix."""
    try:
        import psycopg
    except ImportError:
        raise ExternalError(f"{what}: psycopg is not installed; pip install 'fsq[lemmy]'") \
            from None
    try:
        conn = psycopg.connect(
            url, connect_timeout=CONNECT_TIMEOUT, autocommit=False,
            options=f"-c default_transaction_read_only=on "
                    f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            application_name="fsq-report")
        conn.read_only = True
    except psycopg.Error as exc:
        # Name the setting, never the connection string: this message ends up in reports.
        raise ExternalError(f"{what} ({setting}) is unreachable: "
                            f"{scrub(str(exc), url)}; check {setting}") from None
    except (ValueError, TypeError) as exc:  # malformed URL / conninfo
        raise ExternalError(f"{what}: {setting} is not a valid PostgreSQL URL "
                            f"({scrub(str(exc), url)})") from None
    return conn


def text(value: Any) -> Any:
    """Normalise a value read from a foreign database: bytes (a SQL_ASCII database, invalid
    UTF-8) become str with U+FFFD replacements; other values pass through."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return value
