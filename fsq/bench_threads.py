"""``python -m fsq.bench --neighbour N``: the model beside N busy processes, torch threads as
configured (today's default, or ``--threads``) against ``auto`` (fsq.classify.threads).

A neighbour is a pure CPU spin loop in its own Python process, the stand-in for pict-rs,
PostgreSQL or another scan keeping a core busy. They start before the measurement, and the
benchmark waits until the 1-minute load average shows them (``--neighbour-warmup`` seconds at
most: the kernel's average needs about a minute to rise by 0.6 per spinner), since that is
what ``auto`` reads, as it would on a server whose neighbours have been running for a while.
Then, neighbours still running, the model-only measurement (fsq.bench.run_model_only, each in
its own child process) runs with each thread setting in turn, the order alternating per round;
the best round of each is reported with the same-run ratio. They are stopped (by their own
process ids) however the benchmark ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

SPIN = "while True:\n    pass\n"


@contextmanager
def neighbours(n: int, warmup: float, log: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """``n`` spinning processes for the duration of the block; waits up to ``warmup`` seconds
    for the load average to show them. Yields what was seen."""
    base = os.getloadavg()[0]
    procs = [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n)]
    info: dict[str, Any] = {"neighbours": n, "load_before": round(base, 2)}
    try:
        if n and warmup > 0:
            log(f"{n} busy neighbour process(es) started; waiting up to {warmup:.0f} s for the "
                f"1-minute load average to show them (now {base:.2f}) ...")
        t0 = time.monotonic()
        while n and time.monotonic() - t0 < warmup:
            if os.getloadavg()[0] >= base + 0.6 * n:
                break
            time.sleep(1.0)
        info["warmup_s"] = round(time.monotonic() - t0, 1)
        info["load_at_start"] = round(os.getloadavg()[0], 2)
        yield info
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        info["load_at_end"] = round(os.getloadavg()[0], 2)


def run(name: str, keys: list[str], store: Path, work: Path, cache: Path, args: Any,
        measure: Callable[..., dict[str, Any]], model_files: Callable[..., tuple[str, str]],
        log: Callable[[str], None]) -> dict[str, Any]:
    """Model-only images/s of ``name`` beside ``args.neighbour`` spinners: the configured
    threads (``args.threads``, 0 = torch's default) against auto."""
    model, pretrained = model_files(name, cache)
    base = {"mode": "model", "model": model, "pretrained": pretrained,
            "batch_size": args.batch_size, "workers": args.workers,
            "precision": args.precision, "backend": args.backend, "store": str(store),
            "keys": keys, "workdir": str(work)}
    settings = {"configured": args.threads, "auto": "auto"}
    best: dict[str, dict[str, Any]] = {}
    with neighbours(args.neighbour, args.neighbour_warmup, log) as info:
        for r in range(args.rounds):
            order = list(settings) if r % 2 == 0 else list(settings)[::-1]
            for label in order:
                spec = dict(base, threads=settings[label])
                res = measure(spec)
                log(f"  {name} beside {args.neighbour} neighbour(s), threads "
                    f"{settings[label]}: {res['images_per_s']:.2f} images/s "
                    f"({res['threads']} torch threads)")
                if label not in best or res["images_per_s"] > best[label]["images_per_s"]:
                    best[label] = res
    c, a = best["configured"], best["auto"]
    return {**info, "model": name, "images": len(keys), "rounds": args.rounds,
            "configured_setting": args.threads, "precision": a.get("precision"),
            "configured": {"images_per_s": c["images_per_s"], "threads": c["threads"]},
            "auto": {"images_per_s": a["images_per_s"], "threads": a["threads"]},
            "ratio": a["images_per_s"] / c["images_per_s"]}


def report_lines(res: dict[str, Any]) -> list[str]:
    setting = res["configured_setting"]
    label = "torch's default" if setting in (0, "0") else f"--threads {setting}"
    return [f"{res['model']} model only beside {res['neighbours']} busy neighbour process(es) "
            f"(load average {res['load_at_start']} at start, {res['load_before']} before the "
            f"neighbours; precision {res['precision']}; best of {res['rounds']} rounds):",
            f"  {label}: {res['configured']['images_per_s']:.2f} images/s "
            f"({res['configured']['threads']} threads)",
            f"  --threads auto: {res['auto']['images_per_s']:.2f} images/s "
            f"({res['auto']['threads']} threads)",
            f"  auto / {label}: {res['ratio']:.2f}x"]
