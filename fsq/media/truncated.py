"""Truncated files: how much is missing, and bytes a decoder can still read (issue 11).

A JPEG whose last bytes are cut renders fully in browsers; if fsq called it unreadable and
skipped it, cutting two bytes would be a way to evade the scan. So a file whose data ends
early is decoded as far as it goes (Pillow's truncated mode, switched on per call by
fsq.media.decode) and classified, and the verdict carries ``truncated: ...`` with:

* ``missing_bytes_min``: a lower bound read from the file's structure (JPEG: no end-of-image
  marker after the last scan; PNG: the cut chunk's remaining length plus IEND; GIF: no
  trailer; WebP: exact, from the RIFF size).
* ``missing_bytes``: the best estimate: exact for WebP, else the lower bound plus the payload
  that the undecoded rows would have needed, in proportion to the decoded ones.
* ``damaged``: the structure ends properly, yet the strict decoder gave up inside (the
  reason then says ``damaged: ...``, not ``truncated``).
"""

from __future__ import annotations

import struct
from typing import Iterator

from PIL import Image


def missing_bytes_min(data: bytes, media_type: str | None) -> int:
    """A lower bound on the bytes missing at the end (0 = the structure looks complete)."""
    if media_type == "image/jpeg":
        sos, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
        return 2 if eoi < 0 or eoi < sos else 0
    if media_type in ("image/png", "image/apng"):
        return _png_missing(data)
    if media_type == "image/gif":
        return 0 if data.endswith(b";") else 1
    if media_type == "image/webp" and len(data) >= 12:
        claimed = struct.unpack("<I", data[4:8])[0] + 8
        return max(0, claimed - len(data))
    return 0


def _png_missing(data: bytes) -> int:
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return end - len(data) + (0 if ctype == b"IEND" else 12)
        if ctype == b"IEND":
            return 0
        pos = end
    return 12 + max(0, pos + 8 - len(data)) if pos < len(data) else 12


def salvage(data: bytes, media_type: str | None) -> Iterator[bytes]:
    """Byte strings to try in truncated mode, best first. libwebp will not start on a RIFF
    shorter than it claims, so a WebP is padded to its claimed size (the padding decodes as
    noise in the missing region only); dropping a few more bytes first sometimes gets the
    VP8 bit reader past a cut token."""
    if media_type != "image/webp" or len(data) < 12:
        yield data
        return
    claimed = struct.unpack("<I", data[4:8])[0] + 8
    if claimed <= len(data) or claimed - len(data) > 64 * 1024 * 1024:
        yield data
        return
    for back in (0, 16, 256, 4096):
        if back < len(data) - 64:
            cut = data[:len(data) - back]
            yield cut + b"\0" * (claimed - len(cut))


def undecoded_rows(im: Image.Image) -> int:
    """Rows at the bottom that a truncated decode left as one flat value (the decoders fill
    what they never reached with a constant). A flat bottom in the picture itself counts too,
    which is why this only feeds an estimate."""
    w, h = im.size
    if w == 0 or h == 0:
        return 0
    bands = len(im.getbands())
    raw = im.tobytes()
    stride = w * bands
    first = raw[(h - 1) * stride:(h - 1) * stride + bands]
    flat_row = first * w
    n = 0
    for y in range(h - 1, -1, -1):
        if raw[y * stride:(y + 1) * stride] != flat_row:
            break
        n += 1
    return n


def estimate(data: bytes, media_type: str | None, im: Image.Image | None) -> dict[str, int]:
    """Truncation facts of a file that needed truncated mode (``im``: its first frame as
    decoded, before any conversion)."""
    low = missing_bytes_min(data, media_type)
    facts = {"missing_bytes_min": low, "missing_bytes": low}
    if media_type == "image/webp":
        facts["exact"] = 1  # the RIFF header says how long the file was
        return facts
    if im is None:
        return facts
    h = im.size[1]
    missing_rows = undecoded_rows(im)
    facts["rows_decoded"] = h - missing_rows
    facts["rows"] = h
    if low == 0:
        facts["damaged"] = 1  # the end is there: the data is damaged inside, not cut
    elif 0 < missing_rows < h:
        facts["missing_bytes"] = low + round(len(data) * missing_rows / (h - missing_rows))
    return facts


def describe(facts: dict[str, int]) -> str:
    n, low = facts.get("missing_bytes", 0), facts.get("missing_bytes_min", 0)
    if facts.get("damaged") or (not n and not low):
        # Nothing says the end is missing, yet the strict decoder gave up: damaged inside.
        rows = facts.get("rows")
        part = (f", {facts['rows_decoded']} of {rows} rows decoded"
                if rows and facts.get("rows_decoded", rows) < rows else "")
        return "damaged: decoded as far as the data allowed" + part
    if facts.get("exact"):
        what = f"{n} bytes missing"
    elif n == low:
        what = f"at least {n} bytes missing" if n else "data ends early"
    else:
        what = f"about {n} bytes missing (at least {low})"
    rows = facts.get("rows")
    if rows and facts.get("rows_decoded", rows) < rows:
        what += f", {facts['rows_decoded']} of {rows} rows decoded"
    return "truncated: " + what
