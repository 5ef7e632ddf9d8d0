"""The near-identical-frames benchmark (``python -m fsq.bench --animations N``) and the
animations it scans (also used by the tests).

A store of N 100-frame animations (APNG, lossless, so the frame differences are exactly the
generated ones; never real content), in three kinds, in turn:

* ``still``: one synthetic picture; every frame adds fresh +-1-level noise to a quarter of
  its pixels (the dither/sensor noise of a still scene);
* ``cut``: the same, but the second half of the frames shows another picture (a scene cut);
* ``drift``: the picture brightens by 0.25 levels per frame (25 levels over the file), so no
  two distant frames are near-identical although neighbours always are.

It scans the store twice, exactly as `fsq scan --all --dry-run` wires it (fresh state
database each time): with FSQ_FRAME_SKIP at its default and with 0 (every sampled frame
classified, as before the setting existed), and prints the frames classified per file (from
the verdicts' own records), the ratio, the files/s of both passes, and whether every verdict
is the same (outcome, method, reason, fired concepts, deciding frame). Then, model only, the
largest change of any concept similarity between a skipped frame and the frame it took its
verdict from, beside what one JPEG save (quality 90) of the classified frames changes.
"""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

KINDS = ("still", "cut", "drift")


def base_picture(seed: int, size: tuple[int, int] = (256, 192)) -> np.ndarray:
    from fsq.synth import synthetic_image
    return np.asarray(synthetic_image(random.Random(seed), *size), dtype=np.float32)


def animation(kind: str = "still", *, n: int = 100, seed: int = 0,
              size: tuple[int, int] = (256, 192),
              patch: tuple[tuple[int, int, int, int], tuple[int, int, int], set[int]]
              | None = None) -> bytes:
    """APNG bytes of one generated animation (module docstring). ``patch``: ((x, y, w, h),
    RGB, frame indices): a rectangle of that colour drawn on those frames only."""
    rng = np.random.default_rng(seed)
    a = base_picture(seed, size)
    b = base_picture(seed + 1000, size) if kind == "cut" else a
    frames = []
    for i in range(n):
        pic = b if kind == "cut" and i >= n // 2 else a
        noise = rng.integers(-1, 2, pic.shape) * (rng.random(pic.shape[:2]) < 0.25)[..., None]
        arr = pic + noise + (0.25 * i if kind == "drift" else 0.0)
        if patch is not None and i in patch[2]:
            (x, y, w, h), colour, _ = patch
            arr = arr.copy()
            arr[y:y + h, x:x + w] = colour
        frames.append(Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB"))
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], duration=40, loop=0,
                   compress_level=1)
    return buf.getvalue()


def build_store(root: Path, n: int, *, seed: int = 0) -> list[str]:
    """``n`` animations under ``root`` (pict-rs-shaped keys); reused when already built."""
    from fsq.synth import pictrs_key
    mark = root.with_name(root.name + ".fsq-bench.json")
    want = {"animations": n, "seed": seed, "format": 1}
    if mark.is_file() and json.loads(mark.read_text()).get("want") == want:
        return list(json.loads(mark.read_text())["keys"])
    import shutil
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    keys = []
    for i in range(n):
        key = pictrs_key(rng, "apng")
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(animation(KINDS[i % len(KINDS)], seed=seed * 1000 + i))
        keys.append(key)
    mark.write_text(json.dumps({"want": want, "keys": keys}))
    return keys


def _settings(model: str, pretrained: str, db: Path, store: Path, frame_skip: float | None,
              workdir: Path, batch_size: int, threads: int) -> Any:
    from fsq.config import load_settings
    over: dict[str, Any] = {"model": model, "pretrained": pretrained, "device": "cpu",
                            "db": str(db), "source": f"file://{store}", "log_level": "error",
                            "batch_size": batch_size, "threads": threads}
    if frame_skip is not None:
        over["frame_skip"] = frame_skip
    return load_settings(over, environ={}, cwd=workdir)


