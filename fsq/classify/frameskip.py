"""Near-identical frames of one file are classified once (FSQ_FRAME_SKIP).

Why this exists: an animation or video is classified frame by frame (up to FSQ_MAX_FRAMES
sampled frames), and most of them are often the same picture again: a still scene, a looping
GIF of one photo, compression noise. Running the image tower on each costs as much as a new
file. Here, right after the frames are preprocessed (the same place in every engine: the local
scanner, the Ray decode task, the upload server), each frame is compared with the frames of the
same file already chosen for the model, and a frame whose difference from the nearest of them
is *below* the bound is not classified: it takes the decision of the frame it matched.

The difference measure, and why it is safe (docs/performance.md "Near-identical frames"):

* It is computed on the model's own input: the preprocessed 3 x S x S array (after the shrink,
  resize, centre crop), converted back to 8-bit levels (x std x 255). So it measures exactly
  what the model would have been shown for the skipped frame, not a proxy (a perceptual hash
  is built to ignore small but meaningful changes, and PDQ collisions can be forged).
* It is the *largest* per-block value over a grid of 8 x 8-pixel blocks, each block's value
  being the mean absolute difference over its pixels and the three channels. A maximum over
  small blocks, not a global mean: a change confined to a small region (a patch the size of
  one ViT patch, 14-32 px) shows at full strength in the blocks it covers instead of being
  averaged over the picture. The absolute value is taken before the mean, so fine-grained
  changes cannot cancel out inside a block (a difference of block means could be fooled).
* Every skipped frame is compared with the classified frames directly (the nearest one among
  the few a cheap lower bound ranks closest, ``MAX_CANDIDATES``), never only with the previous
  frame: a slow drift cannot chain small steps into a big change, every skipped frame is
  within the bound of something the model saw. The work per file stays linear in its frames.
* The bound is in 8-bit levels per pixel and channel; default 2.0: about the least that one
  JPEG save at quality 90-95 changes a textured picture by this measure (measured 1.9-5.4
  levels; 1.1-1.7 on smooth ones), a change the classifier must tolerate anyway since pict-rs
  re-encodes uploads and thumbnails. At most ``MAX_BOUND`` (8). Within the bound no block
  differs by more than bound/255 of full scale on average (a uniform 2-level shift, or about
  one pixel in 128 turned from black to white; one pixel in a block is already ~4): no
  picture can be drawn in that budget, so content that would flag cannot hide behind an
  innocent first frame: it differs perceptually, in some block, and is classified.
* 0 turns it off: nothing is compared and every sampled frame is classified, as before.

A skipped frame takes the decision of the frame it matched: ``FramePlan.expand`` rewrites the
file's decision so its per-frame list, embeddings and deciding-frame index cover all sampled
frames as if each had been classified (``fsq rescore`` and the reports see the usual shape),
and each skipped frame records ``same_as`` (the frame it matched) and its ``difference``. The
verdict's details carry ``frame_skip``: ``32 sampled, 4 classified, 28 near-identical``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

BLOCK = 8           # block edge, pixels of the model input
DEFAULT_BOUND = 2.0  # FSQ_FRAME_SKIP default, 8-bit levels
MAX_BOUND = 8.0      # the setting refuses more (see the module docstring)
MAX_CANDIDATES = 4   # kept frames measured exactly per frame (plan: bounded work)
MEASURE = f"max over {BLOCK}x{BLOCK} blocks of the model input of the mean |difference|, " \
          "8-bit levels"
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class FramePlan:
    """Which of a file's frames go to the model. Indices are positions in the file's frame
    list (``Decoded.frames``: sampled frames, then frames carved from appended data)."""

    n: int
    bound: float
    kept: list[int] = field(default_factory=list)          # classified, in order
    same_as: dict[int, int] = field(default_factory=dict)  # skipped -> kept frame it matched
    difference: dict[int, float] = field(default_factory=dict)  # skipped -> its difference

    def select(self, frames: Sequence[Any]) -> list[Any]:
        return [frames[i] for i in self.kept]

    def summary(self) -> str:
        return (f"{self.n} sampled, {len(self.kept)} classified, "
                f"{len(self.same_as)} near-identical")

    def to_json(self) -> dict[str, Any]:
        return {"sampled": self.n, "classified": len(self.kept),
                "near_identical": len(self.same_as), "bound": self.bound,
                "measure": MEASURE, "summary": self.summary()}

    def expand(self, decision: Any, position: int) -> int:
        """Make ``decision`` (the classifier's, over the kept frames; ``position`` is the
        deciding frame's position among them) cover all ``n`` frames; returns the deciding
        frame's index among all frames.

        The deciding frame stays the same frame: a skipped frame has the decision of an
        earlier kept frame, so it can never rank above the first frame that decided."""
        kept_per = list(getattr(decision, "per_frame", None) or [])
        if len(kept_per) != len(self.kept):
            # One kept frame: the classifier lists no frames; the file's decision is its own.
            kept_per = [{"index": 0, "flagged": bool(decision.flagged),
                         "fired": [f["text"] for f in decision.fired],
                         "underage_max": round(float(decision.underage_max), 5)}]
        row_of = {k: r for r, k in enumerate(self.kept)}
        per: list[dict[str, Any]] = []
        for i in range(self.n):
            if i in row_of:
                per.append({**kept_per[row_of[i]], "index": i})
            else:
                k = self.same_as[i]
                per.append({**kept_per[row_of[k]], "index": i, "same_as": k,
                            "difference": round(self.difference[i], 3)})
        decision.per_frame = per
        emb = getattr(decision, "embeddings", None)
        if emb is not None and len(emb) == len(self.kept):
            decision.embeddings = np.asarray(emb)[[row_of[self.same_as.get(i, i)]
                                                   for i in range(self.n)]]
        return self.kept[position]


def levels_scale(pre: Any) -> np.ndarray:
    """Per-channel factor from the model's normalised input back to 8-bit levels (the model's
    std x 255), shaped 3 x 1 x 1. ``pre``: the classifier or its shipped preprocessor."""
    std = getattr(pre, "_std", None)
    std = np.asarray(_OPENAI_STD if std is None else std, dtype=np.float32).reshape(-1)
    if std.size != 3:
        std = np.asarray(_OPENAI_STD, dtype=np.float32)
    return (std * np.float32(255.0)).reshape(3, 1, 1)


def _as_input(t: Any) -> np.ndarray | None:
    """The frame as a 3 x H x W float array, or None (not a model input: never skipped)."""
    try:
        a = np.asarray(t.numpy() if hasattr(t, "numpy") else t, dtype=np.float32)
    except (TypeError, ValueError, RuntimeError):
        return None
    if a.ndim != 3 or a.shape[0] != 3 or a.shape[1] < 1 or a.shape[2] < 1:
        return None
    return a if np.all(np.isfinite(a)) else None


def _block_sums(x: np.ndarray) -> np.ndarray:
    """Sums over BLOCK x BLOCK blocks of the last two axes (the last blocks may be smaller)."""
    h, w = x.shape[-2:]
    y = np.add.reduceat(x, np.arange(0, w, BLOCK), axis=-1)
    return np.add.reduceat(y, np.arange(0, h, BLOCK), axis=-2)


def _block_counts(h: int, w: int) -> np.ndarray:
    return _block_sums(np.ones((h, w), dtype=np.float32))


def difference(a: Any, b: Any, scale: np.ndarray | None = None) -> float:
    """The measure between two preprocessed frames (module docstring), in 8-bit levels."""
    x, y = _as_input(a), _as_input(b)
    if x is None or y is None or x.shape != y.shape:
        raise ValueError("expected two preprocessed frames of the same 3 x H x W shape")
    s = levels_scale(None) if scale is None else scale
    d = _block_sums(np.abs(x - y) * s).sum(axis=0) / (3 * _block_counts(*x.shape[1:]))
    return float(d.max())


def _exact(lv: np.ndarray, other: np.ndarray, counts: np.ndarray) -> float:
    """The measure between two frames already in levels (``counts``: pixels per block)."""
    return float((_block_sums(np.abs(lv - other)).sum(axis=0) / (3 * counts)).max())


def plan(frames: Sequence[Any], bound: float, scale: np.ndarray | None = None
         ) -> FramePlan | None:
    """Choose the frames to classify. None when skipping is off (``bound`` <= 0), there is
    one frame only, or the frames are not model inputs of one shape (then all are classified).

    Frame i is skipped when its difference from the nearest kept frame is < ``bound``. A
    cheap lower bound (per-channel block means: |mean(a - b)| <= mean|a - b|) rules most
    kept frames out before the exact measure is computed, so distinct frames cost little.
    The exact measure runs on at most ``MAX_CANDIDATES`` kept frames per frame (those with
    the smallest lower bounds): a hostile file whose frames all share their block means
    cannot make this quadratic; a frame not matched among them is classified (the safe
    side), so every skipped frame is still within the bound of a kept one."""
    if not bound or bound <= 0 or len(frames) < 2:
        return None
    arrays = [_as_input(f) for f in frames]
    first = arrays[0]
    if first is None or any(a is None or a.shape != first.shape for a in arrays):
        return None
    s = levels_scale(None) if scale is None else scale
    counts = _block_counts(*first.shape[1:])
    p = FramePlan(n=len(frames), bound=float(bound))
    kept_levels: list[np.ndarray] = []
    kept_means: list[np.ndarray] = []
    for i, a in enumerate(arrays):
        assert a is not None
        lv = a * s
        means = _block_sums(lv) / counts
        if kept_means:
            lower = np.abs(np.stack(kept_means) - means).mean(axis=1).max(axis=(1, 2))
            best, best_d = -1, float("inf")
            near = np.flatnonzero(lower < bound)
            for r in near[np.argsort(lower[near], kind="stable")][:MAX_CANDIDATES]:
                d = _exact(lv, kept_levels[r], counts)
                if d < best_d:
                    best, best_d = int(r), d
            if best >= 0 and best_d < bound:
                p.same_as[i] = p.kept[best]
                p.difference[i] = best_d
                continue
        p.kept.append(i)
        kept_levels.append(lv)
        kept_means.append(means)
    return p


def preprocess_frames(preprocess: Callable[[Any], Any], decoded: Any, bound: float,
                      pre: Any = None) -> list[Any]:
    """Preprocess ``decoded.frames`` and return the ones to classify; with skipping on, the
    plan is kept on ``decoded.frame_plan`` for the verdict (fsq.pipeline.clip_verdict).
    ``pre``: where the model's normalisation comes from (the classifier or preprocessor)."""
    tensors = [preprocess(f) for f in decoded.frames]
    p = plan(tensors, bound, levels_scale(pre)) if bound and bound > 0 else None
    decoded.frame_plan = p
    return tensors if p is None else p.select(tensors)
