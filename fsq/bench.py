"""Benchmark of `fsq scan` on this machine against the old one-image-at-a-time approach.

    python -m fsq.bench                                   # ViT-B-32 and ViT-L-14, 200 images
    python -m fsq.bench --quick                           # a smoke run in about a minute
    python -m fsq.bench --models ViT-L-14 --images 5000 --modes e2e   # peak RSS on a big store
    python -m fsq.bench --models '' --rescan-objects 0 --variants-store 60   # pict-rs variants

It builds a synthetic pict-rs store (fsq.synth: JPEG, PNG, WebP and 3-frame animated GIF,
0.3 to 2 megapixels, pict-rs 0.5 key layout) and, for each model, measures in one run:

* end-to-end: a dry-run pass of the scanner over the store, wired exactly as `fsq scan --all
  --dry-run` wires it (fsq.runtime.build_scanner, fresh state database). The model is loaded
  before the pass starts, so the rate is the steady scan rate, not start-up.
* model only: the same files decoded and preprocessed beforehand (not timed), then only the
  batched model calls and the decision rule, in the batches the scanner forms.
* old approach: what the earlier tool did, on the same files and the same weights: for each
  file open it with PIL, shrink to fit 512x512, open_clip's own (torchvision) preprocess
  transform, ``model.encode_image`` on a batch of one in fp32, cosine with the concept texts
  and the rule. (Its newer checker embedded each image twice; this baseline embeds once.)

Each measurement runs in its own child process, so its peak RSS (``ru_maxrss``, which includes
loading the model) is its own. Then, on a second store of small files, it measures the rescan
rate: a first dry-run pass records every object (with the tiny test model: a rescan never
loads a model), the second pass over the unchanged store is timed (objects/s).

Models are real open_clip architectures with *random* weights (written once with
``torch.save(model.state_dict())`` into the fsq cache and loaded as a local checkpoint, the way
an admin loads offline weights): speed does not depend on the weights, and nothing is
downloaded. ``tiny`` is the test suite's toy model. Verdicts of random weights are
meaningless; the shipped concept set is used so the rule does its usual work.

Counting: "images" are files. An animated GIF goes through the model as up to 4 sampled
frames (3 here), the old approach looks at its first frame only, so fsq does about 1.5 times
the model work per file on this store; frames/s is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

MODES = ("e2e", "model", "old", "int8", "ort-int8")
DEFAULT_MODES = ("e2e", "model", "old")
MODE_LABELS = {"e2e": "end-to-end (fsq scan)", "model": "model only",
               "old": "old approach (fp32, 1 at a time)",
               "int8": "model only, int8 dynamic (not offered)",
               "ort-int8": "model only, ONNX Runtime int8 (fsq model check)"}
DEFAULT_MODELS = ("ViT-B-32", "ViT-L-14")
_RESULT = "FSQ-BENCH-RESULT "


def _mark(root: Path) -> Path:
    """What a store directory holds, written next to it (never inside: it would be scanned)."""
    return root.with_name(root.name + ".fsq-bench.json")


# --- machine -----------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """CPU model, the flags that decide precision, cores, load, torch."""
    cpu, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(),
        "flags": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                              "amx_tile", "amx_bf16") if f in flags],
        "load": [round(x, 2) for x in os.getloadavg()]}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_capability"] = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - torch is part of the [clip] extra
        info["torch"] = "not installed"
    return info


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


# --- inputs ------------------------------------------------------------------------------------

def model_files(name: str, cache: Path) -> tuple[str, str]:
    """(model, pretrained) for fsq's --model/--pretrained: a random-weight checkpoint of a
    real architecture, written once into ``cache`` (or the tiny test model)."""
    cache.mkdir(parents=True, exist_ok=True)
    if name == "tiny":
        from fsq.classify.tiny import write_tiny_model
        cfg, ckpt = write_tiny_model(cache / "tiny")
        return str(cfg), str(ckpt)
    ckpt = cache / f"{name}-random-seed0.pt"
    if not ckpt.is_file():
        import open_clip
        import torch
        if name not in open_clip.list_models():
            raise SystemExit(f"unknown open_clip architecture {name!r}")
        print(f"writing random {name} weights to {ckpt} (once) ...", file=sys.stderr,
              flush=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(name, pretrained=None)  # random init, no download
        tmp = ckpt.with_name(ckpt.name + f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        del model
        tmp.replace(ckpt)
    return name, str(ckpt)


def build_store(root: Path, n: int, seed: int = 0,
                formats: tuple[str, ...] = ("jpeg", "png", "webp", "gif")) -> list[str]:
    """The image store (fsq.synth), reused if ``root`` already holds the same one."""
    mark = _mark(root)
    want = {"n": n, "seed": seed, "kind": "images", "formats": list(formats)}
    if mark.is_file():
        try:
            have = json.loads(mark.read_text())
            if {k: have.get(k) for k in want} == want:
                return list(have["keys"])
        except (OSError, ValueError, KeyError):
            pass
    from fsq.synth import make_store
    _clear(root)
    print(f"writing a synthetic store of {n} images ...", file=sys.stderr, flush=True)
    keys = make_store(root, n, seed=seed, formats=formats)
    mark.write_text(json.dumps({**want, "keys": keys}))
    return keys


def build_small_store(root: Path, n: int, seed: int = 1) -> None:
    """``n`` distinct small PNGs under pict-rs 0.5 keys (a rescan never reads them)."""
    mark = _mark(root)
    want = {"n": n, "seed": seed, "kind": "small"}
    if mark.is_file():
        try:
            if {k: json.loads(mark.read_text()).get(k) for k in want} == want:
                return
        except (OSError, ValueError):
            pass
    import io

    from PIL import Image

    from fsq.synth import pictrs_key
    _clear(root)
    print(f"writing a store of {n} small objects ...", file=sys.stderr, flush=True)
    rng = random.Random(seed)
    for i in range(n):
        im = Image.new("RGB", (32, 32), (i % 256, (i // 256) % 256, (i // 65536) % 256))
        im.putpixel((rng.randrange(32), rng.randrange(32)), (rng.randrange(256),) * 3)
        buf = io.BytesIO()
        im.save(buf, "PNG")
        p = root / pictrs_key(rng, "png")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(buf.getvalue())
    mark.write_text(json.dumps(want))


def _clear(root: Path) -> None:
    import shutil
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)


# --- measurements (each runs in a child process) ----------------------------------------------

def _settings(spec: dict[str, Any]):
    """Settings as `fsq scan` would resolve them from flags, ignoring FSQ_* in the caller's
    environment and any .env (the benchmark must be reproducible)."""
    from fsq.config import load_settings
    overrides = {"model": spec["model"], "pretrained": spec["pretrained"],
                 "precision": spec.get("precision", "auto"), "device": "cpu",
                 "backend": spec.get("backend", "auto"),
                 "batch_size": spec["batch_size"], "workers": spec["workers"],
                 "threads": spec.get("threads", 0), "db": spec.get("db", "fsq.db"),
                 "source": spec.get("source"), "log_level": "error"}
    if spec.get("cache_dir"):
        overrides["cache_dir"] = spec["cache_dir"]
    return load_settings({k: v for k, v in overrides.items() if v is not None},
                         environ={}, cwd=Path(spec["workdir"]))


def remove_db(db: Path) -> None:
    """A state database and its WAL files, so a pass starts from nothing."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


