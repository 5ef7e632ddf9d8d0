"""Image-tower runtimes side by side: ``python -m fsq.bench_backends``.

torch bf16 (what ``auto`` runs on a bf16 CPU), OpenVINO bf16 and fp32, ONNX Runtime fp32 and
torch fp32, on random weights of real open_clip architectures (or the tiny test model), the
image tower only, in the same process with interleaved rounds, so the ratios to torch bf16
are same-run. Each runtime gets the graph fsq itself exports (fsq.classify.onnx_backend) and
its embeddings' worst cosine to torch fp32 is printed with the rates. Runtimes that are not
installed are left out and named.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _visual(name: str) -> Any:
    import open_clip
    import torch
    torch.manual_seed(0)
    if name == "tiny":
        import json
        from open_clip.model import CLIP
        from fsq.classify.tiny import TINY_CONFIG
        return CLIP(**json.loads(json.dumps(TINY_CONFIG))).eval().visual
    return open_clip.create_model(name, pretrained=None).eval().visual


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def runtimes(visual: Any, size: tuple[int, int], threads: int, graph: Path
             ) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], list[str]]:
    """name -> embed(batch); and the runtimes left out, with why."""
    import torch
    low = copy.deepcopy(visual).to(torch.bfloat16).eval()

    def torch_bf16(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return low(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()

    def torch_fp32(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return visual(torch.from_numpy(x)).numpy()

    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {"torch bf16": torch_bf16}
    missing = []
    try:
        import openvino as ov
        core = ov.Core()
        for prec, hint in (("bf16", "bf16"), ("fp32", "f32")):
            c = core.compile_model(core.read_model(str(graph)), "CPU", {
                "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY"})
            out[f"OpenVINO {prec}"] = (lambda c: lambda x: np.asarray(
                c.create_infer_request().infer({0: x})[c.output(0)]))(c)
    except ImportError:
        missing.append("OpenVINO (pip install 'fsq[openvino]')")
    try:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        out["ONNX Runtime fp32"] = lambda x: sess.run(None, {name: x})[0]
    except ImportError:
        missing.append("ONNX Runtime (pip install 'fsq[onnx]')")
    out["torch fp32"] = torch_fp32
    return out, missing


def measure(name: str, *, images: int, rounds: int, batch: int, threads: int
            ) -> dict[str, Any]:
    import torch
    from fsq.classify.onnx_backend import _export
    torch.set_num_threads(threads)
    visual = _visual(name)
    size = visual.image_size if isinstance(visual.image_size, tuple) else (
        visual.image_size,) * 2
    x = np.random.default_rng(0).standard_normal((images, 3, *size)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="fsq-backends-") as td:
        graph = Path(td) / "tower.onnx"
        graph.write_bytes(_export(visual, tuple(size)))
        fns, missing = runtimes(visual, tuple(size), threads, graph)
        ref = fns["torch fp32"](x[:batch])
        cosine = {k: _cos(f(x[:batch]), ref) for k, f in fns.items()}
        rates: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                t0 = time.perf_counter()
                for i in range(0, images, batch):
                    f(x[i:i + batch])
                rates[k].append(images / (time.perf_counter() - t0))
    return {"model": name, "images": images, "rounds": rounds, "batch": batch,
            "threads": threads, "rates": rates, "cosine": cosine, "missing": missing,
            "load": [round(v, 2) for v in os.getloadavg()]}


def report(r: dict[str, Any]) -> list[str]:
    base = r["rates"]["torch bf16"]
    lines = [f"{r['model']}: image tower only, batch {r['batch']}, {r['threads']} threads, "
             f"{r['images']} images, {r['rounds']} interleaved rounds (load {r['load']})",
             "| runtime | images/s (best) | ratio to torch bf16 per round | cosine to torch "
             "fp32 |", "|---|---|---|---|"]
    for k, v in r["rates"].items():
        ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(v, base))
        lines.append(f"| {k} | {max(v):.2f} | {ratios} | {r['cosine'][k]:.5f} |")
    if r["missing"]:
        lines.append("not installed: " + "; ".join(r["missing"]))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fsq.bench_backends", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="ViT-B-32,ViT-L-14",
                   help="open_clip architectures (random weights) or tiny [ViT-B-32,ViT-L-14]")
    p.add_argument("--images", type=int, default=32, help="images per round [32]")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds [3]")
    p.add_argument("--batch-size", type=int, default=8, help="batch size [8]")
    p.add_argument("--threads", type=int, default=2, help="threads per runtime [2]")
    args = p.parse_args(argv)
    from fsq.bench import machine_info
    mi = machine_info()
    print(f"machine: {mi['cpu']}, {mi['cores']} cores, flags: {' '.join(mi['flags'])}")
    for name in [m for m in args.models.split(",") if m]:
        print()
        print("\n".join(report(measure(name, images=args.images, rounds=args.rounds,
                                       batch=args.batch_size, threads=args.threads))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
