"""The decode worker process: ``python -m fsq.media.worker FD`` (started by fsq.media.pool).

It decodes one file at a time and owns its process, so Pillow's process-global switches are
per call here (fsq.media.decode). It holds no secrets, no database and no model: only the
bytes it is sent. It can be killed at any moment without losing anything.

Wire protocol over the socket FD (``multiprocessing.connection`` framing, no pickle: a
hostile peer is not a concern here, but JSON and raw bytes keep the messages small and the
frames uncopied):

    parent -> worker   JSON {"req": DecodeRequest}, then the file's bytes
    worker -> parent   JSON {"type": "facts", media_type, width, height, n_frames}   (0 or 1)
                       JSON {"type": "ok", ...Decoded meta, "frames": [[w, h], ...]}
                            then one message per frame: its RGB bytes (w * h * 3)
                    or JSON {"type": "unreadable", reason, media_type, kind, facts}
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import sys
from multiprocessing.connection import Connection

# Address-space ceiling of a worker: far above what FSQ_MAX_PIXELS allows one frame to need
# (64 MP RGBA is 256 MB), so only a decoder gone wrong meets it; it then gets MemoryError
# (-> unreadable) instead of pushing the host into swap or the OOM killer.
ADDRESS_SPACE_BYTES = 3 * 1024 ** 3


def _limit_memory() -> None:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = ADDRESS_SPACE_BYTES if hard == resource.RLIM_INFINITY else min(
            hard, ADDRESS_SPACE_BYTES)
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ValueError, OSError):
        pass


def serve(conn: Connection) -> None:
    from fsq.media.budget import DecodeRequest
    from fsq.media.decode import Unreadable, decode

    def send(msg: dict) -> None:
        conn.send_bytes(json.dumps(msg).encode())

    while True:
        try:
            head = json.loads(conn.recv_bytes())
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent closed the socket or went away
        req = DecodeRequest.from_json(head["req"])
        try:
            d = decode(data, req, on_facts=lambda f: send({"type": "facts", **f}))
        except Unreadable as exc:
            send({"type": "unreadable", "reason": exc.reason, "media_type": exc.media_type,
                  "kind": exc.kind, "facts": exc.facts})
            continue
        except Exception as exc:  # a bug or a decoder failure we did not foresee
            send({"type": "unreadable", "reason": f"decoder failed: {exc.__class__.__name__}",
                  "media_type": None, "kind": "undecodable", "facts": {}})
            continue
        frames = [f if f.mode == "RGB" else f.convert("RGB") for f in d.frames]
        send({"type": "ok", **d.meta(), "frames": [list(f.size) for f in frames]})
        for f in frames:
            conn.send_bytes(f.tobytes())


def main(argv: list[str]) -> int:
    # The parent decides when we stop (it closes the socket; we see EOF). A Ctrl-C or a
    # service manager's SIGTERM to the whole group must not kill a worker mid-file: the pool
    # would take that for a decoder crash and record the file as unreadable.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _limit_memory()
    sock = socket.socket(fileno=int(argv[1]))
    conn = Connection(sock.detach())
    try:
        serve(conn)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
