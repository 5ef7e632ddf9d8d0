"""Who may use the console: a one-time login token, one session cookie, CSRF tokens, idle lock.

* At start the console mints a random one-time login token (256 bits) that the CLI prints as
  a URL. Visiting it once creates a session; the token is then spent. A second visit is
  refused. Only the token's SHA-256 is kept, and it is compared in constant time.
* A session is a random id in an ``HttpOnly; SameSite=Strict; Path=/`` cookie (``Secure`` when
  the console is reached through TLS, i.e. with --allow-remote). Only one session exists at a
  time: logging in again ends the previous one.
* Every state-changing request is a POST carrying the session's CSRF token (a form field or
  the ``X-CSRF-Token`` header); a missing or wrong one is refused before anything runs.
* A session idle for ``idle_seconds`` locks: it is destroyed, and a fresh one-time login token
  is minted and handed to ``announce`` (the CLI prints the new URL on the console's terminal).
* Per session, the highest preview level the reviewer stepped up to for each incident; the
  preview endpoint never serves more than that (one step per click).

Clock: ``time.monotonic`` (injectable for tests).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

COOKIE = "fsq_review"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass
class Session:
    sid_digest: bytes = field(repr=False)
    csrf: str = field(repr=False)
    created: float
    last_seen: float
    unblurred_views: int = 0
    levels: dict[int, int] = field(default_factory=dict)   # incident id -> allowed level


class Sessions:
    def __init__(self, idle_seconds: float, *, clock: Callable[[], float] = time.monotonic,
                 announce: Callable[[str], None] | None = None) -> None:
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.announce = announce or (lambda token: None)
        self._lock = threading.Lock()
        self._login: bytes | None = None
        self._session: Session | None = None
        self._locked: list[bytes] = []      # digests of sessions that locked (last few)

    # --- login ---------------------------------------------------------------------------------

    def new_login_token(self) -> str:
        """Mint the (only) valid one-time login token; any earlier unused one is void."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._login = _digest(token)
        return token

    def login(self, token: str | None) -> tuple[str, Session] | None:
        """Spend the login token; returns (session id for the cookie, session) or None."""
        if not token:
            return None
        with self._lock:
            want = self._login
            if want is None or not hmac.compare_digest(_digest(token), want):
                return None
            self._login = None
            sid = secrets.token_urlsafe(32)
            now = self.clock()
            self._session = Session(_digest(sid), secrets.token_urlsafe(32), now, now)
            return sid, self._session

    def logout(self) -> None:
        with self._lock:
            self._session = None
        self.announce(self.new_login_token())

    # --- per request ---------------------------------------------------------------------------

    def lookup(self, sid: str | None) -> tuple[Session | None, bool]:
        """(session, locked). A valid, non-idle session is touched (idle clock restarts).
        An idle one is destroyed and a new login token is announced (once); its cookie keeps
        getting ``locked`` answers."""
        if not sid:
            return None, False
        d = _digest(sid)
        with self._lock:
            s = self._session
            if s is None or not hmac.compare_digest(d, s.sid_digest):
                return None, any(hmac.compare_digest(d, x) for x in self._locked)
            now = self.clock()
            if now - s.last_seen <= self.idle_seconds:
                s.last_seen = now
                return s, False
            self._session = None
            self._locked = (self._locked + [d])[-8:]
        self.announce(self.new_login_token())
        return None, True

    @staticmethod
    def csrf_ok(session: Session, supplied: str | None) -> bool:
        return bool(supplied) and hmac.compare_digest(
            supplied.encode("utf-8", "surrogatepass"), session.csrf.encode())
