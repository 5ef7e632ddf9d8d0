"""Signals of one file given as bytes (``fsq hashes compute`` / ``fsq hashes add FILE``):
the same hashing and decoding the scanner does, so a hash computed here matches the scanner's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fsq.media import Unreadable, decode, hashes
from fsq.signals import pdq
from fsq.signals.pdq import FrameHash


@dataclass
class FileSignals:
    sha256: str
    md5: str
    media_type: str | None = None
    frames: list[FrameHash] = field(default_factory=list)
    unreadable: str | None = None    # why no PDQ could be computed

    def to_json(self, name: str) -> dict[str, Any]:
        return {"file": name, "sha256": self.sha256, "md5": self.md5,
                "media_type": self.media_type,
                "pdq": [f.to_json() for f in self.frames], "unreadable": self.unreadable}


def file_signals(data: bytes, *, max_pixels: int = 64_000_000) -> FileSignals:
    sha, md5 = hashes(data)
    out = FileSignals(sha, md5)
    if not pdq.available():
        out.unreadable = "PDQ not available: install fsq[pdq] (the pdqhash package)"
        return out
    try:
        d = decode(data, max_pixels=max_pixels)
    except Unreadable as exc:
        out.media_type, out.unreadable = exc.media_type, exc.reason
        return out
    out.media_type = d.media_type
    out.frames = pdq.hash_frames(d.frames, d.sampled)
    return out
