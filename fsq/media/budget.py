"""What one file may cost to decode (issue 11), and the request that carries it.

Two budgets, both per file:

* **pixels**: the pixels a decoder has to produce, counted as the logical screen (canvas)
  times the frames walked. Animated GIF/WebP/APNG composite every earlier frame to reach a
  later one, so reaching frame ``i`` costs ``screen x (i + 1)`` whatever the frames' own
  sizes are; 1,500 1x1 frames on a 7999x7999 screen (34 KB) are 96 billion pixels. Checked
  *before* walking: frames beyond the budget are not sampled and the file is marked
  incomplete (``budget: 1500 frames on 7999x7999``).
* **CPU seconds**: enforced from outside by the decode pool (fsq.media.pool), which kills the
  worker process at the budget; that also covers what the pixel count cannot foresee.

``max_pixels`` (FSQ_MAX_PIXELS) is the decompression-bomb guard of any single frame or page;
it is also what Pillow's own guard is set to during our calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DecodeRequest:
    max_pixels: int = 64_000_000        # FSQ_MAX_PIXELS: one frame/page
    budget_pixels: int = 1_000_000_000  # FSQ_DECODE_PIXELS: screen x frames walked
    fit: int = 512                      # frames are shrunk to fit fit x fit
    max_frames: int = 32                # FSQ_MAX_FRAMES: sampled from an animation/video
    max_video_seconds: int = 3600       # FSQ_MAX_VIDEO_SECONDS
    video_budget_ms: int = 8000         # wall-clock budget of one video's frame sampling
    max_embedded: int = 4               # embedded images carved from appended data

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, int]) -> "DecodeRequest":
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def sample_indices(n: int, k: int) -> list[int]:
    """Up to ``k`` frame indices spread over ``n`` frames, first and last included."""
    if n <= k:
        return list(range(n))
    if k <= 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def walkable_frames(screen_pixels: int, n_frames: int, budget_pixels: int) -> int:
    """How many leading frames fit the pixel budget (at least 1: frame 0 costs one screen,
    which FSQ_MAX_PIXELS bounds already)."""
    per = max(1, screen_pixels)
    return max(1, min(n_frames, budget_pixels // per))


def budget_reason(n_frames: int, w: int, h: int, budget_pixels: int, walked: int) -> str:
    return (f"budget: {n_frames} frames on {w}x{h} ({n_frames * w * h} pixels to composite, "
            f"over the budget of {budget_pixels}, FSQ_DECODE_PIXELS); only the first "
            f"{walked} were examined")
