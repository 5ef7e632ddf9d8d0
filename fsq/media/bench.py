"""Decode benchmark for videos: ``python -m fsq.media.bench`` (not imported by the core).

Builds a small store of synthetic videos (fsq.synth: 4-second H.264 MP4 and VP9 WebM with a
cut halfway) and decodes every file the way the scanner does (fsq.media.decode with the
scanner's request: FSQ_MAX_FRAMES sampling, scene changes, limits), in this process and
through the decode-worker pool. Prints files/s, sampled frames/s and frames per file, beside
the same for a store of stills as the same-run baseline (ratios, not seconds, carry over to
other machines).

``--cost N``: instead, decode + preprocess CPU per file of N stills, now against the decode
before issue 20, with the model-input differences (fsq.media.cost; docs/performance.md,
"Decode cost").
"""

from __future__ import annotations

import argparse
import os
import random
import time

from fsq.media import DecodePool, DecodeRequest, decode


def _store(n: int, formats: tuple[str, ...], seed: int) -> list[bytes]:
    from fsq.synth import encode, synthetic_image
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = rng.randrange(320, 960), rng.randrange(240, 720)
        out.append(encode(synthetic_image(rng, w, h), formats[i % len(formats)], rng))
    return out


def _run(files: list[bytes], fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    frames = sum(len(fn(d).frames) for d in files)
    return time.perf_counter() - t0, frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fsq.media.bench", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--videos", type=int, default=24, help="videos in the store [24]")
    p.add_argument("--stills", type=int, default=48, help="stills in the baseline store [48]")
    p.add_argument("--workers", type=int, default=2, help="decode worker processes [2]")
    p.add_argument("--cost", type=int, default=0, metavar="N",
                   help="instead: decode + preprocess CPU per file of N stills (JPEG, PNG, "
                        "WebP, GIF, 0.3-2 MP), now against before issue 20 (fsq.media.cost)")
    args = p.parse_args(argv)
    if args.cost:
        import tempfile
        from pathlib import Path

        from fsq.media import cost
        from fsq.synth import make_store
        with tempfile.TemporaryDirectory(prefix="fsq-decode-cost-") as tmp:
            keys = make_store(tmp, args.cost, seed=0)
            files = [(k.rsplit(".", 1)[-1], (Path(tmp) / k).read_bytes()) for k in keys]
        print(cost.format_report(cost.measure(files, rounds=3)))
        return 0
    req = DecodeRequest()
    print("writing the synthetic stores ...", flush=True)
    stores = {"videos (mp4, webm)": _store(args.videos, ("mp4", "webm"), 1),
              "stills (jpeg, png, webp)": _store(args.stills, ("jpeg", "png", "webp"), 2)}
    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split()
                             if f in ("avx2", "avx512_bf16", "amx_bf16")}))
    print(f"machine: {os.cpu_count()} cores, flags: {flags}; load {os.getloadavg()[0]:.2f}")
    print(f"{'store':28s} {'where':10s} {'files/s':>9s} {'frames/s':>9s} {'frames/file':>11s}")
    with DecodePool(args.workers, 30.0) as pool:
        for name, files in stores.items():
            for where, fn in (("in-process", lambda d: decode(d, req)),
                              ("pool", lambda d: pool.decode(d, req))):
                secs, frames = _run(files, fn)
                print(f"{name:28s} {where:10s} {len(files) / secs:9.1f} {frames / secs:9.1f} "
                      f"{frames / len(files):11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
