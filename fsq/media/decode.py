"""Decoding untrusted image bytes into a few RGB frames for the classifier.

Everything here parses attacker-controlled bytes, so:

* The format is recognised from magic bytes, never from the file name, and only the formats
  pict-rs stores are opened, each by its own Pillow plugin only (fsq.media.sniff.ALLOWED).
* The decompression-bomb guard (``max_pixels``, FSQ_MAX_PIXELS) holds for *every* frame and
  page: Pillow's own guard is set to it for the duration of the call (and its warning made an
  error), and the size is checked again after every seek, before any pixel of that frame is
  decoded.
* Animations are walked under a pixel budget (fsq.media.budget): frames past the budget are
  not sampled and the file is marked ``incomplete``. The CPU budget is enforced from outside
  (fsq.media.pool runs this in a worker process and kills it at the budget).
* A file whose data ends early is decoded in Pillow's truncated mode, per call, and classified
  with its truncation facts (fsq.media.truncated); only a file with nothing decodable is
  ``Unreadable``.
* JPEGs are decoded in draft mode (DCT scaling) straight to about the size we need, and every
  frame but a strip is shrunk by an integer box reduction first (``SHRINK_REDUCING_GAP``): the
  cost of the shrink then follows the frame's output size, not its decoded size (issue 20;
  the model input moves within the agreement bound stated in docs/performance.md and tested
  in tests/test_decode_cost.py). No limit below depends on the shrink: it runs on a frame
  that already passed every check.
* Every failure becomes ``Unreadable(reason)``: one bad file never stops a run (invariant 6).

Pillow's switches (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``, the
warning filters) are process-global. They are set only inside ``_pillow_settings``, under
``_PILLOW_LOCK``, and restored on the way out; in a decode worker process nothing else runs,
so they are in effect per call there. In-process callers (tests, the model-only benchmark)
are serialised by the same lock.

Frames are returned shrunk to fit ``fit`` x ``fit`` (512 by default, as the calibrated rule
expects), RGB, with transparency composited on white.
"""

from __future__ import annotations

import io
import math
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from PIL import Image, ImageFile, UnidentifiedImageError

from fsq.media import truncated
from fsq.media.budget import (DecodeRequest, budget_reason, sample_indices,
                              walkable_frames)
from fsq.media.sniff import ALLOWED, VIDEO_TYPES, allowed_names, sniff

_PILLOW_LOCK = threading.RLock()

# Pillow signals corrupt or truncated data with a variety of exception types.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                  KeyError, ZeroDivisionError, struct.error)
# Pillow's guard: the error, and the warning that _pillow_settings turns into an error.
_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


# Pillow's ``reducing_gap`` for the shrink to fit: 1.0 = reduce by the whole integer factor
# (box filter, cheap), then bicubic over the remaining factor (< 2). Pillow's thumbnail default
# (2.0) keeps a 2x margin for the bicubic pass, which then costs per *decoded* pixel: measured
# 5-12 ms of a 0.3-2 MP frame's 13-33 ms decode. 1.0 halves that; the model input moves by
# about a quarter of a grey level on average (docs/performance.md, "Decode cost").
SHRINK_REDUCING_GAP = 1.0
SHRINK_FILTER = Image.Resampling.BICUBIC
# Frames whose fitted short side is under this keep the previous shrink (draft at fit x fit,
# gap 2.0): they cost little, and the model's crop stretches their few rows, so the cheap path
# would move their input most (a 37 x 2000 strip: similarity delta 0.003 instead of < 0.002).
SHRINK_FAST_MIN_SIDE = 128


def fit_size(w: int, h: int, box: int) -> tuple[int, int]:
    """The size ``Image.thumbnail((box, box))`` gives a ``w`` x ``h`` frame (its rounding)."""
    if w <= box and h <= box:
        return w, h
    aspect = w / h
    x, y = box, box
    if x / y >= aspect:
        x = max(min(math.floor(y * aspect), math.ceil(y * aspect),
                    key=lambda n: abs(aspect - n / y)), 1)
    else:
        y = max(min(math.floor(x / aspect), math.ceil(x / aspect),
                    key=lambda n: 0 if n == 0 else abs(aspect - x / n)), 1)
    return x, y


# Modes shrunk before the conversion to RGB, where the two commute exactly (per-channel
# resize): a grey JPEG converts 512-fit pixels instead of the decoded ones (0.6 of the before
# CPU). Not alpha: Pillow resizes it premultiplied, which commutes with the composite on white
# only within rounding (twice the input difference) and measured no faster; not palette
# images, which resize as NEAREST.
_SHRINK_FIRST: tuple[str, ...] = ("RGB", "L")


