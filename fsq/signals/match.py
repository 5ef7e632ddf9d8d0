"""Matching content against the banks: what the scanner and ``fsq serve`` call.

Order in a scan (ARCHITECTURE.md data flow): exact hashes right after sha256/md5
(``exact_match``, in fsq.pipeline.precheck), PDQ of the decoded frames right before the model
(``check_decoded``). Rules, chosen so that a hostile file cannot buy its way past the model:

* unsafe bank: any usable frame (quality >= 50) within ``distance`` (FSQ_PDQ_DISTANCE, 31)
  of an entry -> flagged, method ``pdq``, naming bank, entry, distance. Unsafe wins over safe:
  a file near both is evidence first, and a person can release it.
* safe bank: clean without the model only if EVERY sampled frame is usable and within
  ``safe_distance`` (FSQ_PDQ_SAFE_DISTANCE, 10) of a safe entry; one frame of a logo inside an
  animation vouches for nothing else. A safe match is a shortcut past the model, so its
  threshold is strict; PDQ is not collision-resistant against a determined attacker, see
  docs/signals.md.
* exact: sha256 in an unsafe bank, or md5 / video_md5 in an unsafe bank -> flagged (method
  ``sha256`` / ``md5``); sha256 in a safe bank -> clean. MD5 never vouches (fsq.signals.banks).

The PDQ index is loaded once and reloaded only when the banks' PDQ entries change
(``PdqMatcher.refresh``, a cheap count/max query), so a daemon picks up new entries each pass.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from fsq.ledger.state import VerdictRecord
from fsq.signals import pdq
from fsq.signals.index import PdqIndex
from fsq.signals.pdq import FrameHash

log = logging.getLogger("fsq.signals")

DEFAULT_DISTANCE = 31
DEFAULT_SAFE_DISTANCE = 10


def exact_match(conn: sqlite3.Connection, sha256: str, md5: str) -> VerdictRecord | None:
    rows = conn.execute(
        "SELECT s.id, s.bank, s.signal_type, s.signal_value, b.kind FROM bank_signals s "
        "JOIN banks b ON b.name = s.bank WHERE (s.signal_type='sha256' AND s.signal_value=?) "
        "OR (s.signal_type IN ('md5','video_md5') AND s.signal_value=? AND b.kind='unsafe') "
        "ORDER BY b.kind = 'unsafe' DESC, s.signal_type = 'sha256' DESC, s.id",
        (sha256, md5)).fetchall()
    if not rows:
        return None
    r = rows[0]
    method = "sha256" if r["signal_type"] == "sha256" else "md5"
    details = {"bank": r["bank"], "bank_kind": r["kind"], "signal_type": r["signal_type"],
               "matched": r["signal_value"], "entry_id": r["id"], "distance": 0}
    if r["kind"] == "unsafe":
        return VerdictRecord("flagged", method,
                             f"{r['signal_type']} in bank '{r['bank']}' (entry {r['id']})",
                             details=details)
    return VerdictRecord("clean", method, f"sha256 in safe bank '{r['bank']}' "
                                          f"(entry {r['id']})", details=details)


@dataclass(frozen=True)
class Hit:
    bank: str
    kind: str
    entry_id: int
    matched: str
    distance: int
    frame: FrameHash


class _Side:
    """The PDQ entries of one kind of bank, indexed."""

    def __init__(self, hashes: np.ndarray, ids: np.ndarray, banks: list[str],
                 bank_codes: np.ndarray) -> None:
        self.index = PdqIndex(hashes)
        self.hashes = hashes
        self.ids = ids
        self.banks = banks
        self.bank_codes = bank_codes

    def nearest(self, frame: FrameHash, radius: int, kind: str) -> Hit | None:
        r = self.index.nearest(pdq.to_bytes(frame.pdq), radius)
        if r is None:
            return None
        row, d = r
        return Hit(self.banks[int(self.bank_codes[row])], kind, int(self.ids[row]),
                   self.hashes[row].tobytes().hex(), d, frame)


def _load(conn: sqlite3.Connection) -> tuple[_Side, _Side]:
    """Every usable PDQ entry, split by bank kind. A full table scan with plain tuples, read in
    chunks so that memory stays near the index's own 32 bytes per entry: at 10^6 entries
    about 3 s (reading through the index would be 3x slower)."""
    kinds = {r[0]: r[1] for r in conn.execute("SELECT name, kind FROM banks")}
    cur = conn.cursor()
    cur.row_factory = None
    cur.execute("SELECT id, bank, signal_value, quality FROM bank_signals NOT INDEXED "
                "WHERE signal_type='pdq'")
    acc: dict[str, tuple[list[int], list[int], list[bytes], dict[str, int]]] = {
        k: ([], [], [], {}) for k in ("unsafe", "safe")}
    while True:
        chunk = cur.fetchmany(50_000)
        if not chunk:
            break
        for kind, (ids, codes, raw, names) in acc.items():
            mine = [r for r in chunk if kinds.get(r[1]) == kind
                    and (r[3] is None or r[3] >= pdq.MIN_QUALITY)]
            try:
                block = bytes.fromhex("".join(r[2] for r in mine))
                if len(block) != 32 * len(mine):
                    raise ValueError
            except (ValueError, TypeError):
                # Imports are validated; a malformed value means the database was edited by
                # hand. Skip those rows rather than stop every scan.
                mine = [r for r in mine if _valid_hex(r[2])]
                log.warning("skipping malformed PDQ values in bank_signals")
                block = bytes.fromhex("".join(r[2] for r in mine))
            ids.extend(r[0] for r in mine)
            codes.extend(names.setdefault(r[1], len(names)) for r in mine)
            raw.append(block)
    sides = []
    for kind in ("unsafe", "safe"):
        ids, codes, raw, names = acc[kind]
        hashes = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(-1, 32)
        sides.append(_Side(hashes, np.array(ids, dtype=np.int64),
                           list(names), np.array(codes, dtype=np.int32)))
    return sides[0], sides[1]


def _valid_hex(value: object) -> bool:
    try:
        return isinstance(value, str) and len(bytes.fromhex(value)) == 32
    except ValueError:
        return False


def _signature(conn: sqlite3.Connection) -> int:
    """Changes with every insert, delete or update of a bank entry (schema triggers)."""
    return int(conn.execute("SELECT generation FROM bank_generation").fetchone()[0])


class PdqMatcher:
    """The PDQ entries of every bank, for lookups from any thread (the index is immutable;
    ``refresh`` swaps in a new one)."""

    def __init__(self, distance: int = DEFAULT_DISTANCE,
                 safe_distance: int = DEFAULT_SAFE_DISTANCE) -> None:
        self.distance = distance
        self.safe_distance = safe_distance
        self._sig: int | None = None
        self._sides: tuple[_Side, _Side] | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, conn: sqlite3.Connection, distance: int = DEFAULT_DISTANCE,
             safe_distance: int = DEFAULT_SAFE_DISTANCE) -> "PdqMatcher":
        m = cls(distance, safe_distance)
        m.refresh(conn)
        return m

    def refresh(self, conn: sqlite3.Connection) -> None:
        sig = _signature(conn)
        if sig == self._sig:
            return
        with self._lock:
            sides = _load(conn)
            self._sides, self._sig = sides, sig
        log.debug("PDQ banks loaded: %d unsafe, %d safe entries", len(sides[0].index),
                  len(sides[1].index))

    @property
    def size(self) -> int:
        return 0 if self._sides is None else sum(len(s.index) for s in self._sides)

    def match(self, frames: list[FrameHash], *, safe: bool = True) -> Hit | None:
        """The deciding hit for a file's frames (rules in the module docstring), or None."""
        sides = self._sides
        if sides is None or not frames:
            return None
        unsafe, safe_side = sides
        best: Hit | None = None
        for f in frames:
            if not f.usable:
                continue
            h = unsafe.nearest(f, self.distance, "unsafe")
            if h is not None and (best is None or h.distance < best.distance):
                best = h
        if best is not None or not safe or len(safe_side.index) == 0:
            return best
        worst: Hit | None = None
        for f in frames:
            h = safe_side.nearest(f, self.safe_distance, "safe") if f.usable else None
            if h is None:
                return None
            if worst is None or h.distance > worst.distance:
                worst = h
        return worst


