"""Container checks: where does a file really end, and what hides after that end?

A valid JPEG or PNG can carry a second file after its end marker ("take flower.jpg and embed
csam.png inside it"). Browsers and pict-rs serve the whole byte string, decoders stop at the
end marker, so a scanner that only decodes sees the harmless first image. This module walks
each container's own structure to its real end, measures what follows, and finds embedded
files in that tail by signature, so the caller can classify every embedded image and record
the file as carrying appended data.

Everything here parses attacker-controlled bytes:

* Only lengths read from the structure are followed, never searched for: a JPEG "EOI" inside
  an APP segment (an EXIF thumbnail, or a fake one planted to end the walk early) lies inside a
  segment whose length we skip, so it cannot be mistaken for the end.
* Every length is checked against the bytes that are really there before it is used; a length
  that points past the end makes the file *truncated* (``end`` is None), never an exception.
* Loops advance by at least one byte per step and are bounded by ``len(data)``; the walk is
  linear in the size of the file and copies nothing but the tail it reports on.
* The tail search is bounded (``MAX_HITS`` signatures) and only reports offsets; carving
  returns a slice, which the caller decodes under the same limits as any other file.

Formats without a reliable end (JXL, TIFF, unknown) return ``end=None, known=False``: nothing is
claimed about them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Signatures looked for in appended data: (kind, magic, offset of magic in the embedded file).
SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("jpeg", b"\xff\xd8\xff", 0),
    ("png", b"\x89PNG\r\n\x1a\n", 0),
    ("gif", b"GIF87a", 0),
    ("gif", b"GIF89a", 0),
    ("webp", b"WEBP", 8),            # RIFF????WEBP: matched at +8, checked for RIFF at +0
    ("mp4", b"ftyp", 4),             # ISO-BMFF (MP4, MOV, AVIF, HEIC)
    ("webm", b"\x1a\x45\xdf\xa3", 0),  # EBML (WebM, Matroska)
    ("zip", b"PK\x03\x04", 0),
    ("zip", b"PK\x05\x06", 0),       # end of central directory: an (empty) archive
    ("7z", b"7z\xbc\xaf\x27\x1c", 0),
    ("rar", b"Rar!\x1a\x07", 0),
)
IMAGE_KINDS = frozenset({"jpeg", "png", "gif", "webp"})
ARCHIVE_KINDS = frozenset({"zip", "7z", "rar"})
MAX_HITS = 16


@dataclass(frozen=True)
class Embedded:
    kind: str      # one of SIGNATURES' kinds
    offset: int    # absolute offset of the embedded file in the outer file


@dataclass(frozen=True)
class ContainerFacts:
    """What the structure walk found. ``end`` is the offset just past the container's last
    byte, or None when the structure is cut short (truncated) or the format has no reliable
    end (``known`` False)."""
    media_type: str | None
    known: bool
    end: int | None
    size: int
    embedded: tuple[Embedded, ...] = field(default_factory=tuple)
    padding_only: bool = False   # the tail is all 0x00 / 0xFF (encoder padding, not data)

    @property
    def truncated(self) -> bool:
        return self.known and self.end is None

    @property
    def trailing(self) -> int:
        """Bytes after the real end (0 when unknown or truncated)."""
        return self.size - self.end if self.end is not None else 0

    @property
    def suspicious(self) -> bool:
        """Trailing bytes that are not mere padding."""
        return self.trailing > 0 and not self.padding_only

    def kinds(self) -> list[str]:
        seen: list[str] = []
        for e in self.embedded:
            if e.kind not in seen:
                seen.append(e.kind)
        return seen

    def describe(self) -> str:
        """Short reason text, e.g. ``appended data (2048 bytes, zip)``."""
        kinds = ", ".join(self.kinds()) or "unknown data"
        return f"appended data ({self.trailing} bytes, {kinds})"

    def to_json(self) -> dict:
        return {"end": self.end, "trailing": self.trailing, "padding_only": self.padding_only,
                "embedded": [{"kind": e.kind, "offset": e.offset} for e in self.embedded]}


# --- per-format walkers: each returns the end offset, or None if the data is cut short -------

def jpeg_end(data: bytes, start: int = 0) -> int | None:
    """Offset just past the EOI marker, walking segments by their lengths (so markers inside
    APPn/COM payloads, such as an EXIF thumbnail's own EOI, are skipped)."""
    n = len(data)
    if data[start:start + 2] != b"\xff\xd8":
        return None
    i = start + 2
    while i < n:
        if data[i] != 0xFF:
            return None                  # not a marker where one must be: corrupt structure
        while i < n and data[i] == 0xFF:  # fill bytes before a marker are allowed
            i += 1
        if i >= n:
            return None
        m = data[i]
        i += 1
        if m == 0xD9:                    # EOI
            return i
        if m == 0x01 or 0xD0 <= m <= 0xD7 or m == 0xD8:
            continue                     # standalone markers (TEM, RSTn; a stray SOI)
        if m == 0x00:
            return None
        if i + 2 > n:
            return None
        seg = (data[i] << 8) | data[i + 1]
        if seg < 2 or i + seg > n:
            return None
        i += seg
        if m == 0xDA:                    # SOS: entropy-coded data until the next real marker
            while True:
                j = data.find(b"\xff", i)
                if j < 0:
                    return None
                if j + 1 >= n:
                    return None
                nxt = data[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    # stuffed byte, restart marker, or fill: still entropy data. For 0xFF 0xFF
                    # step one byte so the second 0xFF can start the real marker.
                    i = j + (1 if nxt == 0xFF else 2)
                    continue
                i = j
                break
    return None


def png_end(data: bytes, start: int = 0) -> int | None:
    n = len(data)
    if data[start:start + 8] != b"\x89PNG\r\n\x1a\n":
        return None
    i = start + 8
    while i + 12 <= n:
        (length,) = struct.unpack_from(">I", data, i)
        ctype = data[i + 4:i + 8]
        nxt = i + 12 + length
        if length > 0x7FFFFFFF or nxt > n:
            return None
        if ctype == b"IEND":
            return nxt
        i = nxt
    return None


def _gif_sub_blocks(data: bytes, i: int) -> int | None:
    n = len(data)
    while i < n:
        size = data[i]
        i += 1
        if size == 0:
            return i
        i += size
    return None


def gif_end(data: bytes, start: int = 0) -> int | None:
    n = len(data)
    if data[start:start + 6] not in (b"GIF87a", b"GIF89a") or start + 13 > n:
        return None
    flags = data[start + 10]
    i = start + 13
    if flags & 0x80:
        i += 3 * (2 << (flags & 0x07))
    while i < n:
        b = data[i]
        if b == 0x3B:                    # trailer
            return i + 1
        if b == 0x21:                    # extension: label, then sub-blocks
            if i + 2 > n:
                return None
            r = _gif_sub_blocks(data, i + 2)
        elif b == 0x2C:                  # image descriptor (9 bytes), local colour table,
            if i + 10 > n:               # LZW minimum code size, then sub-blocks
                return None
            lflags = data[i + 9]
            j = i + 10
            if lflags & 0x80:
                j += 3 * (2 << (lflags & 0x07))
            r = _gif_sub_blocks(data, j + 1) if j < n else None
        else:
            return None                  # unknown block: the structure ends here, corrupt
        if r is None:
            return None
        i = r
    return None


def riff_end(data: bytes, start: int = 0) -> int | None:
    if start + 12 > len(data) or data[start:start + 4] != b"RIFF":
        return None
    (size,) = struct.unpack_from("<I", data, start + 4)
    end = start + 8 + size + (size & 1)
    # An odd size's pad byte is often missing in the wild; accept the unpadded end too.
    if end > len(data):
        end -= size & 1
    return end if end <= len(data) else None


_BOX_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \xa9-_")


def isobmff_end(data: bytes, start: int = 0) -> int | None:
    """End of the last well-formed top-level box. A box that claims more bytes than exist makes
    the file truncated; bytes that do not start a plausible box end the walk there."""
    n = len(data)
    i = start
    seen = 0
    while i + 8 <= n:
        (size,) = struct.unpack_from(">I", data, i)
        btype = data[i + 4:i + 8]
        if not all(c in _BOX_CHARS for c in btype):
            break
        if size == 1:
            if i + 16 > n:
                return None
            (size,) = struct.unpack_from(">Q", data, i + 8)
            if size < 16:
                break
        elif size == 0:
            return n                     # "extends to the end of the file"
        elif size < 8:
            break
        if i + size > n:
            return None
        i += size
        seen += 1
    return i if seen else None


def _vint(data: bytes, i: int, keep_marker: bool) -> tuple[int, int, bool] | None:
    """EBML variable-length integer at i: (value, next offset, all-ones 'unknown size')."""
    if i >= len(data):
        return None
    first = data[i]
    if first == 0:
        return None
    length = 8 - first.bit_length() + 1
    if i + length > len(data):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for k in range(1, length):
        value = (value << 8) | data[i + k]
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, i + length, unknown


def ebml_end(data: bytes, start: int = 0) -> int | None:
    """End of the last top-level EBML element (EBML header, Segment, ...)."""
    n = len(data)
    if data[start:start + 4] != b"\x1a\x45\xdf\xa3":
        return None
    i = start
    while i < n:
        eid = _vint(data, i, keep_marker=True)
        # Only the top-level elements a WebM/Matroska file has (EBML header, Segment, Void)
        # continue the walk; anything else is where the file's own structure ends.
        if eid is None or eid[0] not in (0x1A45DFA3, 0x18538067, 0xEC):
            break
        size = _vint(data, eid[1], keep_marker=False)
        if size is None:
            return None
        value, body, unknown = size
        if unknown:
            return n                     # live-streamed segment: size unknown, runs to the end
        if body + value > n:
            return None
        i = body + value
    return i


def bmp_end(data: bytes, start: int = 0) -> int | None:
    if start + 6 > len(data):
        return None
    (size,) = struct.unpack_from("<I", data, start + 2)
    return start + size if 14 <= size and start + size <= len(data) else None


WALKERS = {
    "image/jpeg": jpeg_end,
    "image/png": png_end,
    "image/apng": png_end,
    "image/gif": gif_end,
    "image/webp": riff_end,
    "image/avif": isobmff_end,
    "image/heic": isobmff_end,
    "video/mp4": isobmff_end,
    "video/webm": ebml_end,
    "image/bmp": bmp_end,
}
KIND_MEDIA = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
              "webp": "image/webp", "mp4": "video/mp4", "webm": "video/webm"}


def find_embedded(data: bytes, start: int, *, max_hits: int = MAX_HITS) -> list[Embedded]:
    """Signatures of files that begin at or after ``start``, in offset order (bounded)."""
    hits: list[Embedded] = []
    for kind, magic, at in SIGNATURES:
        pos = start + at
        while len(hits) < 4 * max_hits:
            j = data.find(magic, pos)
            if j < 0:
                break
            off = j - at
            pos = j + 1
            if off < start:
                continue
            if kind == "webp" and data[off:off + 4] != b"RIFF":
                continue
            hits.append(Embedded(kind, off))
    hits.sort(key=lambda e: e.offset)
    # Drop hits inside an earlier embedded image we can walk (a JPEG's own EXIF thumbnail).
    out: list[Embedded] = []
    covered_to = -1
    for e in hits:
        if e.offset < covered_to:
            continue
        out.append(e)
        if e.kind in IMAGE_KINDS:
            end = WALKERS[KIND_MEDIA[e.kind]](data, e.offset)
            if end is not None:
                covered_to = end
        if len(out) >= max_hits:
            break
    return out


def check(data: bytes, media_type: str | None) -> ContainerFacts:
    """Walk ``data`` as ``media_type`` (from sniffing) to its real end and look at the tail."""
    walker = WALKERS.get(media_type or "")
    if walker is None:
        return ContainerFacts(media_type, False, None, len(data))
    end = walker(data, 0)
    if end is None or end >= len(data):
        return ContainerFacts(media_type, True, end, len(data))
    tail = data[end:]
    padding = tail.strip(b"\x00") == b"" or tail.strip(b"\xff") == b""
    embedded = () if padding else tuple(find_embedded(data, end))
    return ContainerFacts(media_type, True, end, len(data), embedded, padding)


def carve(data: bytes, e: Embedded) -> bytes:
    """The embedded file's bytes (to its own end when walkable, else to the end of ``data``)."""
    walker = WALKERS.get(KIND_MEDIA.get(e.kind, ""))
    end = walker(data, e.offset) if walker else None
    return data[e.offset:end if end is not None else len(data)]