def _draft_size(w: int, h: int, fit: int) -> tuple[int, int]:
    """What a JPEG's draft is asked for (fsq.media.cost swaps it to measure the old path)."""
    target = fit_size(w, h, fit)
    return target if min(target) >= SHRINK_FAST_MIN_SIDE else (fit, fit)


def _shrink(fr: Image.Image, w: int, h: int, fit: int) -> Image.Image:
    """``fr`` (frame of size w x h, maybe drafted smaller) shrunk to fit ``fit`` x ``fit``."""
    target = fit_size(w, h, fit)   # from the frame's own size: a draft rounds differently
    gap = SHRINK_REDUCING_GAP if min(target) >= SHRINK_FAST_MIN_SIDE else 2.0
    return fr.resize(target, SHRINK_FILTER, reducing_gap=gap)


class Unreadable(Exception):
    """Nothing decodable; ``reason`` is short, human text. ``kind``: 'undecodable',
    'refused' (format not allowed), 'bomb' (FSQ_MAX_PIXELS) or 'budget' (pixels/CPU)."""

    def __init__(self, reason: str, media_type: str | None = None,
                 kind: str = "undecodable", facts: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.media_type = media_type
        self.kind = kind
        self.facts = facts or {}


@dataclass
class Decoded:
    frames: list[Image.Image]
    media_type: str
    width: int
    height: int
    n_frames: int            # frames in the file (only some are sampled)
    sampled: list[int] = field(default_factory=list)  # frame indices in ``frames``
    # Why part of the file was not examined (pixel budget, a bomb in a later frame): a file
    # that does not flag on the frames that were examined is then 'unreadable' with this
    # reason, not 'clean'.
    incomplete: str | None = None
    truncated: dict[str, int] | None = None  # fsq.media.truncated facts, if data ends early
    # One label per frame in ``frames``: "frame 3", "3.00 s" (video), "appended png at byte
    # 5120" (an image carved from data past the file's end).
    labels: list[str] = field(default_factory=list)
    times: list[float] | None = None         # video: timestamp of each own frame, seconds
    # fsq.media.container facts when the file carries data past its real end.
    appended: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # Which frames go to the model (fsq.classify.frameskip.FramePlan), set where the frames are
    # preprocessed; None = every frame (FSQ_FRAME_SKIP=0, or a single frame).
    frame_plan: Any = None

    def facts(self) -> dict[str, Any]:
        """What the verdict records beside the classifier's scores."""
        out: dict[str, Any] = {}
        if self.truncated:
            out["truncated"] = dict(self.truncated)
            out["truncated_reason"] = truncated.describe(self.truncated)
        if self.incomplete:
            out["incomplete"] = self.incomplete
        if self.times is not None:
            out["frame_times"] = list(self.times)
        if self.appended:
            out["appended"] = dict(self.appended)
        if self.notes:
            out["decode_notes"] = list(self.notes)
        return out

    _META = ("media_type", "width", "height", "n_frames", "sampled", "incomplete", "truncated",
             "labels", "times", "appended", "notes")

    def meta(self) -> dict[str, Any]:
        """Everything but the pixels, JSON-able (the decode worker's answer)."""
        return {k: getattr(self, k) for k in self._META}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], frames: list[Image.Image]) -> "Decoded":
        return cls(frames, **{k: meta.get(k) for k in cls._META if k in meta}) \
            ._fill_defaults()

    def _fill_defaults(self) -> "Decoded":
        self.sampled = self.sampled or []
        self.labels = self.labels or []
        self.notes = self.notes or []
        return self


@contextmanager
def _pillow_settings(max_pixels: int, load_truncated: bool) -> Iterator[None]:
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF/ICC noise from hostile files; not actionable
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old_max, old_trunc = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_max, old_trunc


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB") if im.mode != "RGB" else im


def _bomb(w: int, h: int, limit: int, mt: str | None, where: str = "") -> Unreadable:
    return Unreadable(f"decompression-bomb guard: {where}{w}x{h} = {w * h} pixels exceeds "
                      f"the limit of {limit} (FSQ_MAX_PIXELS)", mt, kind="bomb")


def _pillow_bomb(exc: Exception, mt: str | None, where: str = "") -> Unreadable:
    return Unreadable(f"decompression-bomb guard{' ' + where if where else ''}: {exc} "
                      "(FSQ_MAX_PIXELS)", mt, kind="bomb")


