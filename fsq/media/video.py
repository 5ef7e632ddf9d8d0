"""Video: sample frames of MP4/WebM (H.264, H.265, VP8, VP9, AV1) with PyAV, under limits.

pict-rs keeps uploaded videos in their own codec, so a scanner that only decodes stills never
looks at them. Here a video becomes a handful of RGB frames for the classifier:

* Sampling: the first frame, then one frame per second, spread evenly over the whole duration
  when that would exceed ``max_frames`` (so a long video is covered end to end, not only its
  first ``max_frames`` seconds). Each sample is the first frame at or after its target time.
* Limits are checked from the container and codec headers *before* any frame is decoded: no
  video stream, a frame size over ``max_pixels``, a duration over ``max_seconds``; then, while
  decoding, the total decoded pixels and the time budget. Any of them ends the file as
  ``Unreadable`` with the limit named: a hostile file costs at most its budget.
* Scene changes, when cheap: frames decoded anyway on the way to the next target (no seek in
  between) are compared with the last kept frame on a 16x16 grey thumbnail; a frame that
  differs a lot is kept too, up to a quarter of ``max_frames``, so one odd frame between two
  sampled seconds is still seen. Frames reached by seeking are not compared (not decoded).
* Decoding is single-threaded per file (the scanner runs several files at once) and seeks
  to far-apart targets instead of decoding every frame in between.
* Audio and subtitle streams are never decoded.

PyAV bundles FFmpeg (GPL-licensed build); FFmpeg's demuxers and decoders are C code parsing
hostile input, which is one more reason the caller runs this in a worker it can kill.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
SEEK_GAP_S = 2.0          # targets further apart than this are reached by seeking
SCENE_DIFF = 40.0         # mean absolute difference (0-255) of 16x16 grey thumbnails


class VideoUnreadable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int = 32                 # FSQ_MAX_FRAMES
    max_seconds: float = 3600.0          # FSQ_MAX_VIDEO_SECONDS
    max_pixels: int = 64_000_000         # per frame (FSQ_MAX_PIXELS)
    max_total_pixels: int = 2_000_000_000  # all frames decoded for one file
    budget_s: float = 30.0               # wall-clock budget for one file


@dataclass
class VideoFrames:
    frames: list[Image.Image]
    timestamps: list[float]              # seconds, one per frame
    duration: float
    codec: str
    width: int
    height: int
    declared_frames: int = 0             # as the container says (0 = unknown)
    decoded_frames: int = 0
    scene_changes: list[float] = field(default_factory=list)  # timestamps kept as such
    notes: list[str] = field(default_factory=list)
    # A budget or limit met after some frames were sampled: those frames are returned (and
    # classified); the rest of the video was not examined.
    incomplete: str | None = None


def sample_times(duration: float, max_frames: int) -> list[float]:
    """0, 1, 2, ... seconds; spread evenly over [0, duration] when that is over max_frames."""
    if max_frames <= 1 or duration <= 0:
        return [0.0]
    per_second = [float(t) for t in range(int(duration) + 1) if t < duration or t == 0]
    if len(per_second) <= max_frames:
        return per_second
    step = duration / max_frames
    return [round(i * step, 3) for i in range(max_frames)]


def _rgb(frame, fit: int) -> Image.Image:
    im = frame.to_image()                # RGB, converted by PyAV/swscale
    if im.mode != "RGB":
        im = im.convert("RGB")
    if im.width > fit or im.height > fit:
        im.thumbnail((fit, fit), Image.Resampling.BICUBIC)
    return im


def _small(frame) -> "np.ndarray":
    return frame.reformat(width=16, height=16, format="gray").to_ndarray().astype(np.float32)


def decode_video(data: bytes, *, limits: VideoLimits = VideoLimits(), fit: int = 512,
                 clock=time.monotonic) -> VideoFrames:
    """Sample frames of a video; raise VideoUnreadable with a precise reason otherwise."""
    try:
        import av
    except ImportError:
        raise VideoUnreadable("video support is not installed (pip install 'fsq[video]')") \
            from None
    t0 = clock()
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise VideoUnreadable(f"corrupt or truncated video: {_msg(exc)}") from None
    try:
        return _sample(container, limits, fit, clock, t0)
    except av.FFmpegError as exc:
        raise VideoUnreadable(f"corrupt or truncated video: {_msg(exc)}") from None
    finally:
        container.close()


def _msg(exc: Exception) -> str:
    return (str(exc).strip() or exc.__class__.__name__)[:200]


def _sample(container, limits: VideoLimits, fit: int, clock, t0: float) -> VideoFrames:
    if not container.streams.video:
        raise VideoUnreadable("no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    codec = ctx.name or "unknown"
    w, h = int(ctx.width or 0), int(ctx.height or 0)
    if w <= 0 or h <= 0:
        raise VideoUnreadable(f"video ({codec}) declares no frame size")
    if w * h > limits.max_pixels:
        raise VideoUnreadable(f"limit: {w}x{h} frames ({codec}) exceed FSQ_MAX_PIXELS "
                              f"({limits.max_pixels})")
    tb = stream.time_base
    duration = 0.0
    if stream.duration is not None and tb is not None:
        duration = float(stream.duration * tb)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    declared = int(stream.frames or 0)
    if duration > limits.max_seconds:
        raise VideoUnreadable(f"limit: video lasts {duration:.0f} s, over FSQ_MAX_VIDEO_SECONDS "
                              f"({limits.max_seconds:.0f} s)")
    rate = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
    if declared and rate and declared / rate > limits.max_seconds * 1.01 + 1:
        raise VideoUnreadable(f"limit: video declares {declared} frames at {rate:g} fps, over "
                              f"FSQ_MAX_VIDEO_SECONDS ({limits.max_seconds:.0f} s)")
    for s in container.streams:
        if s is not stream:
            s.discard = "all"            # never decode audio, subtitles or other video tracks
    ctx.thread_type = "SLICE"
    ctx.thread_count = 1

    targets = sample_times(duration, limits.max_frames)
    out = VideoFrames([], [], duration, codec, w, h, declared)

    def over_budget() -> None:
        if clock() - t0 > limits.budget_s:
            raise VideoUnreadable(f"budget: {out.decoded_frames} frames of {w}x{h} ({codec}) "
                                  f"decoded in {limits.budget_s:.0f} s")

    try:
        _walk(container, stream, tb, targets, limits, fit, out, over_budget, w, h, codec)
    except VideoUnreadable as exc:
        if not out.frames:
            raise
        out.incomplete = exc.reason
    if not out.frames:
        raise VideoUnreadable(f"no decodable frame in the video ({codec})")
    return out


def _walk(container, stream, tb, targets, limits: VideoLimits, fit: int, out: VideoFrames,
          over_budget, w: int, h: int, codec: str) -> None:
    scene_budget = max(0, limits.max_frames // 4)
    last_small = None
    pixels = 0
    last_time = -1.0
    ti = 0
    frames_iter = None
    while ti < len(targets):
        target = targets[ti]
        if frames_iter is None or (target - last_time > SEEK_GAP_S and last_time >= 0):
            if last_time >= 0 and tb is not None:
                container.seek(int(target / tb) + (stream.start_time or 0), stream=stream,
                               backward=True, any_frame=False)
            frames_iter = container.decode(stream)
        got = None
        for frame in frames_iter:
            out.decoded_frames += 1
            fw, fh = frame.width, frame.height
            if fw * fh > limits.max_pixels:
                raise VideoUnreadable(f"limit: a {fw}x{fh} frame ({codec}) exceeds "
                                      f"FSQ_MAX_PIXELS ({limits.max_pixels})")
            pixels += fw * fh
            if pixels > limits.max_total_pixels:
                raise VideoUnreadable(f"budget: {out.decoded_frames} frames of {fw}x{fh} "
                                      f"({codec}) exceed the decoded-pixel budget")
            over_budget()
            ft = float(frame.time) if frame.time is not None else last_time + 1e-3
            last_time = ft
            if ft + 1e-3 >= target or not out.frames and ti == 0:
                got = frame
                break
            if scene_budget and last_small is not None:
                small = _small(frame)
                if float(np.abs(small - last_small).mean()) > SCENE_DIFF:
                    scene_budget -= 1
                    last_small = small
                    out.frames.append(_rgb(frame, fit))
                    out.timestamps.append(round(ft, 3))
                    out.scene_changes.append(round(ft, 3))
        if got is None:
            break                        # stream ended (duration overstated, or truncated)
        out.frames.append(_rgb(got, fit))
        out.timestamps.append(round(last_time, 3))
        if scene_budget:
            last_small = _small(got)
        ti += 1
        while ti < len(targets) and targets[ti] <= last_time + 1e-3:
            ti += 1                      # this frame already stands for those targets
    if ti < len(targets) and out.frames:
        out.notes.append(f"stream ended at {last_time:.2f} s of {out.duration:.2f} s declared")
