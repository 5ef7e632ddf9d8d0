"""Container checks (fsq.media.container): real ends, appended data, polyglots, hostile bytes.

Every file is generated here; the polyglots are built the way the seed thread describes
("take flower.jpg and embed csam.png inside it"), with generated harmless pictures."""

from __future__ import annotations

import io
import random
import struct
import time
import zipfile

import pytest
from PIL import Image

from fsq.media import container as C


def _img(seed: int = 0, size=(64, 48)) -> Image.Image:
    rnd = random.Random(seed)
    im = Image.new("RGB", size, (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    for _ in range(20):
        x, y = rnd.randrange(size[0]), rnd.randrange(size[1])
        im.paste((rnd.randrange(256), 0, rnd.randrange(256)), (x, y, x + 8, y + 8))
    return im


def _enc(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _jpeg(seed=0, **kw) -> bytes:
    return _enc(_img(seed), "JPEG", quality=85, **kw)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert an APPn/COM segment right after SOI, as cameras place EXIF."""
    return jpeg[:2] + _segment(marker, payload) + jpeg[2:]


def _zip() -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("inner.png", _enc(_img(7), "PNG"))
    return b.getvalue()


@pytest.mark.parametrize("fmt,mt,kw", [
    ("JPEG", "image/jpeg", {}),
    ("JPEG", "image/jpeg", {"progressive": True}),
    ("JPEG", "image/jpeg", {"restart_marker_blocks": 1}),
    ("PNG", "image/png", {}),
    ("GIF", "image/gif", {}),
    ("WEBP", "image/webp", {}),
    ("BMP", "image/bmp", {}),
])
def test_plain_files_end_exactly_at_their_length(fmt, mt, kw):
    try:
        data = _enc(_img(1), fmt, **kw)
    except (OSError, TypeError):
        pytest.skip(f"this Pillow cannot write {fmt} with {kw}")
    f = C.check(data, mt)
    assert f.known and f.end == len(data), (f, len(data))
    assert f.trailing == 0 and not f.suspicious and not f.truncated


def test_animated_gif_and_webp_end_at_their_length():
    frames = [_img(i) for i in range(12)]
    for fmt, mt in (("GIF", "image/gif"), ("WEBP", "image/webp"), ("PNG", "image/apng")):
        b = io.BytesIO()
        frames[0].save(b, fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)
        data = b.getvalue()
        f = C.check(data, mt)
        assert f.end == len(data), (fmt, f.end, len(data))


def test_camera_style_jpeg_with_exif_thumbnail_is_not_appended_data():
    # An APP1 "Exif" segment carrying a complete JPEG thumbnail (its own SOI..EOI), as cameras
    # write it: the thumbnail's EOI lies inside the segment and must not end the walk.
    thumb = _enc(_img(3, (32, 24)), "JPEG")
    tiff = b"MM\x00*\x00\x00\x00\x08" + b"\x00\x00"   # minimal big-endian TIFF, no IFD entries
    data = _with_segment(_jpeg(4), 0xE1, b"Exif\x00\x00" + tiff + thumb)
    f = C.check(data, "image/jpeg")
    assert f.end == len(data)
    assert not f.suspicious and f.embedded == ()
    # Pillow agrees the outer image is intact.
    Image.open(io.BytesIO(data)).load()


def test_fake_eoi_inside_an_app_segment_is_not_the_end():
    png = _enc(_img(5), "PNG")
    # A COM segment holding an EOI followed by a PNG: a naive "find FFD9" scanner ends here
    # and sees a PNG appended; the real end is after the scan data.
    data = _with_segment(_jpeg(6), 0xFE, b"\xff\xd9" + png[:40])
    f = C.check(data, "image/jpeg")
    assert f.end == len(data) and not f.suspicious
    hidden = data + png
    f2 = C.check(hidden, "image/jpeg")
    assert f2.end == len(data) and f2.trailing == len(png)
    assert [e.kind for e in f2.embedded] == ["png"]


@pytest.mark.parametrize("outer,outer_mt,inner,kind", [
    ("jpeg", "image/jpeg", "png", "png"),
    ("jpeg", "image/jpeg", "jpeg", "jpeg"),
    ("png", "image/png", "zip", "zip"),
    ("gif", "image/gif", "png", "png"),
])
def test_polyglots_report_size_and_kind(outer, outer_mt, inner, kind):
    base = {"jpeg": _jpeg(8), "png": _enc(_img(8), "PNG"), "gif": _enc(_img(8), "GIF")}[outer]
    extra = {"png": _enc(_img(9), "PNG"), "jpeg": _jpeg(9), "zip": _zip()}[inner]
    data = base + extra
    f = C.check(data, outer_mt)
    assert f.end == len(base)
    assert f.trailing == len(extra)
    assert f.suspicious
    assert f.kinds()[0] == kind
    assert f.embedded[0].offset == len(base)
    assert f.describe() == f"appended data ({len(extra)} bytes, {', '.join(f.kinds())})"
    if kind in C.IMAGE_KINDS:
        carved = C.carve(data, f.embedded[0])
        assert carved == extra
        Image.open(io.BytesIO(carved)).load()


def test_zip_inside_a_png_tail_is_found_even_after_junk():
    base = _enc(_img(10), "PNG")
    z = _zip()
    f = C.check(base + b"junk" * 10 + z, "image/png")
    assert f.trailing == 40 + len(z)
    # The archive comes first; the PNG stored (uncompressed) inside it is found as well and can
    # be carved and classified like any other embedded image.
    assert f.kinds() == ["zip", "png"]
    assert f.embedded[0].offset == len(base) + 40
    inner = C.carve(base + b"junk" * 10 + z, f.embedded[1])
    assert inner == _enc(_img(7), "PNG")


def test_webp_with_data_past_its_riff_size():
    base = _enc(_img(11), "WEBP")
    extra = _jpeg(12)
    f = C.check(base + extra, "image/webp")
    assert f.end == len(base) and f.trailing == len(extra) and f.kinds() == ["jpeg"]


def test_unknown_tail_and_padding():
    base = _jpeg(13)
    f = C.check(base + b"\x00" * 512, "image/jpeg")
    assert f.trailing == 512 and f.padding_only and not f.suspicious
    f = C.check(base + bytes(range(256)) * 4, "image/jpeg")
    assert f.suspicious and f.kinds() == [] and "unknown data" in f.describe()


@pytest.mark.parametrize("fmt,mt", [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                    ("GIF", "image/gif"), ("WEBP", "image/webp")])
def test_truncated_files_are_truncated_not_appended(fmt, mt):
    data = _enc(_img(14, (200, 150)), fmt)
    for cut in (2, len(data) // 2):
        f = C.check(data[:-cut], mt)
        assert f.truncated and f.trailing == 0 and not f.suspicious, (fmt, cut, f)


def test_unknown_formats_claim_nothing():
    f = C.check(b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"x" * 100, "image/jxl")
    assert not f.known and f.end is None and not f.suspicious
    assert not C.check(b"hello", None).known


def test_video_containers(tmp_path):
    av = pytest.importorskip("av")
    import numpy as np

    def make(path, fmt, codec):
        with av.open(str(path), "w", format=fmt) as out:
            s = out.add_stream(codec, rate=10)
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
            for i in range(10):
                arr = np.full((48, 64, 3), i * 20, dtype=np.uint8)
                for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
        return path.read_bytes()

    mp4 = make(tmp_path / "a.mp4", "mp4", "libx264")
    f = C.check(mp4, "video/mp4")
    assert f.end == len(mp4) and not f.suspicious
    f = C.check(mp4 + _zip(), "video/mp4")
    assert f.trailing == len(_zip()) and f.kinds()[0] == "zip"
    assert C.check(mp4[:-100], "video/mp4").truncated

    webm = make(tmp_path / "a.webm", "webm", "libvpx-vp9")
    f = C.check(webm, "video/webm")
    assert f.end == len(webm) and not f.suspicious
    f = C.check(webm + _enc(_img(15), "PNG"), "video/webm")
    assert f.kinds() == ["png"]
    # A bogus Segment size (claims far more than the file holds) is truncation, not a crash.
    seg = webm.find(b"\x18\x53\x80\x67")
    bogus = bytearray(webm)
    bogus[seg + 4:seg + 12] = b"\x01\x00\x00\x00\x7f\xff\xff\xff"
    assert C.check(bytes(bogus), "video/webm").truncated


def test_hostile_mutations_never_raise_and_stay_linear():
    rnd = random.Random(1234)
    seeds = [(_jpeg(20), "image/jpeg"), (_enc(_img(21), "PNG"), "image/png"),
             (_enc(_img(22), "GIF"), "image/gif"), (_enc(_img(23), "WEBP"), "image/webp"),
             (_enc(_img(24), "BMP"), "image/bmp"),
             (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isom" + b"\x00\x00\x00\x08free",
              "video/mp4"),
             (b"\x1a\x45\xdf\xa3\x84abcd\x18\x53\x80\x67\x82xy", "video/webm")]
    t0 = time.monotonic()
    for data, mt in seeds:
        for _ in range(300):
            b = bytearray(data)
            for _ in range(rnd.randrange(1, 8)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            if rnd.random() < 0.3:
                b = b[:rnd.randrange(1, len(b))]
            f = C.check(bytes(b), mt)
            assert f.trailing >= 0 and (f.end is None or 0 < f.end <= len(b))
    # Runs of markers and all-0xFF bodies are the quadratic traps for a careless walker.
    big = b"\xff\xd8" + b"\xff" * 2_000_000
    f = C.check(big, "image/jpeg")
    assert f.truncated
    big_sos = b"\xff\xd8" + _segment(0xDA, b"\x00" * 10) + b"\xff\x00" * 1_000_000
    assert C.check(big_sos, "image/jpeg").truncated
    assert time.monotonic() - t0 < 20