def scan(model: str, pretrained: str, store: Path, workdir: Path, frame_skip: float | None,
         *, batch_size: int = 8, threads: int = 0) -> dict[str, Any]:
    """One dry-run pass over ``store`` (fresh database); frames classified and verdicts."""
    from fsq.bench import dry_run_pass, remove_db
    label = "default" if frame_skip is None else str(frame_skip)
    db = workdir / f"frames-{label}.db"
    remove_db(db)
    settings = _settings(model, pretrained, db, store, frame_skip, workdir, batch_size,
                         threads)
    verdicts: dict[str, Any] = {}
    classified: list[int] = []
    with dry_run_pass(settings) as (conn, s):
        for r in conn.execute("SELECT o.key, v.outcome, v.method, v.reason, v.details "
                              "FROM objects o JOIN verdicts v ON v.id = o.verdict_id"):
            d = json.loads(r["details"] or "{}")
            skip = d.get("frame_skip")
            classified.append(skip["classified"] if skip else len(d.get("frames_sampled")
                                                                  or [0]))
            # The deciding frame of a clean file is the one that came closest (noise can
            # pick another near-identical one); of a flagged file, the first that flagged.
            verdicts[r["key"]] = (r["outcome"], r["method"], r["reason"],
                                  sorted(f["text"] for f in d.get("fired", [])),
                                  d.get("frame") if r["outcome"] == "flagged" else None)
    return {"frame_skip": settings.frame_skip, "files": s.scanned, "seconds": s.seconds,
            "files_per_s": s.scanned / s.seconds if s.seconds else 0.0,
            "frames_classified": sum(classified),
            "frames_per_file": sum(classified) / max(1, len(classified)),
            "flagged": s.flagged, "verdicts": verdicts}


def similarity_check(model: str, pretrained: str, store: Path, keys: list[str],
                     workdir: Path, bound: float) -> dict[str, Any]:
    """Model only: max |similarity change| of a skipped frame vs the frame it matched, and
    of a JPEG quality-90 save of the classified frames (what re-encoding alone does)."""
    import torch

    from fsq.classify import frameskip
    from fsq.media import decode
    from fsq.runtime import build_classifier
    clf = build_classifier(_settings(model, pretrained, workdir / "unused.db", store, None,
                                     workdir, 8, 0))
    skipped_max, jpeg_max, skipped = 0.0, 0.0, 0
    for key in keys:
        d = decode((store / key).read_bytes())
        tensors = [clf.preprocess(f) for f in d.frames]
        p = frameskip.plan(tensors, bound, frameskip.levels_scale(clf))
        if p is None:
            continue
        sims = clf.similarities(torch.stack(tensors))
        for i, k in p.same_as.items():
            skipped_max = max(skipped_max, float(np.abs(sims[i] - sims[k]).max()))
            skipped += 1
        again = []
        for k in p.kept:
            buf = io.BytesIO()
            d.frames[k].save(buf, "JPEG", quality=90)
            again.append(clf.preprocess(Image.open(io.BytesIO(buf.getvalue()))))
        jsims = clf.similarities(torch.stack(again))
        jpeg_max = max(jpeg_max, float(np.abs(jsims - sims[p.kept]).max()))
    return {"skipped_frames": skipped, "skipped_sim_delta_max": skipped_max,
            "jpeg90_sim_delta_max": jpeg_max, "model_id": clf.model_id}


def run(work: Path, n: int, model: str, pretrained: str, *, batch_size: int = 8,
        threads: int = 0) -> dict[str, Any]:
    store = work / "animation-store"
    t0 = time.monotonic()
    keys = build_store(store, n)
    build_s = time.monotonic() - t0
    skip = scan(model, pretrained, store, work, None, batch_size=batch_size, threads=threads)
    off = scan(model, pretrained, store, work, 0.0, batch_size=batch_size, threads=threads)
    same = skip.pop("verdicts") == off.pop("verdicts")
    ratio = skip["frames_per_file"] / off["frames_per_file"] if off["frames_per_file"] else 0
    check = similarity_check(model, pretrained, store, keys[:min(len(keys), 6)], work,
                             skip["frame_skip"])
    return {"animations": n, "frames_per_animation": 100, "build_seconds": build_s,
            "skip": skip, "off": off, "ratio": ratio, "same_verdicts": same, **check}


def report(r: dict[str, Any]) -> list[str]:
    s, o = r["skip"], r["off"]
    ok = r["ratio"] <= 0.20 and r["same_verdicts"]
    return [f"near-identical frames ({r['animations']} animations of "
            f"{r['frames_per_animation']} frames: still, scene cut, slow drift; "
            f"{r['model_id']}):",
            f"  FSQ_FRAME_SKIP={s['frame_skip']:g}: {s['frames_per_file']:.2f} frames "
            f"classified per file, {s['files_per_s']:.2f} files/s",
            f"  FSQ_FRAME_SKIP=0: {o['frames_per_file']:.2f} frames classified per file, "
            f"{o['files_per_s']:.2f} files/s",
            f"  ratio {100 * r['ratio']:.1f}% of the frames, verdicts "
            f"{'identical' if r['same_verdicts'] else 'DIFFERENT'} "
            f"(target <= 20%, same verdicts: {'met' if ok else 'NOT met'})",
            f"  similarity change, skipped frame vs the frame it matched: max "
            f"{r['skipped_sim_delta_max']:.5f} over {r['skipped_frames']} frames; one JPEG "
            f"q90 save of the classified frames: max {r['jpeg90_sim_delta_max']:.5f}"]