@contextmanager
def dry_run_pass(settings: Any, what: str = "the benchmark scan") -> Iterator[tuple[Any, Any]]:
    """One pass wired as `fsq scan --all --dry-run` wires it, with the model loaded before
    the pass (the rate is the scan rate). Yields (state DB connection, summary) for the
    caller's queries, then closes both; a pass with errors or unreadable files raises."""
    from fsq.ledger.db import connect
    from fsq.runtime import build_scanner
    from fsq.sources.base import open_source
    conn = connect(settings.db)
    src = open_source(settings.source, settings)
    try:
        scanner = build_scanner(settings, conn, src, dry_run=True)
        scanner.classifier  # noqa: B018 - loaded before the pass
        s = scanner.run_pass()
        if s.status != "finished" or s.errors or s.unreadable:
            raise RuntimeError(f"{what} did not go cleanly: {s.to_json()}")
        yield conn, s
    finally:
        src.close()
        conn.close()


def run_e2e(spec: dict[str, Any]) -> dict[str, Any]:
    from fsq.ledger.db import connect
    from fsq.runtime import build_scanner
    from fsq.sources.base import open_source
    settings = _settings({**spec, "source": "file://" + spec["store"]})
    conn = connect(settings.db)
    src = open_source(settings.source, settings)
    import threading
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:  # RSS over the pass: flat means memory does not grow with the store
        while not done.wait(0.5):
            samples.append(_rss_mb())

    try:
        scanner = build_scanner(settings, conn, src, dry_run=True)
        clf = scanner.classifier  # loaded before the pass: the rate below is the scan rate
        rss_start = _rss_mb()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        s = scanner.run_pass()
        done.set()
        sampler.join()
    finally:
        done.set()
        src.close()
        conn.close()
    rss_end = _rss_mb()
    half = samples[len(samples) // 2:] or [rss_end]
    if s.status != "finished" or s.errors or s.unreadable:
        raise RuntimeError(f"the benchmark scan did not go cleanly: {s.to_json()}")
    return {"images": s.scanned, "classified": s.classified, "seconds": s.seconds,
            "images_per_s": s.scanned / s.seconds, "flagged": s.flagged,
            "rss_start_mb": rss_start, "rss_max_mb": max(samples + [rss_start, rss_end]),
            "rss_max_first_half_mb": max(samples[:len(samples) // 2] or [rss_start]),
            "rss_max_second_half_mb": max(half), "rss_end_mb": rss_end,
            **_describe(clf)}


def run_model_only(spec: dict[str, Any]) -> dict[str, Any]:
    from fsq.media import decode
    from fsq.runtime import build_classifier
    settings = _settings(spec)
    clf = build_classifier(settings)
    extra: dict[str, Any] = {}
    if spec.get("int8"):
        extra = _quantize_int8(clf)
    if spec.get("ort_int8"):
        # What `--precision int8` runs once `fsq model check` approved it (random weights
        # here: speed only; approval is the site's check on its own weights).
        clf._ort = clf.int8_tower()
        extra = {"precision_note": "ONNX Runtime int8 dynamic, per-channel"}
    items = []
    for key in spec["keys"]:
        data = (Path(spec["store"]) / key).read_bytes()
        d = decode(data, max_pixels=settings.max_pixels)
        items.append([clf.preprocess(f) for f in d.frames])
    frames = sum(len(i) for i in items)
    # The scanner's batching: collect files until they hold at least batch_size frames.
    batches, cur, n = [], [], 0
    for it in items:
        cur.append(it)
        n += len(it)
        if n >= spec["batch_size"]:
            batches.append(cur)
            cur, n = [], 0
    if cur:
        batches.append(cur)
    t0 = time.perf_counter()
    for b in batches:
        clf.classify_items(b)
    dt = time.perf_counter() - t0
    if spec.get("int8"):
        extra.update(_int8_agreement(clf, [f for it in items for f in it][:32]))
    return {"images": len(items), "frames": frames, "seconds": dt,
            "images_per_s": len(items) / dt, "frames_per_s": frames / dt, **_describe(clf),
            **extra}


def _quantize_int8(clf: Any) -> dict[str, Any]:
    """Swap the image tower for its int8 dynamically quantised copy (Linear layers: int8
    weights, activations quantised per batch). Not a setting of fsq: measured here to show
    what it would gain; see docs/performance.md for why it is not offered."""
    import warnings

    import torch
    fp32 = clf.model.visual
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        q = torch.ao.quantization.quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8,
                                                   inplace=False)
    clf._bench_fp32_visual = fp32
    clf.model.visual = q
    return {"precision_note": "int8 dynamic quantisation of the image tower's Linear layers"}


def _int8_agreement(clf: Any, frames: list[Any]) -> dict[str, Any]:
    """|similarity(int8) - similarity(fp32)| on up to 32 frames (random weights!)."""
    import numpy as np
    import torch
    batch = torch.stack(frames)
    s8 = clf.similarities(batch)
    q = clf.model.visual
    clf.model.visual = clf._bench_fp32_visual
    try:
        s32 = clf.similarities(batch)
    finally:
        clf.model.visual = q
    d = np.abs(s8 - s32)
    return {"agreement_frames": len(frames), "sim_diff_max": float(d.max()),
            "sim_diff_mean": float(d.mean())}


def run_old(spec: dict[str, Any]) -> dict[str, Any]:
    """The earlier tool's loop (see the module docstring), on the same weights."""
    import open_clip
    import torch
    from PIL import Image

    from fsq.classify.clip import ClipClassifier
    from fsq.classify.concepts import load_concepts
    from fsq.classify.rule import decide
    from fsq.classify.threads import resolve
    threads, _ = resolve(spec.get("threads") or 0)
    if threads:
        torch.set_num_threads(threads)
    concepts = load_concepts(None)
    arch, *_ = ClipClassifier._resolve_arch(open_clip, spec["model"])  # registers a JSON config
    model, _, preprocess = open_clip.create_model_and_transforms(arch,
                                                                 pretrained=spec["pretrained"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    with torch.no_grad():
        text = model.encode_text(tokenizer(concepts.texts)).float()
        text /= text.norm(dim=-1, keepdim=True)
    flagged = 0
    t0 = time.perf_counter()
    for key in spec["keys"]:
        im = Image.open(Path(spec["store"]) / key).convert("RGB")
        im.thumbnail((512, 512))
        x = preprocess(im).unsqueeze(0)
        with torch.no_grad():
            f = model.encode_image(x).float()
            f /= f.norm(dim=-1, keepdim=True)
            sims = (f @ text.T)[0].tolist()
        flagged += decide(dict(zip(concepts.texts, sims)), concepts).flagged
    dt = time.perf_counter() - t0
    n = len(spec["keys"])
    return {"images": n, "frames": n, "seconds": dt, "images_per_s": n / dt,
            "frames_per_s": n / dt, "flagged": flagged, "threads": torch.get_num_threads()}


def run_rescan(spec: dict[str, Any]) -> dict[str, Any]:
    from fsq.ledger.db import connect
    from fsq.runtime import build_scanner
    from fsq.sources.base import open_source
    settings = _settings({**spec, "source": "file://" + spec["store"]})
    out: dict[str, Any] = {}
    for label in ("first", "rescan"):
        conn = connect(settings.db)
        src = open_source(settings.source, settings)
        try:
            s = build_scanner(settings, conn, src, dry_run=True).run_pass()
        finally:
            src.close()
            conn.close()
        out[label] = {"listed": s.listed, "scanned": s.scanned, "skipped": s.skipped,
                      "seconds": s.seconds, "objects_per_s": s.listed / s.seconds}
    if out["rescan"]["scanned"] != 0:
        raise RuntimeError(f"the second pass scanned objects again: {out}")
    return out


def _describe(clf: Any) -> dict[str, Any]:
    d = clf.describe()
    return {"precision": d["precision"], "precision_reason": d["precision_reason"],
            "threads": d["threads"], "model_id": d["model_id"],
            "backend": d.get("backend"), "backend_reason": d.get("backend_reason")}


_RUNNERS = {"e2e": run_e2e, "model": run_model_only, "old": run_old, "rescan": run_rescan}


def _child_main(spec_json: str) -> int:
    import logging
    logging.disable(logging.WARNING)  # calibration warnings etc.: expected with random weights
    spec = json.loads(spec_json)
    os.chdir(spec["workdir"])
    result = _RUNNERS[spec["mode"]](spec)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(_RESULT + json.dumps(result), flush=True)
    return 0


def run_measurement(spec: dict[str, Any], *, in_process: bool, log: Path) -> dict[str, Any]:
    """Run one measurement in a child process (own peak RSS) or, for tests, in this one."""
    if in_process:
        import logging
        logging.disable(logging.WARNING)
        try:
            result = _RUNNERS[spec["mode"]](spec)
        finally:
            logging.disable(logging.NOTSET)
        result["peak_rss_mb"] = _peak_rss_mb()
        result["rss_shared_process"] = True
        return result
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSQ_")}
    # The children must import this very fsq, whatever is installed.
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log, "a") as lf:
        lf.write(f"\n=== {spec['mode']} {spec.get('model')} ===\n")
        lf.flush()
        proc = subprocess.run([sys.executable, "-m", "fsq.bench", "--child", json.dumps(spec)],
                              stdout=subprocess.PIPE, stderr=lf, text=True, env=env,
                              cwd=spec["workdir"])
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    tail = log.read_text(errors="replace")[-3000:]
    raise SystemExit(f"benchmark child ({spec['mode']}, {spec.get('model')}) failed with exit "
                     f"code {proc.returncode}; log {log}:\n{tail}")


# --- orchestration and output ------------------------------------------------------------------

def bench_model(name: str, keys: list[str], store: Path, work: Path, cache: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    model, pretrained = model_files(name, cache)
    base = {"model": model, "pretrained": pretrained, "batch_size": args.batch_size,
            "workers": args.workers, "threads": args.threads, "precision": args.precision,
            "backend": args.backend,
            "store": str(store), "keys": keys, "workdir": str(work)}
    best: dict[str, dict[str, Any]] = {}
    log = work / "bench.log"
    for r in range(args.rounds):
        for mode in args.modes:
            spec = dict(base, mode=mode)
            if mode == "int8":
                spec.update(mode="model", int8=True, precision="fp32", backend="torch")
            if mode == "ort-int8":
                spec.update(mode="model", ort_int8=True, precision="fp32", backend="torch")
            if mode == "e2e":
                db = work / f"e2e-{name.replace('/', '_')}-{r}.db"
                for suffix in ("", "-wal", "-shm"):
                    Path(str(db) + suffix).unlink(missing_ok=True)
                spec["db"] = str(db)
            if mode == "old" and args.old_images:
                spec["keys"] = keys[:args.old_images]
            print(f"{name}: {MODE_LABELS[mode]}, {len(spec['keys'])} images"
                  + (f" (round {r + 1}/{args.rounds})" if args.rounds > 1 else "") + " ...",
                  file=sys.stderr, flush=True)
            res = run_measurement(spec, in_process=args.in_process, log=log)
            res["mode"] = mode
            print(f"  {res['images_per_s']:.2f} images/s, peak RSS "
                  f"{res['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
            prev = best.get(mode)
            if prev is None or res["images_per_s"] > prev["images_per_s"]:
                peak = max(res["peak_rss_mb"], prev["peak_rss_mb"]) if prev else \
                    res["peak_rss_mb"]
                best[mode] = dict(res, peak_rss_mb=peak)
            else:
                prev["peak_rss_mb"] = max(prev["peak_rss_mb"], res["peak_rss_mb"])
    info = best.get("e2e") or best.get("model") or {}
    out: dict[str, Any] = {"model": name, "images": len(keys), "rounds": args.rounds,
                           "batch_size": args.batch_size, "workers": args.workers,
                           "precision": info.get("precision"),
                           "precision_reason": info.get("precision_reason"),
                           "threads": info.get("threads"), "backend": info.get("backend"),
                           "backend_reason": info.get("backend_reason"), "results": best}
    if "model" in best and "e2e" in best:
        best["e2e"]["frames_per_s"] = best["model"]["frames"] / best["e2e"]["seconds"] \
            * best["e2e"]["images"] / best["model"]["images"]
    out["rows"] = table_rows(best)
    return out


def table_rows(best: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    old = best.get("old", {}).get("images_per_s")
    mo = best.get("model", {}).get("images_per_s")
    rows = []
    for mode in MODES:
        r = best.get(mode)
        if r is None:
            continue
        rate = r["images_per_s"]
        rows.append({"mode": mode, "label": MODE_LABELS[mode], "images_per_s": rate,
                     "frames_per_s": r.get("frames_per_s"),
                     "vs_old": rate / old if old else None,
                     "vs_model_only": rate / mo if mo else None,
                     "peak_rss_mb": r["peak_rss_mb"]})
    return rows


def format_table(m: dict[str, Any]) -> str:
    heads = ["", "images/s", "frames/s", "x old", "of model-only", "peak RSS"]
    cells = []
    for r in m["rows"]:
        cells.append([r["label"], f"{r['images_per_s']:.2f}",
                      "" if r["frames_per_s"] is None else f"{r['frames_per_s']:.2f}",
                      "" if r["vs_old"] is None else f"{r['vs_old']:.2f}x",
                      "" if r["vs_model_only"] is None else f"{100 * r['vs_model_only']:.0f}%",
                      f"{r['peak_rss_mb'] / 1024:.2f} GB"])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join((c.ljust(w) if i == 0 else c.rjust(w))
                                for i, (c, w) in enumerate(zip(row, widths))) + " |"
              for row in cells]
    return "\n".join(lines)


def targets(models: list[dict[str, Any]], rescan: dict[str, Any] | None) -> list[str]:
    """The issue's targets for this 2-core machine, judged on this run."""
    out = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for m in models:
        rows = {r["mode"]: r for r in m["rows"]}
        e2e = rows.get("e2e")
        if m["model"] == "ViT-L-14" and e2e:
            if e2e["vs_old"] is not None:
                out.append(f"ViT-L-14 end-to-end >= 4x the old approach: "
                           f"{verdict(e2e['vs_old'] >= 4)} ({e2e['vs_old']:.2f}x)")
            if e2e["vs_model_only"] is not None:
                out.append(f"ViT-L-14 end-to-end >= 85% of model-only: "
                           f"{verdict(e2e['vs_model_only'] >= 0.85)} "
                           f"({100 * e2e['vs_model_only']:.0f}%)")
            out.append(f"ViT-L-14 peak RSS < 3 GB (target: a 5,000-image scan; this run "
                       f"{m['images']} images): {verdict(e2e['peak_rss_mb'] < 3072)} "
                       f"({e2e['peak_rss_mb'] / 1024:.2f} GB)")
        if m["model"] == "ViT-B-32" and e2e:
            out.append(f"ViT-B-32 end-to-end >= 80 images/s: "
                       f"{verdict(e2e['images_per_s'] >= 80)} ({e2e['images_per_s']:.1f})")
    if rescan:
        r = rescan["rescan"]
        out.append(f"rescan of an unchanged store >= 2,000 objects/s (target: 10,000 objects; "
                   f"this run {r['listed']}): {verdict(r['objects_per_s'] >= 2000)} "
                   f"({r['objects_per_s']:.0f}/s)")
    return out


def report(result: dict[str, Any]) -> str:
    mi = result["machine"]
    lines = [f"machine: {mi['cpu']}, {mi['cores']} cores, flags: {' '.join(mi['flags'])}; "
             f"torch {mi.get('torch')} (CPU capability {mi.get('torch_capability')}); "
             f"load average {mi['load']} at start, {result['load_end']} at end",
             f"store: {result['images']} synthetic images "
             f"({_formats(result.get('formats', ['jpeg', 'png', 'webp', 'gif']))}; "
             f"0.3-2 MP), batch size {result['batch_size']}, {result['workers']} decode workers"
             + (f", best of {result['rounds']} rounds" if result["rounds"] > 1 else "")]
    for m in result["models"]:
        chosen = (f"precision {m['precision']} ({m['precision_reason']}); torch threads "
                  f"{m['threads']}" if m["precision"] else "fsq's precision not measured")
        if m.get("backend"):
            chosen += f"; image tower {m['backend']} ({m.get('backend_reason')})"
        lines += ["", f"{m['model']}: {chosen}", format_table(m)]
        e = m["results"].get("e2e")
        if e and "rss_start_mb" in e:
            lines.append(f"end-to-end RSS during the pass: {e['rss_start_mb'] / 1024:.2f} GB "
                         f"with the model loaded, highest {e['rss_max_first_half_mb'] / 1024:.2f}"
                         f" GB in the first half of the pass and "
                         f"{e['rss_max_second_half_mb'] / 1024:.2f} GB in the second, "
                         f"{e['rss_end_mb'] / 1024:.2f} GB at the end")
        q = m["results"].get("int8")
        if q and "sim_diff_max" in q:
            lines.append(f"int8 vs fp32 on {q['agreement_frames']} frames (random weights): "
                         f"|similarity difference| max {q['sim_diff_max']:.4f}, "
                         f"mean {q['sim_diff_mean']:.4f}")
    if result.get("rescan"):
        r = result["rescan"]
        lines += ["", f"rescan of an unchanged store of {r['rescan']['listed']} objects: "
                      f"{r['rescan']['objects_per_s']:.0f} objects/s "
                      f"({r['rescan']['seconds']:.2f} s; first pass "
                      f"{r['first']['objects_per_s']:.0f} objects/s with the tiny model)"]
    if result.get("rescore"):
        r = result["rescore"]
        lines += ["", f"rescore of {r['objects']} stored embeddings (--severity "
                      f"{r['severity']}): {r['objects_per_s']:.0f} objects/s ({r['seconds']:.2f}"
                      f" s, {r['newly_flagged']} newly flagged, {r['images_decoded']} images "
                      "decoded; target >= 20000 objects/s)"]
    if result.get("animations"):
        from fsq import bench_frames
        lines += [""] + bench_frames.report(result["animations"])
    if result.get("variants"):
        from fsq import bench_variants
        v = result["variants"]
        lines += [""] + ([f"variant store: skipped ({v['skipped']})"] if "skipped" in v
                         else bench_variants.report(v))
    if result.get("neighbour"):
        from fsq import bench_threads
        lines += [""] + bench_threads.report_lines(result["neighbour"])
    if result.get("decode_cost"):
        from fsq.media import cost
        lines += ["", cost.format_report(result["decode_cost"])]
    t = targets(result["models"], result.get("rescan"))
    if t:
        lines += ["", "targets (issue 8, 2-core machine):"] + [f"  {x}" for x in t]
    if any(result.get(k) for k in ("variants", "animations", "rescore", "decode_cost",
                                   "neighbour")) or any(
            r["mode"] == "ort-int8" for m in result["models"] for r in m["rows"]):
        from fsq import bench_targets
        lines += ["", "targets (issue 20, same-run ratios):"] + [
            f"  {x}" for x in bench_targets.issue20(result)]
    return "\n".join(lines)


def _formats(formats: list[str]) -> str:
    names = {"jpeg": "JPEG", "png": "PNG", "webp": "WebP", "gif": "3-frame GIF",
             "mp4": "4 s H.264 MP4", "webm": "4 s VP9 WebM"}
    return ", ".join(names.get(f, f) for f in formats)


def _threads_arg(value: str) -> int | str:
    from fsq.classify.threads import parse
    try:
        return parse(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fsq.bench",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated open_clip architectures, or tiny (the test model) "
                        "[ViT-B-32,ViT-L-14]")
    p.add_argument("--images", type=int, help="images in the synthetic store [200; quick 24]")
    p.add_argument("--old-images", type=int,
                   help="only the first N images for the old approach [all]")
    p.add_argument("--rescan-objects", type=int,
                   help="objects in the rescan store, 0 = skip [10000; quick 1000]")
    p.add_argument("--rescore-objects", type=int, default=0,
                   help="`fsq rescore` over N synthetic stored embeddings (fsq.bench_rescore), "
                        "0 = skip [0]")
    p.add_argument("--animations", type=int, default=0,
                   help="near-identical frames: a store of N 100-frame animations scanned "
                        "with FSQ_FRAME_SKIP at its default and at 0 (fsq.bench_frames), "
                        "0 = skip [0]")
    p.add_argument("--animation-model", default="tiny",
                   help="model for --animations (frame counts do not depend on it) [tiny]")
    p.add_argument("--variants-store", type=int, default=0,
                   help="a store of N originals with 2 pict-rs variants each and its repo rows "
                        "in a throwaway PostgreSQL: objects/s with variant linkage vs files/s "
                        "without (fsq.bench_variants), 0 = skip [0]")
    p.add_argument("--variants-model", default="ViT-L-14",
                   help="model of the --variants-store passes: fsq's default ViT-L-14, another "
                        "open_clip architecture, or tiny [ViT-L-14]")
    p.add_argument("--batch-size", type=int, default=8, help="model batch size [8]")
    p.add_argument("--workers", type=int, default=2, help="fetch/decode threads [2]")
    p.add_argument("--threads", type=_threads_arg, default=0,
                   help="torch threads: N, 0 = default, or auto (fsq.classify.threads) [0]")
    p.add_argument("--neighbour", type=int, metavar="N",
                   help="also run the first model (model only) beside N busy processes, "
                        "--threads against auto, and print the ratio (fsq.bench_threads)")
    p.add_argument("--neighbour-warmup", type=float, default=90.0, metavar="S",
                   help="wait up to S seconds for the load average to show the neighbours "
                        "[90]")
    p.add_argument("--decode-cost", type=int, default=0, metavar="N",
                   help="decode + preprocess CPU per file, now against before issue 20, on N "
                        "files of the store (fsq.media.cost), 0 = skip [0]")
    p.add_argument("--precision", default="auto", help="fsq --precision [auto]")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx", "openvino"),
                   help="fsq --backend for the image tower [auto]")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help="which of e2e,model,old,int8,ort-int8 to run; int8 = model only with "
                        "torch int8 dynamic quantisation, for information; ort-int8 = model "
                        "only with ONNX Runtime int8 (what --precision int8 runs after "
                        "`fsq model check`) [e2e,model,old]")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the measurements, report the best rate [1]")
    p.add_argument("--formats", default="jpeg,png,webp,gif",
                   help="formats of the store, used in turn (also mp4 and webm: 4-second "
                        "videos); without gif and videos every file is one frame for fsq and "
                        "the old approach alike [jpeg,png,webp,gif]")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--workdir", help="keep stores and databases here (reused across runs) "
                                     "[a temporary directory]")
    p.add_argument("--weights-dir", help="random-weight checkpoints [<fsq cache>/bench]")
    p.add_argument("--in-process", action="store_true",
                   help="no child processes (tests): peak RSS is then the whole run's")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.neighbour is not None and args.neighbour < 0:
        p.error("--neighbour must be at least 0")
    if args.child:
        return _child_main(args.child)

    args.images = args.images or (24 if args.quick else 200)
    if args.rescan_objects is None:
        args.rescan_objects = 1000 if args.quick else 10000
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes: choose from {', '.join(MODES)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    from fsq.synth import FORMATS, VIDEO_FORMATS
    args.formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    if not args.formats or any(f not in FORMATS + VIDEO_FORMATS for f in args.formats):
        p.error(f"--formats: choose from {', '.join(FORMATS + VIDEO_FORMATS)}")
    if args.images < 1 or args.batch_size < 1 or args.workers < 1 or args.rounds < 1:
        p.error("--images, --batch-size, --workers and --rounds must be at least 1")
    from fsq.classify.clip import default_cache_dir
    cache = Path(args.weights_dir) if args.weights_dir else default_cache_dir() / "bench"

    result: dict[str, Any] = {"machine": machine_info(), "images": args.images,
                              "formats": list(args.formats),
                              "batch_size": args.batch_size, "workers": args.workers,
                              "rounds": args.rounds, "models": []}
    with tempfile.TemporaryDirectory(prefix="fsq-bench-") as tmp:
        work = Path(args.workdir).resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if models:
            store = work / "store"
            keys = build_store(store, args.images, formats=args.formats)
            for name in models:
                result["models"].append(bench_model(name, keys, store, work, cache, args))
            if args.neighbour is not None:
                from fsq import bench_threads
                result["neighbour"] = bench_threads.run(
                    models[0], keys, store, work, cache, args,
                    lambda spec: run_measurement(spec, in_process=args.in_process,
                                                 log=work / "bench.log"),
                    model_files, lambda m: print(m, file=sys.stderr, flush=True))
        if args.decode_cost:
            from fsq.media import cost
            keys = build_store(work / "store", args.images, formats=args.formats)
            files = [(k.rsplit(".", 1)[-1], (work / "store" / k).read_bytes())
                     for k in keys[:args.decode_cost]]
            print(f"decode cost: {len(files)} files, before and now ...", file=sys.stderr,
                  flush=True)
            result["decode_cost"] = cost.measure(files, rounds=max(2, args.rounds))
        if args.rescan_objects:
            small = work / "rescan-store"
            build_small_store(small, args.rescan_objects)
            model, pretrained = model_files("tiny", cache)
            db = work / "rescan.db"
            for suffix in ("", "-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
            print(f"rescan: {args.rescan_objects} objects, first pass then rescan ...",
                  file=sys.stderr, flush=True)
            result["rescan"] = run_measurement(
                {"mode": "rescan", "model": model, "pretrained": pretrained,
                 "batch_size": args.batch_size, "workers": args.workers,
                 "threads": args.threads, "store": str(small), "db": str(db),
                 "workdir": str(work)}, in_process=args.in_process, log=work / "bench.log")
        if args.rescore_objects:
            from fsq import bench_rescore
            print(f"rescore: {args.rescore_objects} stored embeddings ...", file=sys.stderr,
                  flush=True)
            result["rescore"] = bench_rescore.run(work, args.rescore_objects)
        if args.animations:
            from fsq import bench_frames
            print(f"near-identical frames: {args.animations} animations, two passes ...",
                  file=sys.stderr, flush=True)
            result["animations"] = bench_frames.run(
                work, args.animations, *model_files(args.animation_model, cache),
                batch_size=args.batch_size, threads=args.threads)
        if args.variants_store:
            from fsq import bench_variants
            model, pretrained = model_files(args.variants_model, cache)
            result["variants"] = bench_variants.run(
                work, args.variants_store, model=model, pretrained=pretrained,
                batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                precision=args.precision, backend=args.backend, rounds=args.rounds) or {
                "skipped": "no PostgreSQL server to hold the pict-rs repo rows"}
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
