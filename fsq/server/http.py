"""Shared Starlette/uvicorn plumbing that keeps an fsq HTTP server from being starved.

A validation endpoint that pict-rs waits on is only useful if a real upload is answered while
someone else holds connections open. uvicorn alone does not ensure that (checked against
uvicorn 0.54's source):

* its h11/httptools protocols time out *idle keep-alive* connections (``timeout_keep_alive``)
  but not a connection that never finishes its request headers, so half-open connections
  pile up until accept() fails with EMFILE;
* ``limit_concurrency`` counts every open connection, idle or half-open ones included, and
  answers 503 to the *next real request* once they fill it: it would turn a flood of idle
  connections into rejected uploads;
* nothing bounds how long a request body may take: 1 byte per second holds a handler for ever.

So fsq runs uvicorn with ``GuardedH11Protocol`` (a subclass of uvicorn's h11 protocol, made by
``guarded_protocol``) and reads bodies with ``read_body``:

* **Header timeout.** A connection must complete each request's headers within
  ``header_timeout`` seconds of connecting (or of the first byte of a later request on a
  kept-alive connection), else it is closed and counted (``header_timeout``).
* **Connection cap that keeps room for real uploads.** At most ``max_connections`` open
  connections. A new connection over the cap evicts the oldest connection that has not sent a
  request yet (then the oldest idle kept-alive one); only when every connection is busy with a
  request is the new one refused. Each eviction or refusal is counted (``over_capacity``).
  A connection counts as having sent a request as soon as a complete request head is in the
  kernel's receive buffer (MSG_PEEK), even if the event loop has not read it yet, so a server
  that lags behind a flood still evicts the half-open connections, never those requests.
  A flood of half-open connections therefore costs the attacker its own oldest connections,
  never a real upload's slot, and fds stay below the cap.
* **Body timeout.** ``read_body`` gives the whole body ``body_timeout`` seconds from the end of
  the headers; a slower one is answered 408 with ``Connection: close`` and counted
  (``slow_body``). Any answer sent before its request's body was fully received (401, 413,
  408, overload) closes the connection (a lingering close: see ``_fsq_linger_close``), so
  the rest of a body is never waited for. Bytes of bodies still arriving are bounded by a
  shared budget (``BodyBudget``), so many slow bodies cannot hold memory either.
* **File limit.** ``raise_nofile_limit`` lifts the soft RLIMIT_NOFILE towards the hard one at
  start, so the cap (plus the process's own files) fits.

Counters go to ``fsq.server.metrics.Metrics.dropped`` (``fsq_serve_dropped_total{kind=...}``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("fsq.serve")

#: File descriptors kept for the process itself (database, vault, model, threads, logs).
FD_RESERVE = 128


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    max_connections: int = 1024


# --- file limit --------------------------------------------------------------------------------

def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to at least ``wanted`` if the hard limit allows (never
    lower it); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft if soft != resource.RLIM_INFINITY else wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("raised the open-file limit from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as exc:  # pragma: no cover - depends on the system
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def fit_connections(max_connections: int) -> int:
    """The connection cap that fits the file limit (raised first if allowed), with a warning
    when it has to be lowered."""
    soft = raise_nofile_limit(max_connections + FD_RESERVE)
    fits = max(16, soft - FD_RESERVE)
    if fits < max_connections:
        log.warning("open-file limit %d leaves room for %d connections, not the %d asked for "
                    "(FSQ_SERVE_MAX_CONNECTIONS); raise `ulimit -n` / LimitNOFILE", soft, fits,
                    max_connections)
        return fits
    return max_connections


# --- request bodies ----------------------------------------------------------------------------

class BodyTimeout(Exception):
    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class BodyTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class BodyBudgetExceeded(Exception):
    """Bodies still arriving hold more bytes than the budget: this one is refused."""


class BodyBudget:
    """Bytes held by request bodies still being received, across all requests (event loop
    only, so no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise BodyBudgetExceeded()
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


async def read_body(request: Any, *, max_body: int, timeout: float,
                    budget: BodyBudget | None = None) -> bytes:
    """The whole request body within ``timeout`` seconds, at most ``max_body`` bytes.
    Raises BodyTimeout, BodyTooLarge, BodyBudgetExceeded or starlette's ClientDisconnect."""
    body = bytearray()
    held = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                if budget is not None and chunk:
                    budget.take(len(chunk))
                    held += len(chunk)
                body += chunk
                if len(body) > max_body:
                    raise BodyTooLarge(len(body))
    except TimeoutError:
        raise BodyTimeout(len(body)) from None
    finally:
        if budget is not None:
            budget.give(held)
    return bytes(body)


# --- the protocol --------------------------------------------------------------------------------

# Longest wait for a client to stop sending after an early answer (lingering close).
LINGER_S = 2.0


class _LingeringTransport:
    """The connection's transport, except that ``close()`` while the client is still sending
    a body we answered early (their h11 state SEND_BODY) becomes a lingering close (see
    GuardedH11Protocol._fsq_linger_close). A lingering connection counts as closing."""

    def __init__(self, real: Any, protocol: Any) -> None:
        self._real = real
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def is_closing(self) -> bool:
        return self._protocol._fsq_lingering or self._real.is_closing()

    def close(self) -> None:
        import h11
        p = self._protocol
        if (not p._fsq_lingering and not self._real.is_closing()
                and p.conn.their_state is h11.SEND_BODY):
            p._fsq_linger_close()
        elif not p._fsq_lingering:
            self._real.close()


#: Most bytes of a not-yet-read request head looked at (h11 refuses larger heads anyway).
_PEEK_HEAD = 65536


def _holds_unread_request(transport: Any) -> bool:
    """Whether the bytes the peer sent and we have not read yet already hold a complete
    request head (they end with the blank line), looked at with MSG_PEEK so nothing is
    consumed. False when nothing is waiting or the socket cannot be asked.

    Why: when the event loop lags behind a flood, many connections are accepted in one go and
    h11 sees every one as IDLE until its first read. Evicting by h11's state alone would take
    the oldest of them, which are the ones most likely to carry a real request; a connection
    whose unread bytes are only the start of a head is a half-open one like any other."""
    ts = transport.get_extra_info("socket")
    if ts is None:
        return False
    try:
        # A second socket object on the same descriptor, detached (never closed) after the
        # peek: asyncio's own socket object offers no recv().
        sock = socket.socket(fileno=ts.fileno())
    except (OSError, ValueError):
        return False
    try:
        head = sock.recv(_PEEK_HEAD, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:       # BlockingIOError: nothing waiting
        return False
    finally:
        sock.detach()
    return b"\r\n\r\n" in head


def guarded_protocol(limits: ConnectionLimits, count: Callable[[str], None]) -> type:
    """A uvicorn h11 protocol class with the header timeout and the connection cap above.
    ``count(kind)`` is called with 'header_timeout' or 'over_capacity' for each drop."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _limits = limits

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            self._fsq_lingering = False
            super().connection_made(transport)
            # uvicorn closes the transport itself after a "Connection: close" answer (408);
            # the wrapper turns that close into a lingering one while a body is unread.
            self.transport = _LingeringTransport(transport, self)
            self._fsq_since = self.loop.time()
            self._fsq_served = False           # has completed a request on this connection
            self._fsq_header_timer: asyncio.TimerHandle | None = None
            self._fsq_arm()
            self._fsq_enforce_cap()

        # -- header timeout --------------------------------------------------------------

        def _fsq_arm(self) -> None:
            if self._fsq_header_timer is None:
                self._fsq_header_timer = self.loop.call_later(self._limits.header_timeout,
                                                              self._fsq_header_timeout)

        def _fsq_disarm(self) -> None:
            if self._fsq_header_timer is not None:
                self._fsq_header_timer.cancel()
                self._fsq_header_timer = None

        def _fsq_header_timeout(self) -> None:
            self._fsq_header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            count("header_timeout")
            self.transport.close()

        def on_response_complete(self) -> None:
            self._fsq_served = True
            super().on_response_complete()
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                # Answered before the body was read (401, 413, 408, overload): close, or a
                # client trickling the rest would hold a busy connection (never evicted,
                # never timed out: uvicorn restarts keep-alive on every byte) for ever.
                self.transport.close()

        # -- lingering close ---------------------------------------------------------------
        # Closing a socket while the client's unread bytes sit in its receive buffer makes
        # the kernel answer with RST, and an RST can destroy the answer the client has not
        # read yet (the 408 a slow client is owed). So after such an answer: half-close (FIN
        # after the answer), read and drop what still arrives, close after LINGER_S at most.

        def _fsq_linger_close(self) -> None:
            if self._fsq_lingering:
                return
            self._fsq_lingering = True
            transport = self.transport._real
            try:
                if transport.can_write_eof():
                    transport.write_eof()
            except (OSError, RuntimeError):
                transport.close()
                return
            transport.resume_reading()
            self.loop.call_later(LINGER_S, transport.close)

        def data_received(self, data: bytes) -> None:
            if self._fsq_lingering:
                return  # the rest of a body that was already answered: drop it
            if self.conn.their_state is h11.IDLE:
                self._fsq_arm()  # a request starts: its headers have header_timeout
            H11Protocol.data_received(self, data)
            if self.conn.their_state is not h11.IDLE:
                self._fsq_disarm()  # headers complete; the body has read_body's timeout
            # Otherwise idle again: uvicorn's keep-alive timer runs; our header timer
            # restarts with the first byte of the next request (data_received).

        def connection_lost(self, exc: Exception | None) -> None:
            self._fsq_disarm()
            super().connection_lost(exc)

        # -- connection cap --------------------------------------------------------------

        def _fsq_idle(self) -> bool:
            """No request in progress as far as h11 knows (it may still be unread: see
            _fsq_enforce_cap)."""
            return (self.conn.their_state is h11.IDLE
                    and (self.cycle is None or self.cycle.response_complete))

        def _fsq_enforce_cap(self) -> None:
            live = [c for c in self.connections
                    if not c.transport.is_closing() and isinstance(c, GuardedH11Protocol)]
            if len(live) <= self._limits.max_connections:
                return
            idle = [c for c in live if c is not self and c._fsq_idle()]
            # Never-used connections first (a flood of half-open ones), oldest first; a
            # kept-alive idle connection only after those. One whose complete request head
            # waits unread in the kernel is not idle (the loop lagged): it is skipped, which
            # costs a peek only for the candidates before the victim.
            idle.sort(key=lambda c: (c._fsq_served, c._fsq_since))
            victim = next((c for c in idle if not _holds_unread_request(c.transport)), self)
            count("over_capacity")
            victim.transport.close()

    return GuardedH11Protocol


__all__ = ["BodyBudget", "BodyBudgetExceeded", "BodyTimeout", "BodyTooLarge",
           "ConnectionLimits", "FD_RESERVE", "fit_connections", "guarded_protocol",
           "raise_nofile_limit", "read_body"]
