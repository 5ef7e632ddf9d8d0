"""Local vs Ray engine on one synthetic store (docs/performance.md, "Ray engine").

    python -m fsq.engine.bench [--objects 120] [--cpus 1,2] [--model tiny] [--json]

Each configuration scans the same store in a fresh state database (dry run, so the store is
unchanged); Ray starts before the timed pass and a warm-up pass loads the model in the
actors, so the numbers are the steady pass, not Ray's or the model's start-up. ``--cpus`` are
the Ray CPUs for fetch/decode tasks; the classifier actor gets one more logical CPU of its
own (on this 2-core machine the logical CPUs overlap: measured under shared load)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _pass(settings: Any, store: Path, db: Path, engine: Any) -> dict[str, Any]:
    from fsq.ledger.db import connect
    from fsq.runtime import build_scanner
    from fsq.sources.base import open_source
    conn = connect(str(db))
    try:
        src = open_source(f"file://{store}", settings)
        sc = build_scanner(settings.replace(db=str(db)), conn, src, dry_run=True,
                           engine=engine)
        t0 = time.monotonic()
        s = sc.run_pass()
        dt = time.monotonic() - t0
        return {"seconds": round(dt, 3), "objects": s.scanned, "errors": s.errors,
                "per_s": round(s.scanned / dt, 1) if dt else None}
    finally:
        conn.close()


def run(n: int, cpus: list[int], model: str, work: Path) -> dict[str, Any]:
    from fsq.config import load_settings
    from fsq.engine.local import LocalEngine
    from fsq.engine.ray_engine import RayEngine, import_ray
    from fsq.synth import make_store
    ray = import_ray()
    if model != "tiny":
        raise SystemExit("only --model tiny is supported here (no downloads)")
    from fsq.classify.tiny import write_tiny_model
    cfg, ckpt = write_tiny_model(work / "model", seed=0)
    store = work / "store"
    make_store(store, n, seed=7)
    settings = load_settings({"model": str(cfg), "pretrained": str(ckpt), "db": "unused"},
                             environ={}, cwd=work)
    out: dict[str, Any] = {"objects": n, "runs": []}
    warm = _pass(settings, store, work / "warm-local.db", LocalEngine())
    local = _pass(settings, store, work / "local.db", LocalEngine())
    out["runs"].append({"engine": "local", "workers": settings.workers, **local,
                        "warmup_s": warm["seconds"]})
    for k in cpus:
        ray.init(num_cpus=k + 1, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        try:
            eng = RayEngine(settings, actors=1)
            warm = _pass(settings, store, work / f"warm-ray{k}.db", eng)
            r = _pass(settings, store, work / f"ray{k}.db", eng)
            eng.shutdown()
        finally:
            ray.shutdown()
        out["runs"].append({"engine": "ray", "task_cpus": k, **r,
                            "warmup_s": warm["seconds"]})
    base = out["runs"][0]["seconds"] / n
    for r in out["runs"]:
        r["ms_per_object"] = round(1000 * r["seconds"] / max(1, r["objects"]), 2)
        r["overhead_ms_per_object"] = round(1000 * (r["seconds"] / max(1, r["objects"])
                                                    - base), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fsq.engine.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=120)
    ap.add_argument("--cpus", default="1,2", help="Ray task CPUs to try, comma-separated")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fsq-engine-bench-") as d:
        res = run(a.objects, [int(c) for c in a.cpus.split(",") if c], a.model, Path(d))
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['objects']} objects, dry run, steady pass (after a warm-up pass)")
        for r in res["runs"]:
            who = "local" if r["engine"] == "local" else f"ray, {r['task_cpus']} task CPU(s)"
            print(f"  {who:<22} {r['seconds']:>7.2f} s  {r['per_s']:>7} obj/s  "
                  f"{r['ms_per_object']:>6} ms/object  overhead {r['overhead_ms_per_object']:>6} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
