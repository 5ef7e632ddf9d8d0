"""Video sampling (fsq.media.video) on videos generated here with PyAV: coverage of the whole
duration, the odd frame seen, limits before decoding, hostile containers."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

av = pytest.importorskip("av")

from fsq.media.video import (VideoLimits, VideoUnreadable, decode_video,  # noqa: E402
                             sample_times)

GREY = (128, 128, 128)
RED = (230, 20, 20)


def make_video(path, *, fmt="mp4", codec="libx264", seconds=6.0, fps=10, size=(64, 48),
               odd_at: float | None = None, odd_colour=RED, gop=None) -> bytes:
    """``seconds`` of grey frames with a slowly moving bar; the one frame at ``odd_at`` is a
    solid ``odd_colour``. Frame times are exact multiples of 1/fps."""
    w, h = size
    n = int(round(seconds * fps))
    odd = None if odd_at is None else int(round(odd_at * fps))
    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if gop:
            s.codec_context.gop_size = gop
        for i in range(n):
            arr = np.empty((h, w, 3), dtype=np.uint8)
            arr[:] = odd_colour if i == odd else GREY
            if i != odd:
                x = (i * 3) % w
                arr[:, x:x + 4] = (90, 90, 90)
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path.read_bytes()


def _is_red(im) -> bool:
    r, g, b = im.convert("RGB").resize((1, 1)).getpixel((0, 0))
    return r > 150 and g < 90 and b < 90


def test_sample_times_cover_the_whole_duration():
    assert sample_times(5.5, 32) == [0, 1, 2, 3, 4, 5]
    t = sample_times(600, 32)
    assert len(t) == 32 and t[0] == 0 and t[-1] >= 600 * 31 / 32 - 1
    assert sample_times(0, 32) == [0.0]


@pytest.mark.parametrize("fmt,codec", [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_samples_span_the_video_and_include_the_odd_frame(tmp_path, fmt, codec):
    data = make_video(tmp_path / f"v.{fmt}", fmt=fmt, codec=codec, seconds=6, odd_at=3.0)
    v = decode_video(data, limits=VideoLimits(max_frames=32))
    assert v.codec in ("h264", "vp9")
    assert v.timestamps[0] == 0.0
    assert max(v.timestamps) >= 5.0                  # the last second is covered
    assert 5.5 <= v.duration <= 6.5
    red = [t for im, t in zip(v.frames, v.timestamps) if _is_red(im)]
    assert red == [3.0]
    assert all(im.size == (64, 48) and im.mode == "RGB" for im in v.frames)


def test_an_odd_frame_between_sampled_seconds_is_kept_as_a_scene_change(tmp_path):
    data = make_video(tmp_path / "v.mp4", seconds=6, odd_at=3.4)
    v = decode_video(data, limits=VideoLimits(max_frames=32))
    red = [t for im, t in zip(v.frames, v.timestamps) if _is_red(im)]
    assert red == [3.4] and 3.4 in v.scene_changes


def test_long_video_is_spread_over_its_duration_under_the_frame_cap(tmp_path):
    data = make_video(tmp_path / "v.mp4", seconds=60, fps=5, size=(32, 32), odd_at=52.0,
                      gop=25)
    v = decode_video(data, limits=VideoLimits(max_frames=8))
    assert len(v.frames) <= 8 + 8 // 4
    assert v.timestamps[0] == 0 and v.timestamps[-1] >= 50
    # 60 s at 5 fps is 300 frames; seeking keeps the decoded count well below that.
    assert v.decoded_frames < 200, v.decoded_frames


def test_frame_size_limit_is_checked_before_decoding(tmp_path):
    data = make_video(tmp_path / "v.mp4", seconds=1, size=(640, 480))
    with pytest.raises(VideoUnreadable, match=r"limit: 640x480 frames \(h264\) exceed "
                                              r"FSQ_MAX_PIXELS"):
        decode_video(data, limits=VideoLimits(max_pixels=100_000))


def test_duration_limit_and_declared_frame_bomb(tmp_path):
    data = make_video(tmp_path / "v.mp4", seconds=3)
    with pytest.raises(VideoUnreadable, match="over FSQ_MAX_VIDEO_SECONDS"):
        decode_video(data, limits=VideoLimits(max_seconds=2))
    # Rewrite the sample table (stts) to claim 10^6 frames (FFmpeg takes the frame count from
    # there, not from the movie header): refused from the header, nothing decoded.
    b = bytearray(data)
    i = b.find(b"stts")
    assert i > 0 and struct.unpack_from(">I", b, i + 8)[0] == 1     # one (count, delta) entry
    struct.pack_into(">I", b, i + 12, 1_000_000)
    t0 = time.monotonic()
    with pytest.raises(VideoUnreadable, match="declares 1000000 frames at 10 fps, over "
                                              "FSQ_MAX_VIDEO_SECONDS"):
        decode_video(bytes(b), limits=VideoLimits(max_seconds=3600))
    assert time.monotonic() - t0 < 5


def test_decode_budget_ends_a_slow_file_with_the_frames_it_has(tmp_path):
    data = make_video(tmp_path / "v.mp4", seconds=4)
    ticks = iter(range(0, 10_000, 5))            # an injected clock: 5 s per look
    v = decode_video(data, limits=VideoLimits(budget_s=12), clock=lambda: next(ticks))
    assert len(v.frames) == 1 and v.timestamps == [0.0]
    assert v.incomplete and v.incomplete.startswith("budget: ") and "64x48" in v.incomplete
    # Over budget before any frame: unreadable.
    ticks = iter(range(100, 10_000, 100))
    with pytest.raises(VideoUnreadable, match=r"budget: 1 frames of 64x48"):
        decode_video(data, limits=VideoLimits(budget_s=12), clock=lambda: next(ticks))


def test_total_pixel_budget(tmp_path):
    data = make_video(tmp_path / "v.mp4", seconds=4)
    v = decode_video(data, limits=VideoLimits(max_total_pixels=64 * 48 * 5))
    assert v.incomplete and "decoded-pixel budget" in v.incomplete
    assert v.decoded_frames == 6 and v.timestamps == [0.0]
    with pytest.raises(VideoUnreadable, match="decoded-pixel budget"):
        decode_video(data, limits=VideoLimits(max_total_pixels=64 * 48 - 1))


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_mp4_is_a_clear_outcome(tmp_path, cut):
    data = make_video(tmp_path / "v.mp4", seconds=4)
    part = data[:int(len(data) * cut)]
    try:
        v = decode_video(part)
    except VideoUnreadable as e:
        assert "video" in e.reason
    else:                                        # what is there was decoded
        assert v.frames


def test_webm_with_bogus_segment_size_and_garbage(tmp_path):
    data = make_video(tmp_path / "v.webm", fmt="webm", codec="libvpx-vp9", seconds=3)
    seg = data.find(b"\x18\x53\x80\x67")
    b = bytearray(data)
    b[seg + 4:seg + 12] = b"\x01\x00\x00\x00\x7f\xff\xff\xff"
    t0 = time.monotonic()
    try:
        v = decode_video(bytes(b))
        assert v.frames
    except VideoUnreadable as e:
        assert e.reason
    assert time.monotonic() - t0 < 10
    for junk in (b"\x1a\x45\xdf\xa3" + b"\xff" * 64, b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40):
        with pytest.raises(VideoUnreadable):
            decode_video(junk)
