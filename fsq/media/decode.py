"""Decoding untrusted image bytes into a few RGB frames for the classifier.

Everything here parses attacker-controlled bytes, so:

* The format is recognised from magic bytes, never from the file name.
* The pixel count is checked from the header *before* any pixel is decoded (decompression-bomb
  guard); Pillow's own DecompressionBombError is also caught.
* JPEGs are decoded in draft mode (DCT scaling) straight to about the size we need, which is
  both faster and bounds memory for huge photos.
* Animations (GIF, WebP, APNG) are sampled: up to ``max_frames`` frames spread over the
  animation; the caller flags the file if any frame flags.
* Every failure becomes ``Unreadable(reason)``: one bad file never stops a run (invariant 6).

Frames are returned shrunk to fit ``fit`` x ``fit`` (512 by default, as the calibrated rule
expects), RGB, with transparency composited on white.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageFile, UnidentifiedImageError

# We enforce our own limit before decoding; keep Pillow's global guard as a second line but
# make sure it never *warns* instead of raising for what we consider too big.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

VIDEO_TYPES = {"video/mp4", "video/webm"}


class Unreadable(Exception):
    """The bytes could not be decoded into an image; ``reason`` is short, human text."""

    def __init__(self, reason: str, media_type: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.media_type = media_type


@dataclass
class Decoded:
    frames: list[Image.Image]
    media_type: str
    width: int
    height: int
    n_frames: int            # frames in the file (only some are sampled)
    sampled: list[int] = field(default_factory=list)  # frame indices in ``frames``


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
    return None


def hashes(data: bytes) -> tuple[str, str]:
    """(sha256, md5) hex of the exact bytes. MD5 only because the CyberTipline form takes it."""
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest()


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB") if im.mode != "RGB" else im


def _sample_indices(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def decode(data: bytes, *, max_pixels: int = 64_000_000, fit: int = 512,
           max_frames: int = 4) -> Decoded:
    if not data:
        raise Unreadable("empty file (0 bytes)")
    mt = sniff(data)
    if mt in VIDEO_TYPES:
        raise Unreadable(f"video ({mt}) is not decoded", mt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC noise from hostile files; not actionable
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                raise Unreadable("image has no pixels", mt)
            if w * h > max_pixels:
                raise Unreadable(f"decompression-bomb guard: {w}x{h} = {w * h} pixels exceeds "
                                 f"the limit of {max_pixels} (FSQ_MAX_PIXELS)", mt)
            fmt_type = Image.MIME.get(im.format or "", mt or "application/octet-stream")
            if mt == "image/apng" or (fmt_type == "image/png" and getattr(im, "is_animated",
                                                                          False)):
                fmt_type = "image/apng"
            n = int(getattr(im, "n_frames", 1) or 1)
            frames: list[Image.Image] = []
            indices = _sample_indices(n, max_frames)
            for i in indices:
                if n > 1:
                    im.seek(i)
                if im.format == "JPEG":
                    im.draft("RGB", (fit, fit))
                fr = _to_rgb(im.copy() if n > 1 else im)
                fr.load()
                if fr.width > fit or fr.height > fit:
                    fr.thumbnail((fit, fit), Image.Resampling.BICUBIC)
                frames.append(fr)
            return Decoded(frames, fmt_type, w, h, n, indices)
    except Unreadable:
        raise
    except UnidentifiedImageError:
        raise Unreadable("not an image (unrecognised format)"
                         + (f"; looks like {mt}" if mt else ""), mt) from None
    except Image.DecompressionBombError as exc:
        raise Unreadable(f"decompression-bomb guard: {exc}", mt) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError,
            TypeError, KeyError, ZeroDivisionError) as exc:
        # Pillow signals truncated/corrupt data with a variety of exception types.
        msg = str(exc).strip() or exc.__class__.__name__
        raise Unreadable(f"corrupt or truncated image: {msg[:200]}", mt) from None
