"""The OpenVINO backend for the image tower (``--backend openvino``, ``FSQ_BACKEND``).

Why: on a CPU with bf16 units OpenVINO's bf16 kernels ran the image tower faster than torch
bf16 (fsq's ``auto`` there): ViT-L-14 1.20-1.37x and ViT-B-32 1.05-1.28x over two runs, same
process, interleaved rounds, random weights (docs/performance.md, "OpenVINO";
``python -m fsq.bench_backends``). The text tower stays in
torch (once per concept set, cached). It is an explicit choice: ``auto`` does not pick it.

How, and what is guaranteed (the same scheme as fsq.classify.onnx_backend):

- The image tower of the admin's own checkpoint is exported once to ONNX (torch's TorchScript
  exporter, fp32, dynamic batch) and cached under ``<cache>/openvino/`` keyed by the
  checkpoint's sha256, the architecture, the torch and OpenVINO versions, the inference
  precision and the format. OpenVINO compiles it at each start (the compiled form is not
  cached: it is specific to the CPU).
- At export time the compiled model is checked against the torch fp32 tower on the built-in
  synthetic set (``onnx_backend._check_inputs``). fp32 needs cosine >= ``onnx_backend.MIN_COSINE``
  on every input. bf16 is a lossy precision, so it is held to the precision fsq already
  accepts: its worst cosine must be no lower than torch bf16's own on the same inputs, less
  ``BF16_SLACK`` (the two round differently), and never below ``BF16_FLOOR``. The result is
  recorded with the graph's sha256 in a sidecar, so a failed check is not retried at every
  start and a damaged or swapped graph file is exported again.
- fp16 is refused (not measured); CUDA is refused (OpenVINO runs here on the CPU only).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fsq.classify.onnx_backend import (MIN_COSINE, BackendUnavailable, _check_inputs,
                                       _cosine, _export, cached_graph)

log = logging.getLogger("fsq.classify")

BF16_SLACK = 1e-4
BF16_FLOOR = 0.999
_FORMAT = 1
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def import_ov() -> Any:
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable("openvino is not installed: pip install 'fsq[openvino]'") \
            from None
    return openvino


class OvImageTower:
    """A compiled, checked image tower: ``embed(batch) -> n x d`` float32 (not normalised)."""

    def __init__(self, compiled: Any, graph: Path, min_cosine: float, precision: str) -> None:
        self.compiled = compiled
        self.graph = graph
        self.min_cosine = min_cosine
        self.precision = precision
        self._output = compiled.output(0)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        # One request per call: callers may embed from several threads.
        out = self.compiled.create_infer_request().infer(
            {0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out[self._output], dtype=np.float32)


def _compile(ov: Any, blob: bytes, precision: str, threads: int) -> Any:
    """Compile the ONNX graph from its bytes (the checked ones, never re-read from disk)."""
    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision],
                              "PERFORMANCE_HINT": "LATENCY"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return core.compile_model(core.read_model(blob), "CPU", config)
    except Exception as e:  # OpenVINO raises RuntimeError and its own types
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise BackendUnavailable(f"OpenVINO cannot compile the image tower ({text})") from None


def _bound(visual: Any, x: np.ndarray, ref: np.ndarray, precision: str) -> float:
    """The lowest worst-case cosine the check accepts (module docstring)."""
    if precision == "fp32":
        return MIN_COSINE
    import torch
    low = copy.deepcopy(visual).to(torch.bfloat16).eval()
    with torch.inference_mode():
        own = low(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    del low
    return max(BF16_FLOOR, float(_cosine(own, ref).min()) - BF16_SLACK)


def load_or_export(visual: Any, *, key_doc: dict[str, Any], cache_dir: Path,
                   image_size: tuple[int, int], mean: np.ndarray, std: np.ndarray,
                   threads: int, precision: str, atomic_write: Any) -> OvImageTower:
    """The checked OpenVINO tower for this checkpoint and precision, exported and checked
    on first use. Raises BackendUnavailable (missing, export impossible, check failed)."""
    if precision not in PRECISIONS:
        raise BackendUnavailable(f"OpenVINO runs bf16 or fp32 here, not {precision}")
    ov = import_ov()
    import torch
    doc = {**key_doc, "format": _FORMAT, "torch": torch.__version__,
           "openvino": ov.__version__, "precision": precision}
    graph, meta, info, cached = cached_graph(cache_dir / "openvino", doc, "OpenVINO")
    if info is not None:
        return OvImageTower(_compile(ov, cached, precision, threads), graph,
                            float(info["cosine"]), precision)
    directory = graph.parent
    blob = _export(visual, image_size)
    compiled = _compile(ov, blob, precision, threads)
    x = _check_inputs(image_size, mean, std)
    with torch.inference_mode():
        ref = visual(torch.from_numpy(x)).float().numpy()
    got = OvImageTower(compiled, graph, 0.0, precision).embed(x)
    worst = float(_cosine(got, ref).min()) if np.all(np.isfinite(got)) else float("nan")
    need = _bound(visual, x, ref, precision)
    ok = bool(worst >= need)
    record = {**doc, "ok": ok, "cosine": worst, "bound": need,
              "graph_sha256": hashlib.sha256(blob).hexdigest() if ok else None,
              "reason": None if ok else f"cosine {worst:.7f} < {need:.7f}"}
    try:
        if ok:             # a graph that failed its check is never kept
            atomic_write(graph, blob)
        atomic_write(meta, json.dumps(record, indent=1, sort_keys=True).encode())
    except OSError as e:
        log.warning("cannot write the OpenVINO cache under %s (%s); exporting again next "
                    "start", directory, e)
    if not ok:
        raise BackendUnavailable(f"OpenVINO {precision} disagrees with torch on the check set "
                                 f"(worst cosine {worst:.7f}, need >= {need:.7f})")
    log.info("exported the image tower for OpenVINO %s (%s), check cosine %.7f >= %.7f",
             precision, graph, worst, need)
    return OvImageTower(compiled, graph, worst, precision)