def hit_verdict(hit: Hit, matcher: PdqMatcher, n_frames: int) -> VerdictRecord:
    threshold = matcher.distance if hit.kind == "unsafe" else matcher.safe_distance
    details = {"bank": hit.bank, "bank_kind": hit.kind, "signal_type": "pdq",
               "matched": hit.matched, "entry_id": hit.entry_id, "distance": hit.distance,
               "threshold": threshold, "frame": hit.frame.frame, "pdq": hit.frame.pdq,
               "quality": hit.frame.quality, "frames_hashed": n_frames}
    if hit.kind == "unsafe":
        return VerdictRecord("flagged", "pdq", f"PDQ {hit.distance} bits from entry "
                             f"{hit.entry_id} of bank '{hit.bank}' (<= {threshold})",
                             details=details)
    return VerdictRecord("clean", "pdq", f"PDQ {hit.distance} bits from entry {hit.entry_id} "
                         f"of safe bank '{hit.bank}' (<= {threshold}) on every frame",
                         details=details)


def check_decoded(matcher: PdqMatcher | None, decoded: Any
                  ) -> tuple[list[FrameHash], VerdictRecord | None]:
    """PDQ of the frames the pipeline decoded, and the bank verdict if one decides. Runs on a
    worker thread (no database access)."""
    if not pdq.available():
        _warn_no_pdq()
    frames = pdq.hash_frames(decoded.frames, decoded.sampled)
    return frames, match_frames(matcher, frames, decoded)


