"""Decode + preprocess CPU per file, today's path against the previous one (issue 20).

Used by ``python -m fsq.media.bench --cost`` and ``python -m fsq.bench --decode-cost``; not
imported by the core. Both paths run in this process, file by file, in the same run
(``time.process_time``: CPU seconds of this process, so other processes on a shared machine do
not count, though they still slow the caches), alternating which path goes first per round.

"before" is the decode of fsq before issue 20: JPEG draft requested at ``fit`` x ``fit`` and
the shrink to fit with Pillow's thumbnail default ``reducing_gap`` 2.0, then the previous
normalisation code. It is reproduced here by switching the two module-level hooks of
fsq.media.decode for the duration of a call, under the decoder's lock.

Agreement: for each file the model inputs of both paths are compared (max and mean absolute
difference, in normalised units: 1 uint8 level is about 1 / 255 / 0.27 = 0.0146).
"""

from __future__ import annotations

import importlib
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

# The module, not the function fsq.media re-exports under the same name.
dec = importlib.import_module("fsq.media.decode")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class Preprocessor:
    """ClipClassifier's preprocessing without a model (the ray engine's stand-in): ``size``
    224 is ViT-B-32's and ViT-L-14's input."""

    def __init__(self, size: int = 224, mean=OPENAI_MEAN, std=OPENAI_STD) -> None:
        from PIL import Image
        self.image_size = (size, size)
        self._mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self._std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)
        self._resample = Image.Resampling.BICUBIC
        self._resize_mode = "shortest"
        self._fill = 0

    def preprocess_array(self, img: Any) -> np.ndarray:
        from fsq.classify.clip import ClipClassifier
        return ClipClassifier.preprocess_array(self, img)  # type: ignore[arg-type]

    def _resize_crop(self, im: Any) -> Any:
        from fsq.classify.clip import ClipClassifier
        return ClipClassifier._resize_crop(self, im)  # type: ignore[arg-type]

    def preprocess_before(self, img: Any) -> np.ndarray:
        """The normalisation as it was before issue 20 (same resize and crop)."""
        from PIL import Image

        from fsq.classify.clip import SHRINK_TO, _shrink_size
        im = img if img.mode == "RGB" else img.convert("RGB")
        w, h = _shrink_size(im.width, im.height, SHRINK_TO)
        if (w, h) != im.size:
            im = im.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=2.0)
        im = self._resize_crop(im)
        arr = np.asarray(im, dtype=np.float32) * np.float32(1.0 / 255.0)
        arr = (arr - self._mean) / self._std
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


@contextmanager
def before_issue_20() -> Iterator[None]:
    """fsq.media.decode as it decoded before issue 20, for the duration of the block."""
    with dec._PILLOW_LOCK:
        saved = (dec.SHRINK_REDUCING_GAP, dec.SHRINK_FILTER, dec._draft_size, dec._shrink,
                 dec._SHRINK_FIRST)
        dec.SHRINK_REDUCING_GAP, dec.SHRINK_FILTER = 2.0, Image.Resampling.BICUBIC
        dec._draft_size = lambda w, h, fit: (fit, fit)
        dec._shrink = _thumbnail_before
        dec._SHRINK_FIRST = ()   # convert to RGB first, then shrink
        try:
            yield
        finally:
            (dec.SHRINK_REDUCING_GAP, dec.SHRINK_FILTER, dec._draft_size, dec._shrink,
             dec._SHRINK_FIRST) = saved


def _thumbnail_before(fr: Any, w: int, h: int, fit: int) -> Any:
    fr.thumbnail((fit, fit), Image.Resampling.BICUBIC)  # as before: in place, gap 2.0
    return fr


def _one(data: bytes, pre: Preprocessor, before: bool) -> tuple[float, list[np.ndarray]]:
    t0 = time.process_time()
    if before:
        with before_issue_20():
            d = dec.decode(data)
        arrs = [pre.preprocess_before(f) for f in d.frames]
    else:
        d = dec.decode(data)
        arrs = [pre.preprocess_array(f) for f in d.frames]
    return time.process_time() - t0, arrs


def measure(files: list[tuple[str, bytes]], *, rounds: int = 3, size: int = 224,
            embed: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """``files``: (format label, bytes). Per format and overall: CPU ms per file before and
    after (best round of each file: the least disturbed by neighbours), the ratio, and the
    model-input differences. ``embed(n x 3 x S x S) -> n x d`` (unit rows), if given, adds the
    embedding cosine between the two paths' inputs."""
    pre = Preprocessor(size)
    best: dict[int, list[float]] = {}
    diffs: dict[int, tuple[float, float]] = {}
    cos: dict[int, float] = {}
    for r in range(rounds):
        for i, (_fmt, data) in enumerate(files):
            order = (True, False) if (r + i) % 2 == 0 else (False, True)
            got: dict[bool, tuple[float, list[np.ndarray]]] = {b: _one(data, pre, b)
                                                               for b in order}
            cur = best.setdefault(i, [float("inf"), float("inf")])
            cur[0] = min(cur[0], got[True][0])
            cur[1] = min(cur[1], got[False][0])
            if r == 0:
                a, b = np.stack(got[True][1]), np.stack(got[False][1])
                d = np.abs(a - b)
                diffs[i] = (float(d.max()), float(d.mean()))
                if embed is not None:
                    ea, eb = embed(a), embed(b)
                    cos[i] = float(np.min(np.sum(ea * eb, axis=1)))
    out: dict[str, Any] = {"rounds": rounds, "size": size, "formats": {}}
    groups: dict[str, list[int]] = {}
    for i, (fmt, _) in enumerate(files):
        groups.setdefault(fmt, []).append(i)
    groups["all"] = list(range(len(files)))
    for fmt, idx in groups.items():
        b = sum(best[i][0] for i in idx) / len(idx)
        a = sum(best[i][1] for i in idx) / len(idx)
        row = {"files": len(idx), "before_ms": 1000 * b, "after_ms": 1000 * a,
               "ratio": a / b if b else None,
               "input_max_abs_diff": max(diffs[i][0] for i in idx),
               "input_mean_abs_diff": sum(diffs[i][1] for i in idx) / len(idx)}
        if cos:
            row["embedding_cosine_min"] = min(cos[i] for i in idx)
        out["formats"][fmt] = row
    return out


def format_report(res: dict[str, Any]) -> str:
    lines = [f"decode + preprocess CPU per file (best of {res['rounds']} rounds, model input "
             f"{res['size']}x{res['size']}), before issue 20 vs now, same run:",
             f"{'format':8s} {'files':>5s} {'before ms':>10s} {'now ms':>8s} {'ratio':>6s} "
             f"{'input max|d|':>12s} {'mean|d|':>8s}" +
             (f" {'cos min':>9s}" if any("embedding_cosine_min" in r
                                         for r in res["formats"].values()) else "")]
    for fmt, r in res["formats"].items():
        line = (f"{fmt:8s} {r['files']:5d} {r['before_ms']:10.1f} {r['after_ms']:8.1f} "
                f"{r['ratio']:6.2f} {r['input_max_abs_diff']:12.3f} "
                f"{r['input_mean_abs_diff']:8.4f}")
        if "embedding_cosine_min" in r:
            line += f" {r['embedding_cosine_min']:9.6f}"
        lines.append(line)
    ratio = res["formats"]["all"]["ratio"]
    lines.append(f"target decode + preprocess CPU <= 70% of before: "
                 f"{'met' if ratio <= 0.70 else 'NOT met'} ({100 * ratio:.0f}%)")
    return "\n".join(lines)
