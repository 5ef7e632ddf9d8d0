"""Decoding untrusted bytes: every failure is a reason, never an exception."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from fsq.media import Unreadable, decode, sniff
from tests.fixtures.images import animated_gif, bomb_png, jpeg_bytes, png_bytes


def test_png_jpeg_and_shrink_to_512():
    big = Image.new("RGB", (2000, 1000), (10, 200, 30))
    buf = io.BytesIO()
    big.save(buf, "JPEG")
    d = decode(buf.getvalue())
    assert d.media_type == "image/jpeg" and (d.width, d.height) == (2000, 1000)
    assert max(d.frames[0].size) <= 512 and d.frames[0].mode == "RGB"
    p = decode(png_bytes())
    assert p.media_type == "image/png" and p.n_frames == 1


def test_animated_gif_sampled_frames():
    d = decode(animated_gif(frames=9), max_frames=4)
    assert d.media_type == "image/gif" and d.n_frames == 9
    assert len(d.frames) == 4 and d.sampled[0] == 0 and d.sampled[-1] == 8


def test_transparency_composited_on_white():
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    d = decode(buf.getvalue())
    assert d.frames[0].getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b"plain text pretending\n", "not an image"),
    (jpeg_bytes(300, 200)[:400], "truncated"),
    (bomb_png(), "decompression-bomb"),
    (b"\x00\x00\x00\x18ftypmp42" + b"\0" * 50, "video"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, ""),
])
def test_bad_inputs_are_unreadable_with_reason(data, needle):
    with pytest.raises(Unreadable) as ei:
        decode(data)
    assert needle in ei.value.reason and ei.value.reason


def test_bomb_guard_uses_setting():
    data = png_bytes(100, 100)
    decode(data, max_pixels=10_000)
    with pytest.raises(Unreadable, match="FSQ_MAX_PIXELS"):
        decode(data, max_pixels=9_999)


def test_sniff_ignores_names_uses_magic():
    assert sniff(png_bytes()) == "image/png"
    assert sniff(jpeg_bytes()) == "image/jpeg"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff(b"\x1a\x45\xdf\xa3rest") == "video/webm"
    assert sniff(b"hello") is None
