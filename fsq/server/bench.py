"""Benchmark of `fsq serve`: latency and throughput of upload checks, as pict-rs would see them.

    python -m fsq.server.bench                       # tiny model and ViT-B-32, short run
    python -m fsq.server.bench --models vit-b-32 --single 50 --concurrent 200 --concurrency 32

For each model it starts the real server (``python -m fsq serve`` in a child process, on a free
loopback port, in a throwaway directory), then sends distinct synthetic JPEGs the way pict-rs
does (raw body + Content-Type): first ``--single`` uploads one after another, then
``--concurrent`` uploads from ``--concurrency`` client threads at once. It prints p50/p95
latency, throughput and the batching the server reports in /metrics.

Models: ``tiny`` is the test suite's random-weight toy CLIP; ``vit-b-32`` is the real ViT-B-32
architecture (about 150 M parameters) and ``vit-l-14`` (opt-in) fsq's default ViT-L-14 (about
430 M), both with *random* weights, written with ``torch.save(model.state_dict())`` and loaded as
a local checkpoint, so nothing is downloaded.
Random weights cost exactly as much compute as trained ones; their verdicts are meaningless,
so the concept set here (the shipped texts, every threshold at 2.0) flags nothing, and every
upload takes the full decode -> preprocess -> model path. Every image is distinct, so the
verdict cache never short-cuts a request.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# name -> open_clip architecture (None: the tiny test model). The default run uses the first two.
ARCHS = {"tiny": None, "vit-b-32": "ViT-B-32", "vit-l-14": "ViT-L-14"}
MODELS = tuple(ARCHS)
DEFAULT_MODELS = ("tiny", "vit-b-32")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _request(port: int, method: str, path: str, body: bytes | None = None,
             ctype: str | None = None, timeout: float = 60) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _metrics(port: int) -> dict[str, float]:
    _, text = _request(port, "GET", "/metrics")
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def _images(n: int, width: int, height: int, seed: int) -> list[bytes]:
    from fsq.synth import synthetic_image
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        synthetic_image(rng, width, height).save(buf, "JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def _concepts(path: Path) -> None:
    """The shipped concept texts, thresholds at 2.0 (cosine never exceeds 1: nothing flags)."""
    from fsq.classify.concepts import load_concepts
    cs = load_concepts(None)
    lines = ['name = "bench-nothing-flags"', 'calibrated_for = "bench"', ""]
    for c in cs.concepts:
        if c.group == "control":
            continue
        lines += ["[[concept]]", f"text = {json.dumps(c.text)}", f'group = "{c.group}"',
                  "threshold = 2.0", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _model_files(name: str, d: Path) -> tuple[str, str]:
    if name == "tiny":
        from fsq.classify.tiny import write_tiny_model
        cfg, ckpt = write_tiny_model(d / "tiny")
        return str(cfg), str(ckpt)
    import open_clip
    import torch
    arch = ARCHS[name]
    ckpt = d / f"{name}-random.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)  # random init, no download
    torch.save(model.state_dict(), ckpt)
    del model
    return arch, str(ckpt)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def _phase(port: int, images: list[bytes], concurrency: int) -> dict[str, Any]:
    before = _metrics(port)
    lat: list[float] = []
    statuses: list[int] = []

    def one(body: bytes) -> None:
        t = time.perf_counter()
        status, _ = _request(port, "POST", "/validate", body, "image/jpeg")
        lat.append(time.perf_counter() - t)
        statuses.append(status)

    t0 = time.perf_counter()
    if concurrency == 1:
        for b in images:
            one(b)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, images))
    wall = time.perf_counter() - t0
    after = _metrics(port)
    batches = after["fsq_serve_batches_total"] - before["fsq_serve_batches_total"]
    items = after["fsq_serve_batch_size_sum"] - before["fsq_serve_batch_size_sum"]
    bad = [s for s in statuses if s != 200]
    return {"n": len(images), "concurrency": concurrency, "p50_ms": _pct(lat, 0.5) * 1000,
            "p95_ms": _pct(lat, 0.95) * 1000, "mean_ms": statistics.fmean(lat) * 1000,
            "throughput_per_s": len(images) / wall, "wall_s": wall, "batches": batches,
            "mean_batch": items / batches if batches else 0.0,
            "model_calls": after["fsq_serve_model_calls_total"]
            - before["fsq_serve_model_calls_total"], "non_200": len(bad)}


def run_model(name: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fsq.quarantine.keys import public_key_text

    d = work / name
    d.mkdir()
    t = time.perf_counter()
    model, pretrained = _model_files(name, d)
    prep_s = time.perf_counter() - t
    concepts = d / "concepts.toml"
    _concepts(concepts)
    pub = d / "vault.pub"
    pub.write_text(public_key_text(X25519PrivateKey.generate().public_key()))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSQ_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep \
        + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "fsq", "serve", "--listen", f"127.0.0.1:{port}",
           "--model", model, "--pretrained", pretrained, "--concepts", str(concepts),
           "--db", str(d / "fsq.db"), "--vault", f"file://{d / 'vault'}",
           "--vault-public-key", str(pub), "--batch-size", str(args.batch_size),
           "--precision", "fp32", "--timeout", "25"]
    t = time.perf_counter()
    log = open(d / "serve.log", "w")
    proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"fsq serve ({name}) exited {proc.returncode}; see "
                                 f"{d / 'serve.log'}:\n" + (d / "serve.log").read_text()[-2000:])
            try:
                if _request(port, "GET", "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        start_s = time.perf_counter() - t
        w, h = args.image_size
        total = args.warmup + args.single + args.concurrent
        imgs = _images(total, w, h, seed=MODELS.index(name) + 1)
        _phase(port, imgs[:args.warmup], 1)
        rows = []
        for label, batch, conc in (
                ("single", imgs[args.warmup:args.warmup + args.single], 1),
                ("concurrent", imgs[args.warmup + args.single:], args.concurrency)):
            if not batch:
                continue
            r = _phase(port, batch, conc)
            r.update(model=name, mode=label, startup_s=start_s, prepare_s=prep_s)
            rows.append(r)
            print(f"  {name} {label}: done in {r['wall_s']:.1f}s", file=sys.stderr, flush=True)
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _table(rows: list[dict[str, Any]]) -> str:
    cols = [("model", "{}"), ("mode", "{}"), ("n", "{}"), ("concurrency", "{}"),
            ("p50_ms", "{:.0f}"), ("p95_ms", "{:.0f}"), ("throughput_per_s", "{:.1f}"),
            ("batches", "{:.0f}"), ("mean_batch", "{:.2f}"), ("model_calls", "{:.0f}"),
            ("non_200", "{}")]
    cells = [[fmt.format(r[c]) for c, fmt in cols] for r in rows]
    heads = ["model", "mode", "n", "conc", "p50 ms", "p95 ms", "uploads/s", "batches",
             "mean batch", "model calls", "non-200"]
    widths = [max(len(hd), *(len(c[i]) for c in cells)) for i, hd in enumerate(heads)]
    lines = ["| " + " | ".join(hd.ljust(w) for hd, w in zip(heads, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
              for row in cells]
    return "\n".join(lines)


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fsq.server.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated from: tiny, vit-b-32, vit-l-14 (fsq's default model; "
                        "writes a 1.7 GB checkpoint) [default: tiny,vit-b-32]")
    p.add_argument("--single", type=int, default=20, help="sequential uploads (default 20)")
    p.add_argument("--concurrent", type=int, default=48,
                   help="uploads sent concurrently (default 48)")
    p.add_argument("--concurrency", type=int, default=16, help="client threads (default 16)")
    p.add_argument("--warmup", type=int, default=3, help="uploads before measuring")
    p.add_argument("--batch-size", type=int, default=8, help="server --batch-size (default 8)")
    p.add_argument("--image-size", type=int, nargs=2, default=(800, 600), metavar=("W", "H"),
                   help="JPEG size (default 800 600)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fsq-bench-") as tmp:
        for m in models:
            print(f"benchmarking {m} ...", file=sys.stderr, flush=True)
            rows += run_model(m, args, Path(tmp))
    if args.json:
        print(json.dumps({"machine": _machine(), "rows": rows}, indent=2))
    else:
        print(f"machine: {_machine()}; images {args.image_size[0]}x{args.image_size[1]} "
              f"JPEG; server batch size {args.batch_size}, fp32")
        print(_table(rows))
        for m in models:
            r = next(r for r in rows if r["model"] == m)
            print(f"{m}: server ready {r['startup_s']:.1f}s after launch "
                  f"(model files written in {r['prepare_s']:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
