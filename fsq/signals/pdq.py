"""PDQ: Meta's 256-bit perceptual hash, computed by ``pdqhash`` (a binding of Meta's reference
C++ from PyPI, the same library python-threatexchange and HMA use).

Why the binding and not our own numpy port: the hash must agree with hashes other platforms
computed (imported lists), and the reference code is the definition; a port would need its own
proof of equality for every corner (Jarosz filter window rounding, float order in the DCT,
median ties). The binding builds from source at install (C++ compiler needed, about 10 s); it
is the ``pdq`` extra, part of ``all``. Without it fsq still matches exact hashes, and says that
PDQ is off (``available()``).

Input is a frame the pipeline already decoded (fsq.media): RGB, shrunk to fit 512x512 like the
reference hasher does before hashing (the hash depends on that step). Measured on Meta's
reference photos (tests/test_signals_pdq.py): within 10 bits of the reference hashes.

Quality is 0..100 from the image's gradients; hashes below ``MIN_QUALITY`` (flat or nearly flat
images, whose hashes are near each other whatever the picture) are never used for matching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_QUALITY = 50
BITS = 256

try:  # optional extra: fsq[pdq]
    import pdqhash as _pdqhash
except ImportError:  # pragma: no cover - depends on the install
    _pdqhash = None


def available() -> bool:
    return _pdqhash is not None


@dataclass(frozen=True)
class FrameHash:
    frame: int          # index of the frame in the file (0 for a still)
    pdq: str            # 64 lowercase hex digits
    quality: int        # 0..100

    @property
    def usable(self) -> bool:
        return self.quality >= MIN_QUALITY

    def to_json(self) -> dict[str, Any]:
        return {"frame": self.frame, "pdq": self.pdq, "quality": self.quality}


def hash_image(img: Any) -> tuple[str, int]:
    """(hex, quality) of one RGB PIL image (already shrunk to fit 512x512)."""
    if _pdqhash is None:
        raise RuntimeError("PDQ needs the pdqhash package: pip install 'fsq[pdq]'")
    if img.mode != "RGB":
        img = img.convert("RGB")
    bits, quality = _pdqhash.compute(np.ascontiguousarray(np.asarray(img, dtype=np.uint8)))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


def hash_frames(frames: list[Any], indices: list[int] | None = None) -> list[FrameHash]:
    """PDQ of each decoded frame; [] when pdqhash is not installed."""
    if _pdqhash is None:
        return []
    idx = indices if indices and len(indices) == len(frames) else list(range(len(frames)))
    out = []
    for i, fr in zip(idx, frames):
        h, q = hash_image(fr)
        out.append(FrameHash(int(i), h, q))
    return out


def to_bytes(hex_value: str) -> bytes:
    b = bytes.fromhex(hex_value)
    if len(b) != BITS // 8:
        raise ValueError(f"a PDQ hash is {BITS // 4} hex digits, got {len(hex_value)}")
    return b


def distance(a: str, b: str) -> int:
    """Hamming distance of two hex PDQ hashes."""
    return int.from_bytes(to_bytes(a), "big").__xor__(
        int.from_bytes(to_bytes(b), "big")).bit_count()
