"""UTC time helpers. fsq stores every time as UTC ISO 8601 text with a trailing 'Z'."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None = None) -> str:
    dt = utcnow() if dt is None else dt
    if dt.tzinfo is None:
        raise ValueError("naive datetime; fsq works in UTC only")
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    """Parse ISO 8601 (date or date-time). A date-time without zone is taken as UTC."""
    t = text.strip()
    if t.endswith("Z") or t.endswith("z"):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def from_epoch(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)
