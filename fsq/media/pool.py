"""Decoding where a runaway can be stopped: a pool of worker processes (issue 11).

A hostile file can make a decoder spin (1,500 GIF frames composited on a 7999x7999 screen
took 275 s) or allocate without bound. In a thread it cannot be stopped; in a process it
can. ``DecodePool.decode`` sends the bytes to an idle worker (fsq.media.worker), watches the
worker's CPU time (``/proc/PID/stat``: every thread of the process) while it waits, and
SIGKILLs it when it has used ``cpu_seconds`` (FSQ_DECODE_SECONDS) for this file, or when
``cpu_seconds + wall_grace`` (1.5 s) seconds have passed (a starved machine, a worker blocked
in a way that uses no CPU); with the kill itself, no file holds a caller for more than its
budget + 2 s. The file is then ``Unreadable(kind='budget')`` with the facts the
worker had reported (size, frame count), and the next decode starts a fresh worker.

Invariants:

* A worker holds one file at a time; a killed worker loses nothing but that decode.
* At most ``workers`` decodes run at once; callers beyond that wait for a slot (so a bomb
  costs one worker for its budget, never the whole pool, unless every worker holds one).
* A worker that dies on its own (a decoder crash) is ``Unreadable`` for that file only.
* Frames come back as raw RGB bytes, not pickles: small (at most ``max_frames`` x fit x fit x
  3) and nothing in them is executed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from fsq.media.budget import DecodeRequest
from fsq.media.decode import Decoded, Unreadable

log = logging.getLogger("fsq.media")

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_POLL_S = 0.05


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (all its threads), or None off Linux."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


class _Stopped(Exception):
    def __init__(self, why: str, facts: dict[str, Any]) -> None:
        super().__init__(why)
        self.why = why
        self.facts = facts


class _Worker:
    def __init__(self) -> None:
        parent, child = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fsq.media.worker", str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, close_fds=True)
        finally:
            child.close()
        self.conn = Connection(parent.detach())

    def run(self, data: bytes, req: DecodeRequest, cpu_budget: float, wall_limit: float
            ) -> Decoded:
        try:
            self.conn.send_bytes(json.dumps({"req": req.to_json()}).encode())
            self.conn.send_bytes(data)
        except OSError:
            raise _Stopped("crashed", {}) from None
        t0 = time.monotonic()
        cpu0 = _cpu_seconds(self.proc.pid) or 0.0
        facts: dict[str, Any] = {}
        while True:
            try:
                ready = self.conn.poll(_POLL_S)
                if ready:
                    msg = json.loads(self.conn.recv_bytes())
                    if msg["type"] == "facts":
                        facts = msg
                        continue
                    return self._result(msg)
            except (EOFError, OSError):
                raise _Stopped("crashed", facts) from None
            cpu = _cpu_seconds(self.proc.pid)
            used = (cpu - cpu0) if cpu is not None else time.monotonic() - t0
            if used >= cpu_budget:
                raise _Stopped("cpu", {**facts, "cpu_seconds": round(used, 2)})
            if time.monotonic() - t0 >= wall_limit:
                raise _Stopped("wall", {**facts, "cpu_seconds": round(used, 2)})

    def _result(self, msg: dict[str, Any]) -> Decoded:
        if msg["type"] == "unreadable":
            raise Unreadable(msg["reason"], msg.get("media_type"), kind=msg.get("kind", ""),
                             facts=msg.get("facts") or {})
        frames = []
        for w, h in msg["frames"]:
            raw = self.conn.recv_bytes()
            if len(raw) != w * h * 3:
                raise _Stopped("crashed", {})
            frames.append(Image.frombuffer("RGB", (w, h), raw, "raw", "RGB", 0, 1))
        return Decoded.from_meta(msg, frames)

    def kill(self, wait: bool = True) -> None:
        try:
            self.proc.send_signal(signal.SIGKILL)
        except OSError:
            pass
        self.conn.close()
        if wait:
            self.proc.wait()
        else:  # tearing down a big address space takes a while: answer first, reap after
            threading.Thread(target=self.proc.wait, name="fsq-decode-reap",
                             daemon=True).start()

    def close(self) -> None:
        self.conn.close()  # the worker sees EOF and exits
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


def budget_message(why: str, facts: dict[str, Any], cpu_budget: float, wall: float) -> str:
    n, w, h = facts.get("n_frames"), facts.get("width"), facts.get("height")
    what = (f"{n} frames on {w}x{h}" if n and n > 1 else f"{w}x{h}" if w and h
            else "decoding")
    if why == "cpu":
        return (f"budget: {what}: stopped after {cpu_budget:g} s of CPU "
                "(FSQ_DECODE_SECONDS)")
    return (f"budget: {what}: stopped after {wall:g} s without finishing "
            "(FSQ_DECODE_SECONDS + grace)")


class DecodePool:
    """Thread-safe: call ``decode`` from any number of threads; ``close`` when done."""

    def __init__(self, workers: int = 2, cpu_seconds: float = 10.0,
                 wall_grace: float = 1.5) -> None:
        self.workers = max(1, workers)
        self.cpu_seconds = cpu_seconds
        self.wall_limit = cpu_seconds + wall_grace
        self._slots = threading.BoundedSemaphore(self.workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._closed = False
        self.stats = {"decodes": 0, "budget_cpu": 0, "crashes": 0, "started": 0}

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("decode pool is closed")
            if self._idle:
                return self._idle.pop()
            self.stats["started"] += 1
        return _Worker()

    def _give(self, w: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(w)
                return
        w.close()

    def decode(self, data: bytes, req: DecodeRequest | None = None) -> Decoded:
        req = req or DecodeRequest()
        with self._slots:
            w = self._take()
            try:
                d = w.run(data, req, self.cpu_seconds, self.wall_limit)
            except Unreadable:
                self._give(w)
                raise
            except _Stopped as s:
                w.kill(wait=s.why == "crashed")
                with self._lock:
                    self.stats["decodes"] += 1
                    self.stats["crashes" if s.why == "crashed" else "budget_cpu"] += 1
                if s.why == "crashed":
                    code = w.proc.returncode
                    raise Unreadable(f"the decoder crashed on this file (exit {code})",
                                     s.facts.get("media_type"), facts=s.facts) from None
                log.warning("decode worker %d stopped: %s", w.proc.pid, s.why)
                raise Unreadable(budget_message(s.why, s.facts, self.cpu_seconds,
                                                self.wall_limit),
                                 s.facts.get("media_type"), kind="budget",
                                 facts={**s.facts, "budget": "cpu"}) from None
            except BaseException:
                w.kill()
                raise
            with self._lock:
                self.stats["decodes"] += 1
            self._give(w)
            return d

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for w in idle:
            w.close()

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