def decode(data: bytes, req: DecodeRequest | None = None, *, max_pixels: int | None = None,
           fit: int | None = None, max_frames: int | None = None,
           on_facts: Any = None) -> Decoded:
    """Decode ``data`` in this process (see the module docstring for who may call this
    directly). ``on_facts(dict)`` is told the size and frame count as soon as the header is
    read, before any pixel is decoded (the pool reports them if it has to kill the worker)."""
    req = req or DecodeRequest()
    over = {k: v for k, v in (("max_pixels", max_pixels), ("fit", fit),
                              ("max_frames", max_frames)) if v is not None}
    if over:
        req = DecodeRequest(**{**req.to_json(), **over})
    if not data:
        raise Unreadable("empty file (0 bytes)")
    mt = sniff(data)
    d = _video(data, mt, req, on_facts) if mt in VIDEO_TYPES else _still(data, mt, req,
                                                                          on_facts)
    return _appended(data, d, req)


def _still(data: bytes, mt: str | None, req: DecodeRequest, on_facts: Any) -> Decoded:
    """An image or animation (every format but video)."""
    if mt is None:
        raise Unreadable("not an image (unrecognised format)")
    fmt = ALLOWED.get(mt)
    if fmt is None:
        raise Unreadable(f"format not allowed: {mt} (fsq decodes only {allowed_names()}, "
                         "the formats pict-rs stores)", mt, kind="refused")
    try:
        with _pillow_settings(req.max_pixels, load_truncated=False):
            return _decode(data, mt, fmt, req, on_facts)
    except Unreadable:
        raise
    except _BOMBS as exc:
        raise _pillow_bomb(exc, mt) from None
    except _DECODE_ERRORS as exc:
        first_error = str(exc).strip() or exc.__class__.__name__
    except MemoryError:
        raise Unreadable("decoding needed more memory than the decoder may use", mt) from None
    # Strict decoding failed: decode what is there.
    for candidate in truncated.salvage(data, mt):
        try:
            with _pillow_settings(req.max_pixels, load_truncated=True):
                d = _decode(candidate, mt, fmt, req, None, partial_of=data)
        except Unreadable:
            raise
        except (*_DECODE_ERRORS, MemoryError):
            continue
        if d.truncated is not None and d.truncated.get("rows_decoded", 1) == 0:
            break  # nothing of the picture was there
        return d
    raise Unreadable(f"corrupt or truncated image: {first_error[:200]}", mt) from None


def _decode(data: bytes, mt: str, fmt: str, req: DecodeRequest, on_facts: Any,
            partial_of: bytes | None = None) -> Decoded:
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except UnidentifiedImageError:
        raise Unreadable(f"not a decodable {mt} (damaged header)", mt) from None
    except _BOMBS as exc:
        raise _pillow_bomb(exc, mt) from None
    with im:
        return _frames(im, data, mt, req, on_facts, partial_of)


def _frames(im: Image.Image, data: bytes, mt: str, req: DecodeRequest, on_facts: Any,
            partial_of: bytes | None) -> Decoded:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise Unreadable("image has no pixels", mt)
    if w * h > req.max_pixels:
        raise _bomb(w, h, req.max_pixels, mt)
    out_type = Image.MIME.get(im.format or "", mt)
    if mt == "image/apng" or (out_type == "image/png" and getattr(im, "is_animated", False)):
        out_type = "image/apng"
    n = int(getattr(im, "n_frames", 1) or 1)
    if on_facts is not None:
        on_facts({"media_type": out_type, "width": w, "height": h, "n_frames": n})
    # The pixel budget: reaching frame i composites i + 1 screens.
    walk = walkable_frames(w * h, n, req.budget_pixels) if n > 1 else 1
    incomplete = budget_reason(n, w, h, req.budget_pixels, walk) if walk < n else None
    if n == 1 and w * h > req.budget_pixels:
        raise Unreadable(f"budget: one {w}x{h} frame is over the budget of "
                         f"{req.budget_pixels} pixels (FSQ_DECODE_PIXELS)", mt, kind="budget")
    indices = sample_indices(walk, req.max_frames)
    frames: list[Image.Image] = []
    sampled: list[int] = []
    trunc: dict[str, int] | None = None
    for i in indices:
        try:
            if n > 1:
                im.seek(i)
            fw, fh = im.size  # a later frame may claim more than the first (GIF)
            if fw * fh > req.max_pixels:
                raise _bomb(fw, fh, req.max_pixels, mt, f"frame {i} is ")
            if im.format == "JPEG":
                # DCT scaling to the smallest scale still >= the fitted size (both sides): a
                # wide image needs only its long side at ``fit``, not both.
                im.draft("RGB", _draft_size(fw, fh, req.fit))
            im.load()
            if partial_of is not None and not frames:
                trunc = truncated.estimate(partial_of, mt, im)
            fr = im.copy() if n > 1 else im
            if fr.mode in _SHRINK_FIRST and (fr.width > req.fit or fr.height > req.fit):
                fr = _shrink(fr, fw, fh, req.fit)
            fr = _to_rgb(fr)
            fr.load()
        except (Unreadable, *_BOMBS, *_DECODE_ERRORS) as exc:
            if not frames:
                if isinstance(exc, _BOMBS):
                    raise _pillow_bomb(exc, mt, f"at frame {i}") from None
                raise
            # Frames before this one decoded: classify them; the rest was not examined.
            if isinstance(exc, Unreadable):
                why = exc.reason
            elif isinstance(exc, _BOMBS):
                why = f"decompression-bomb guard at frame {i}: {exc} (FSQ_MAX_PIXELS)"
            else:
                why = f"frame {i} could not be decoded: {str(exc).strip()[:120]}"
            incomplete = incomplete or why
            if not isinstance(exc, (Unreadable, *_BOMBS)):
                trunc = trunc or truncated.estimate(data, mt, None)
            break
        if fr.width > req.fit or fr.height > req.fit:
            fr = _shrink(fr, fw, fh, req.fit)
        frames.append(fr)
        sampled.append(i)
    if partial_of is None and trunc is None:
        low = truncated.missing_bytes_min(data, mt)
        if low:  # decoded fine, yet the structure says the end is missing
            trunc = truncated.estimate(data, mt, None)
    labels = [f"frame {i}" for i in sampled] if n > 1 else ["image"]
    return Decoded(frames, out_type, w, h, n, sampled, incomplete=incomplete, truncated=trunc,
                   labels=labels)