def match_frames(matcher: PdqMatcher | None, frames: list[FrameHash], decoded: Any
                 ) -> VerdictRecord | None:
    """The bank verdict for PDQ hashes computed elsewhere (``check_decoded``, or a Ray worker:
    fsq.engine.ray_tasks), if one decides. ``decoded`` needs no frames, only its facts."""
    if matcher is None:
        return None
    # A file only partly examined (issue 11a: ``Decoded.incomplete``, e.g. a pixel budget
    # reached) can still be flagged by a frame, but never vouched for by the safe bank.
    hit = matcher.match(frames, safe=not getattr(decoded, "incomplete", None))
    if hit is None:
        return None
    v = hit_verdict(hit, matcher, len(frames))
    v.media_type, v.width, v.height, v.frames = (decoded.media_type, decoded.width,
                                                 decoded.height, decoded.n_frames)
    return v


_warned: list[bool] = []


def _warn_no_pdq() -> None:
    if not _warned:
        _warned.append(True)
        log.warning("PDQ is off (the pdqhash package is not installed: pip install "
                    "'fsq[pdq]'): only exact hashes are matched against the hash banks")


def store_pdq(conn: sqlite3.Connection, sha256: str, frames: list[FrameHash]) -> None:
    """Record the PDQ of each frame of a content hash (writer thread)."""
    conn.executemany("INSERT OR REPLACE INTO content_pdq (sha256, frame, pdq, quality) "
                     "VALUES (?,?,?,?)", [(sha256, f.frame, f.pdq, f.quality) for f in frames])


def stored_frames(conn: sqlite3.Connection, sha256: str) -> list[FrameHash]:
    return [FrameHash(r["frame"], r["pdq"], r["quality"]) for r in conn.execute(
        "SELECT frame, pdq, quality FROM content_pdq WHERE sha256=? ORDER BY frame",
        (sha256,)) if _valid_hex(r["pdq"]) and isinstance(r["quality"], int)]


def find_rematches(conn: sqlite3.Connection, matcher: PdqMatcher
                   ) -> list[tuple[sqlite3.Row, VerdictRecord]]:
    """Objects whose latest outcome is clean and whose content now matches an unsafe bank,
    by stored PDQ or exact hash: no download, no decode. [(object row, verdict)]."""
    out = []
    cache: dict[str, VerdictRecord | None] = {}
    for o in conn.execute("SELECT o.*, v.media_type AS v_media, v.width AS v_w, "
                          "v.height AS v_h, v.frames AS v_frames FROM objects o "
                          "LEFT JOIN verdicts v ON v.id = o.verdict_id "
                          "WHERE o.status='clean' AND o.sha256 IS NOT NULL ORDER BY o.id"
                          ).fetchall():
        sha = o["sha256"]
        if sha not in cache:
            v = exact_match(conn, sha, o["md5"] or "")
            if v is None or v.outcome != "flagged":
                frames = stored_frames(conn, sha)
                hit = matcher.match(frames, safe=False)
                v = hit_verdict(hit, matcher, len(frames)) if hit is not None else None
            if v is not None:
                v.media_type, v.width, v.height, v.frames = (
                    o["v_media"] or o["media_type"], o["v_w"], o["v_h"], o["v_frames"])
                v.details = {**(v.details or {}), "rematch": True}
            cache[sha] = v
        if cache[sha] is not None:
            out.append((o, cache[sha]))
    return out
