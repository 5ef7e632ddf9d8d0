"""Recognising untrusted bytes, and which of them fsq will hand to a decoder at all.

The format comes from magic bytes, never from a file name. Only the formats pict-rs stores
are ever opened (``ALLOWED``), and each one only by its own Pillow plugin: Pillow can open
some forty formats, several of which run external programs or large parsers (EPS runs
Ghostscript where it is installed; TIFF is a multi-page container with a dozen codecs).

Refused on purpose:

* BMP and TIFF: pict-rs does not store them (its input formats are AVIF, GIF, JPEG, JXL, PNG,
  WebP, APNG and MP4/WebM video), so such a file in a pict-rs store was not put there by
  pict-rs and will not be served by it; decoding them would only add attack surface (TIFF:
  multi-page bombs, many codecs; BMP: RLE). They are ``unreadable: format not allowed``.
* HEIC and everything else: not pict-rs formats.
* JPEG XL: accepted if this Pillow build has a JXL plugin (it does not ship one today).
"""

from __future__ import annotations

import hashlib

from PIL import Image

VIDEO_TYPES = {"video/mp4", "video/webm"}

# media type (from sniff) -> the one Pillow plugin allowed to open it
_CANDIDATES = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/apng": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/avif": "AVIF",
    "image/jxl": "JXL",
}


def _supported() -> dict[str, str]:
    Image.init()
    return {mt: fmt for mt, fmt in _CANDIDATES.items() if fmt in Image.OPEN}


ALLOWED: dict[str, str] = _supported()


def allowed_names() -> str:
    """Human list for messages: 'JPEG, PNG, APNG, GIF, WEBP, AVIF'."""
    return ", ".join(mt.split("/", 1)[1].upper() for mt in ALLOWED)


def sniff(data: bytes) -> str | None:
    """Media type from magic bytes, or None."""
    h = data[:32]
    if h.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if h.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/apng" if b"acTL" in data[:4096] else "image/png"
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if h[:4] == b"RIFF" and h[8:12] == b"WEBP":
        return "image/webp"
    if h[4:8] == b"ftyp":
        brand = h[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1"):
            return "image/heic"
        return "video/mp4"
    if h.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if h.startswith(b"\xff\x0a") or h.startswith(b"\x00\x00\x00\x0cJXL "):
        return "image/jxl"
    if h.startswith(b"BM"):
        return "image/bmp"
    if h[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if h.startswith(b"%!PS") or h.startswith(b"\xc5\xd0\xd3\xc6"):
        return "application/postscript"
    return None


def hashes(data: bytes) -> tuple[str, str]:
    """(sha256, md5) hex of the exact bytes. MD5 only because the CyberTipline form takes it."""
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest()
