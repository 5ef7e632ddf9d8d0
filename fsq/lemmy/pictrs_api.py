"""Client for pict-rs's internal HTTP API, and the identifier -> alias cache built with it.

For instances whose pict-rs metadata is in sled (0.4, or 0.5 without PostgreSQL) the repo
cannot be read, and no endpoint maps an identifier back to an alias. What does exist is
``GET /internal/identifier?alias=A`` (0.4+, originals only). Lemmy's ``local_image`` table lists
the aliases of every local upload and server-made thumbnail, so asking pict-rs for each of those
aliases once builds the identifier -> alias map. It is cached in the state database table
``identifier_aliases`` (``via`` = 'pictrs-api'), so later reports only ask about new aliases.

Interface (pict-rs 0.5): header ``X-Api-Token: <PICTRS__SERVER__API_KEY>``; 401 on a wrong key;
every error body is ``{"msg": .., "code": ..}``.

The API key never appears in messages, reprs or the cache.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Iterable

from fsq.config import mask_url
from fsq.errors import ExternalError
from fsq.ledger.db import transaction
from fsq.timeutil import iso

VIA_API = "pictrs-api"
VIA_REPO = "pictrs-repo"


class PictrsApi:
    """Minimal pict-rs internal API client (urllib; no extra dependency)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ExternalError(f"FSQ_PICTRS_URL {mask_url(base_url)!r} must start with "
                                "http:// or https://")
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.timeout = timeout
        # Never follow redirects: the token header would go along to wherever they point.
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        return f"PictrsApi({mask_url(self.base_url)!r})"

    # -- transport --------------------------------------------------------------------------

    def _call(self, method: str, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        url = self.base_url + path + "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                     headers={"X-Api-Token": self._key,
                                              "Accept": "application/json",
                                              "User-Agent": "fsq"})
        where = f"pict-rs at {mask_url(self.base_url)}"
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status, body = resp.status, resp.read(1_000_000)
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read(100_000) if exc.fp else b""
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ExternalError(f"{where} is unreachable ({reason}); check FSQ_PICTRS_URL and "
                                "that pict-rs is running") from None
        try:
            data = json.loads(body.decode("utf-8", errors="replace")) if body else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if status == 401:
            raise ExternalError(f"{where} rejected the API key (401); set FSQ_PICTRS_API_KEY to "
                                "pict-rs's PICTRS__SERVER__API_KEY")
        if status == 404 and "/internal/" in path and not data:
            # No internal API at all answers 404 without pict-rs's JSON error body.
            raise ExternalError(f"{where}: {path} not found; is PICTRS__SERVER__API_KEY set on "
                                "pict-rs (internal endpoints exist only then)?")
        return status, data

    def _error(self, path: str, status: int, data: dict[str, Any]) -> ExternalError:
        msg = str(data.get("msg", ""))[:200]
        code = str(data.get("code", ""))[:60]
        detail = f"{msg} ({code})" if code else msg or "no error body"
        return ExternalError(f"pict-rs {path} answered HTTP {status}: {detail}")

    # -- endpoints ---------------------------------------------------------------------------

    def identifier(self, alias: str) -> str | None:
        """Identifier of the original behind ``alias``; None if pict-rs does not know it."""
        path = "/internal/identifier"
        status, data = self._call("GET", path, {"alias": alias})
        if status == 404:
            return None
        if status != 200 or not isinstance(data.get("identifier"), str):
            raise self._error(path, status, data)
        return data["identifier"]

    def aliases(self, alias: str) -> list[str] | None:
        """Every alias of the same hash; None if pict-rs does not know ``alias``."""
        path = "/internal/aliases"
        status, data = self._call("GET", path, {"alias": alias})
        if status == 404:
            return None
        if status != 200 or not isinstance(data.get("aliases"), list):
            raise self._error(path, status, data)
        return [str(a) for a in data["aliases"]]

    def purge(self, alias: str) -> list[str]:
        """Delete the hash behind ``alias`` with every alias and file (for `fsq purge`)."""
        path = "/internal/purge"
        status, data = self._call("POST", path, {"alias": alias})
        if status == 404:
            return []
        if status != 200:
            raise self._error(path, status, data)
        got = data.get("aliases")
        return [str(a) for a in got] if isinstance(got, list) else [alias]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        return None


# --- the identifier -> alias cache (state DB table identifier_aliases) -------------------------

def cache_get(state: sqlite3.Connection, identifiers: Iterable[str]) -> dict[str, list[str]]:
    """identifier -> aliases already learnt (by any route)."""
    out: dict[str, list[str]] = {}
    for ident in dict.fromkeys(identifiers):
        rows = state.execute("SELECT alias FROM identifier_aliases WHERE identifier = ? "
                             "ORDER BY alias", (ident,)).fetchall()
        if rows:
            out[ident] = [r[0] for r in rows]
    return out


def cache_put(state: sqlite3.Connection, pairs: Iterable[tuple[str, str]], via: str) -> int:
    """Remember (identifier, alias) pairs; returns how many were new."""
    pairs = list(pairs)
    if not pairs:
        return 0
    now = iso()
    n = 0
    with transaction(state):
        for ident, alias in pairs:
            cur = state.execute("INSERT OR IGNORE INTO identifier_aliases "
                                "(identifier, alias, learnt_at, via) VALUES (?,?,?,?)",
                                (ident, alias, now, via))
            n += cur.rowcount
    return n


def known_aliases(state: sqlite3.Connection) -> set[str]:
    return {r[0] for r in state.execute("SELECT alias FROM identifier_aliases")}


def build_identifier_map(state: sqlite3.Connection, api: PictrsApi, aliases: Iterable[str],
                         progress: Callable[[int, int], None] | None = None,
                         batch: int = 200) -> dict[str, int]:
    """Ask pict-rs for the identifier of every alias not cached yet, and cache the answers.

    Returns counts: asked, learnt, unknown (pict-rs has no such alias), cached (skipped).
    Stops at the first transport or auth error (raised as ExternalError) after saving what it
    learnt so far.
    """
    have = known_aliases(state)
    wanted = list(dict.fromkeys(aliases))
    todo = [a for a in wanted if a not in have]
    counts = {"asked": 0, "learnt": 0, "unknown": 0, "cached": len(wanted) - len(todo)}
    pending: list[tuple[str, str]] = []
    try:
        for i, alias in enumerate(todo, 1):
            ident = api.identifier(alias)
            counts["asked"] += 1
            if ident is None:
                counts["unknown"] += 1
            else:
                pending.append((ident, alias))
            if len(pending) >= batch:
                counts["learnt"] += cache_put(state, pending, VIA_API)
                pending = []
            if progress:
                progress(i, len(todo))
    finally:
        counts["learnt"] += cache_put(state, pending, VIA_API)
    return counts
