"""Run the console under uvicorn (the same stack and socket handling as `fsq serve`).

Loopback only unless ``allow_remote``: the console shows evidence, so the default is that only
this machine can reach it (from elsewhere: ``ssh -L 8750:127.0.0.1:8750 host``). With
``allow_remote`` the operator must put TLS in front; the cookie is then marked Secure.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fsq.errors import UsageError
from fsq.review.app import Console, ConsoleOptions, allowed_hosts
from fsq.review.decisions import Lifecycle
from fsq.review.session import Sessions
from fsq.server.validate import bind_socket, is_loopback, split_listen

log = logging.getLogger("fsq.review")


def check_listen(listen: str, allow_remote: bool) -> tuple[str, int]:
    host, port = split_listen(listen)
    if not is_loopback(host) and not allow_remote:
        raise UsageError(f"refusing to listen on {listen}: the review console shows evidence. "
                         "Use 127.0.0.1 (from another machine: ssh -L 8750:127.0.0.1:8750), "
                         "or pass --allow-remote and put TLS in front of it")
    return host, port


def static_dir(settings: Any) -> Path:
    from fsq.reports.render import shipped_templates_dir
    user = getattr(settings, "templates_dir", None)
    if user and (Path(user).expanduser() / "review" / "review.js").is_file():
        return Path(user).expanduser() / "review"
    return shipped_templates_dir() / "review"


def login_url(host: str, port: int, token: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/login?token={token}"


@dataclass
class Running:
    console: Console
    sock: Any
    server: Any
    host: str
    port: int
    pool: Any = None

    def close(self) -> None:
        """Stop the decode workers (idempotent)."""
        if self.pool is not None:
            self.pool.close()

    def url(self, token: str) -> str:
        return login_url(self.host, self.port, token)


def build(conn: sqlite3.Connection, settings: Any, *, lifecycle: Lifecycle, reviewer: str,
          allow_remote: bool = False, announce: Callable[[str], None] | None = None,
          export_root: Path | None = None) -> Running:
    """Bind the socket and build the app and uvicorn server (not started yet)."""
    import uvicorn
    host, port = check_listen(settings.review_listen, allow_remote)
    sock = bind_socket(host, port)
    sock.listen(64)   # connections wait in the backlog until uvicorn accepts: the printed URL
    port = sock.getsockname()[1]   # works as soon as it is printed

    def announce_url(token: str) -> None:
        if announce is not None:
            announce(login_url(host, port, token))

    sessions = Sessions(settings.review_idle_minutes * 60.0, announce=announce_url)
    opts = ConsoleOptions(reviewer=reviewer, idle_seconds=settings.review_idle_minutes * 60.0,
                          blur=settings.review_blur, grayscale=settings.review_grayscale,
                          secure_cookie=allow_remote, max_pixels=settings.max_pixels,
                          budget_pixels=settings.decode_pixels,
                          export_root=export_root or Path("exports"))
    # Evidence is decoded in killable worker processes with the scan's budgets (previews.py);
    # workers start on the first preview.
    from fsq.media import DecodePool
    pool = DecodePool(min(2, settings.decode_workers), settings.decode_seconds)
    console = Console(conn, settings, opts, sessions=sessions, lifecycle=lifecycle,
                      static_dir=static_dir(settings), decoder=pool.decode)
    app = console.app(allowed_hosts(host, port, tuple(settings.review_allowed_hosts)))
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                            server_header=False, ws="none", proxy_headers=False,
                            timeout_keep_alive=30)
    return Running(console, sock, uvicorn.Server(config), host, port, pool)


def run(running: Running) -> None:
    """Serve until SIGINT/SIGTERM."""
    import signal
    fsq_log = logging.getLogger("fsq")
    uv = logging.getLogger("uvicorn")
    for h in fsq_log.handlers:
        uv.addHandler(h)
    uv.setLevel(logging.WARNING)
    uv.propagate = False
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        running.server.run(sockets=[running.sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        running.sock.close()
        running.close()
