"""Synthetic pict-rs-shaped stores for the demo, the tests and the benchmark.

Images are generated shapes, gradients and noise: never real content. File names follow
pict-rs 0.5.7+ (UUIDv7, 32 hex: ten 2-char directory levels, then the last 12 chars plus an
extension) or the 0.4 layout (numbered directories and a UUIDv4 without extension).
"""

from __future__ import annotations

import io
import os
import random
import struct
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FORMATS = ("jpeg", "png", "webp", "gif")
# Video containers the benchmark can add (PyAV, the `video` extra): a few seconds each.
VIDEO_FORMATS = ("mp4", "webm")
VIDEO_SECONDS = 4


def uuid7_hex(rng: random.Random, ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if ms is None else ms
    rand = rng.getrandbits(80)
    b = struct.pack(">Q", ms)[2:] + rand.to_bytes(10, "big")
    b = bytearray(b)
    b[6] = (b[6] & 0x0F) | 0x70   # version 7
    b[8] = (b[8] & 0x3F) | 0x80   # variant
    return bytes(b).hex()


def pictrs_key(rng: random.Random, ext: str, layout: str = "0.5.7") -> str:
    if layout == "0.4":
        dirs = [str(rng.randrange(1000)) for _ in range(2)]
        return "/".join(dirs + [str(uuid.UUID(int=rng.getrandbits(128), version=4))])
    h = uuid7_hex(rng)
    parts = [h[i:i + 2] for i in range(0, 20, 2)]
    return "/".join(parts + [h[20:] + "." + ext])


def synthetic_image(rng: random.Random, width: int, height: int) -> Image.Image:
    """A colourful random picture: gradient background, shapes, a little noise."""
    nprng = np.random.default_rng(rng.getrandbits(32))
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    c0, c1 = nprng.uniform(0, 255, 3), nprng.uniform(0, 255, 3)
    t = (x * 0.6 + y * 0.4)[..., None]
    arr = (c0 * (1 - t) + c1 * t)
    arr += nprng.normal(0, 8, (height, width, 1)).astype(np.float32)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(3, 8)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(width // 2 + 1), y0 + rng.randrange(height // 2 + 1)
        fill = tuple(rng.randrange(256) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=fill)
    return im


def encode(im: Image.Image, fmt: str, rng: random.Random, frames: int = 3) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=85)
    elif fmt == "png":
        im.save(buf, "PNG", compress_level=1)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=80)
    elif fmt == "gif":
        small = im.copy()
        small.thumbnail((min(im.width, 480), min(im.height, 480)))
        seq = [small] + [synthetic_image(rng, small.width, small.height)
                         for _ in range(frames - 1)]
        seq[0].save(buf, "GIF", save_all=True, append_images=seq[1:], duration=100, loop=0)
    elif fmt in VIDEO_FORMATS:
        return encode_video(im, fmt, rng)
    else:
        raise ValueError(fmt)
    return buf.getvalue()


def encode_video(im: Image.Image, fmt: str, rng: random.Random,
                 seconds: int = VIDEO_SECONDS, fps: int = 10) -> bytes:
    """A short video (H.264 in MP4, VP9 in WebM) of ``im`` with a shape moving across it and
    a cut to a new picture halfway (a scene change), at most 640 px wide."""
    import av
    import numpy as np
    base = im.copy()
    base.thumbnail((640, 640))
    w, h = base.width // 2 * 2, base.height // 2 * 2
    first = np.asarray(base.resize((w, h)).convert("RGB"))
    second = np.asarray(synthetic_image(rng, w, h))
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        s = out.add_stream("libx264" if fmt == "mp4" else "libvpx-vp9", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        n = seconds * fps
        for i in range(n):
            frame = (first if i < n // 2 else second).copy()
            x = (i * 7) % max(1, w - 16)
            frame[: min(16, h), x:x + 16] = (255, 255, 255)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def make_store(root: str | os.PathLike, n: int, *, seed: int = 0,
               formats: tuple[str, ...] = FORMATS, megapixels: tuple[float, float] = (0.3, 2.0),
               layout: str = "0.5.7") -> list[str]:
    """Write ``n`` synthetic images under ``root``; return their keys."""
    rng = random.Random(seed)
    root = Path(root)
    keys = []
    for i in range(n):
        fmt = formats[i % len(formats)]
        mp = rng.uniform(*megapixels)
        aspect = rng.uniform(0.6, 1.7)
        w = max(16, int((mp * 1e6 * aspect) ** 0.5))
        h = max(16, int(mp * 1e6 / w))
        data = encode(synthetic_image(rng, w, h), fmt, rng)
        key = pictrs_key(rng, fmt, layout)
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        keys.append(key)
    return keys