def _video(data: bytes, mt: str, req: DecodeRequest, on_facts: Any) -> Decoded:
    """Sampled frames of a video (fsq.media.video), under the request's limits."""
    from fsq.media.video import VideoLimits, VideoUnreadable, decode_video
    limits = VideoLimits(max_frames=req.max_frames, max_seconds=float(req.max_video_seconds),
                         max_pixels=req.max_pixels, max_total_pixels=req.budget_pixels,
                         budget_s=req.video_budget_ms / 1000)
    try:
        v = decode_video(data, limits=limits, fit=req.fit)
    except VideoUnreadable as exc:
        kind = ("bomb" if "FSQ_MAX_PIXELS" in exc.reason else
                "budget" if exc.reason.startswith(("budget", "limit")) else "undecodable")
        raise Unreadable(exc.reason, mt, kind=kind) from None
    if on_facts is not None:
        on_facts({"media_type": mt, "width": v.width, "height": v.height,
                  "n_frames": v.declared_frames})
    notes = [f"codec {v.codec}, {v.duration:.2f} s, {v.decoded_frames} frames decoded"]
    notes += v.notes
    if v.scene_changes:
        notes.append("scene changes kept at " + ", ".join(f"{t:.2f} s" for t in
                                                          v.scene_changes))
    return Decoded(v.frames, mt, v.width, v.height, v.declared_frames or v.decoded_frames,
                   list(range(len(v.frames))), incomplete=v.incomplete,
                   labels=[f"{t:.2f} s" for t in v.timestamps], times=list(v.timestamps),
                   notes=notes)


def _appended(data: bytes, d: Decoded, req: DecodeRequest) -> Decoded:
    """Container check (fsq.media.container): data past the file's real end is recorded, and
    every embedded image or video found there is decoded under the same limits and its frames
    are added for the classifier (labelled), so the file flags if any of them does."""
    from fsq.media import container
    facts = container.check(data, d.media_type if d.media_type in container.WALKERS else
                            sniff(data))
    if not facts.suspicious:
        return d
    info: dict[str, Any] = {**facts.to_json(), "reason": facts.describe(),
                            "kinds": facts.kinds(), "classified": [], "undecodable": []}
    carved = 0
    for e in facts.embedded:
        if e.kind not in container.KIND_MEDIA or carved >= req.max_embedded:
            continue
        carved += 1
        part = container.carve(data, e)
        sub = DecodeRequest(**{**req.to_json(), "max_frames": min(req.max_frames, 8)})
        where = f"appended {e.kind} at byte {e.offset}"
        try:
            mt = container.KIND_MEDIA[e.kind]
            inner = (_video(part, mt, sub, None) if mt in VIDEO_TYPES
                     else _still(part, sniff(part), sub, None))
        except Unreadable as exc:
            info["undecodable"].append({"kind": e.kind, "offset": e.offset,
                                        "reason": exc.reason})
            continue
        d.frames.extend(inner.frames)
        d.labels.extend(f"{where}, {lab}" if len(inner.frames) > 1 else where
                        for lab in inner.labels)
        d.sampled.extend(-1 for _ in inner.frames)   # not frames of the outer file
        info["classified"].append({"kind": e.kind, "offset": e.offset,
                                   "frames": len(inner.frames)})
    d.appended = info
    return d
