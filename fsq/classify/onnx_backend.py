"""The ONNX Runtime backend for the image tower (``--backend onnx``, ``FSQ_BACKEND``).

Why: on CPUs without bf16 units torch's fp32 matrix products (MKL) leave half the machine
unused; ONNX Runtime's fp32 kernels ran ViT-L-14 2.0x and ViT-B-32 2.05x as fast as torch
fp32 on the issue's Zen 5 measurements. The text tower stays in torch (once per concept set,
cached).

How, and what is guaranteed:

- The image tower of the admin's own checkpoint is exported once with torch's TorchScript
  exporter (``dynamo=False``: the torch.export route needs onnxscript, an extra dependency),
  fp32, dynamic batch size, and cached under ``<cache>/onnx/`` keyed by the checkpoint's
  sha256, the architecture, the torch and ONNX Runtime versions and the export format.
- At export time the exported graph is checked against the torch tower on a built-in
  synthetic set (``_check_inputs``: seeded noise, flat colours, gradients and stripes,
  normalised like real inputs): every embedding must have cosine >= ``MIN_COSINE`` with
  torch's. The result is recorded in the cache sidecar with the graph's sha256, so a failed
  check is not retried at every start and a damaged or swapped graph file is refused.
- ``resolve``: ``onnx`` asked for explicitly fails with a one-line error when the extra is
  missing or the check fails; ``auto`` picks ORT only where today's choice would be torch fp32
  on a CPU (no bf16 units: bf16/fp16 stay on torch) and falls back to torch, with the reason,
  whenever ORT is unavailable or its check failed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fsq.errors import ConfigError

log = logging.getLogger("fsq.classify")

MIN_COSINE = 0.99999
_FORMAT = 1
BACKENDS = ("auto", "torch", "onnx", "openvino")


class BackendUnavailable(Exception):
    """ORT cannot be used here; the message says why (one line)."""


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install 'fsq[onnx]'") \
            from None
    return onnxruntime


def _check_inputs(size: tuple[int, int], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The built-in synthetic check set: 8 images in [0, 1], normalised with the model's own
    mean/std (n x 3 x H x W float32)."""
    h, w = size
    rng = np.random.default_rng(20)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    imgs = [rng.random((h, w, 3), dtype=np.float32),
            np.full((h, w, 3), 0.5, np.float32),
            np.stack([xx / w, yy / h, 1 - xx / w], axis=-1),
            np.repeat(((xx // 8) % 2)[..., None], 3, axis=-1),
            np.clip(rng.normal(0.5, 0.25, (h, w, 3)), 0, 1).astype(np.float32),
            np.stack([np.sin(xx / 5) * 0.5 + 0.5, np.cos(yy / 7) * 0.5 + 0.5,
                      np.full((h, w), 0.2, np.float32)], axis=-1),
            np.zeros((h, w, 3), np.float32),
            np.ones((h, w, 3), np.float32)]
    arr = (np.stack(imgs) - mean.reshape(1, 1, 1, 3)) / std.reshape(1, 1, 1, 3)
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


class OrtImageTower:
    """An exported, checked image tower: ``embed(batch) -> n x d`` float32 (not normalised)."""

    def __init__(self, session: Any, graph: Path, min_cosine: float) -> None:
        self.session = session
        self.graph = graph
        self.min_cosine = min_cosine  # the check's worst cosine on the synthetic set
        self._input = session.get_inputs()[0].name

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.ascontiguousarray(
            batch, dtype=np.float32)})[0].astype(np.float32, copy=False)


def _session(ort: Any, blob: bytes, threads: int) -> Any:
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])


def cached_graph(directory: Path, doc: dict[str, Any], what: str
                 ) -> tuple[Path, Path, dict[str, Any] | None, bytes]:
    """(graph path, sidecar path, the sidecar's record and the graph's bytes if the cached
    graph may be used; else None and b"").

    A recorded failed check raises (not retried at every start; the message says how to
    retry). A graph file whose bytes do not match the sha256 recorded when it passed its
    check (missing, damaged, swapped) gives None: export again. Only bytes that passed the
    check are ever loaded."""
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
    graph, meta = directory / f"{key}.onnx", directory / f"{key}.json"
    info = _read_meta(meta, doc)
    if info is None:
        return graph, meta, None, b""
    if not info.get("ok"):
        raise BackendUnavailable(f"the {what} export of this checkpoint failed its check "
                                 f"earlier ({info.get('reason')}); delete {meta} to retry")
    try:
        blob = graph.read_bytes()
    except OSError:
        blob = b""
    # The caller loads these very bytes, never the file again (no swap after the check).
    if hashlib.sha256(blob).hexdigest() == info.get("graph_sha256"):
        return graph, meta, info, blob
    log.warning("cached %s graph %s is missing or does not match its record; exporting "
                "again", what, graph)
    return graph, meta, None, b""


def load_or_export(visual: Any, *, key_doc: dict[str, Any], cache_dir: Path,
                   image_size: tuple[int, int], mean: np.ndarray, std: np.ndarray,
                   threads: int, atomic_write: Any) -> OrtImageTower:
    """The checked ORT tower for this checkpoint, exported and checked on first use.

    Raises BackendUnavailable (ORT missing, export impossible, check failed: the reason)."""
    ort = import_ort()
    import torch
    doc = {**key_doc, "format": _FORMAT, "torch": torch.__version__,
           "onnxruntime": ort.__version__, "min_cosine": MIN_COSINE}
    graph, meta, info, cached = cached_graph(cache_dir / "onnx", doc, "ONNX")
    if info is not None:
        return OrtImageTower(_session(ort, cached, threads), graph, float(info["cosine"]))
    directory = graph.parent
    blob = _export(visual, image_size)
    x = _check_inputs(image_size, mean, std)
    session = _session(ort, blob, threads)
    with torch.inference_mode():
        ref = visual(torch.from_numpy(x)).float().numpy()
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    worst = float(_cosine(got, ref).min()) if np.all(np.isfinite(got)) else float("nan")
    ok = bool(worst >= MIN_COSINE)
    record = {**doc, "ok": ok, "cosine": worst,
              "graph_sha256": hashlib.sha256(blob).hexdigest() if ok else None,
              "reason": None if ok else f"cosine {worst:.7f} < {MIN_COSINE}"}
    try:
        if ok:
            atomic_write(graph, blob)
        atomic_write(meta, json.dumps(record, indent=1, sort_keys=True).encode())
    except OSError as e:
        log.warning("cannot write the ONNX cache under %s (%s); exporting again next start",
                    directory, e)
    if not ok:
        raise BackendUnavailable(f"the ONNX export disagrees with torch on the check set "
                                 f"(worst cosine {worst:.7f}, need >= {MIN_COSINE})")
    log.info("exported the image tower to ONNX (%s), check cosine >= %.7f", graph, worst)
    return OrtImageTower(session, graph, worst)


def _export(visual: Any, image_size: tuple[int, int]) -> bytes:
    import torch
    buf = io.BytesIO()
    x = torch.zeros(2, 3, *image_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(visual, (x,), buf, dynamo=False, input_names=["pixels"],
                              output_names=["embedding"], opset_version=17,
                              dynamic_axes={"pixels": {0: "n"}, "embedding": {0: "n"}})
    except Exception as e:  # the exporter raises many types; all mean "not usable"
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise BackendUnavailable(f"cannot export the image tower to ONNX ({text})") from None
    return buf.getvalue()


def _read_meta(meta: Path, doc: dict[str, Any]) -> dict[str, Any] | None:
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or any(info.get(k) != v for k, v in doc.items()):
        return None
    return info


def resolve(requested: str, device: str, precision: str) -> tuple[str, str]:
    """(backend to try, reason). ``onnx`` or ``openvino`` on CUDA is a usage mistake;
    ``auto`` never picks openvino (an explicit choice: fsq.classify.openvino_backend)."""
    if requested not in BACKENDS:
        raise ConfigError(f"backend {requested!r}: expected one of {', '.join(BACKENDS)}")
    if requested == "torch":
        return "torch", "requested"
    if requested in ("onnx", "openvino"):
        if device.startswith("cuda"):
            raise ConfigError(f"backend {requested} runs on the CPU only; use --device cpu or "
                              "--backend torch")
        return requested, "requested"
    if device.startswith("cuda") or precision != "fp32":
        return "torch", f"auto: torch {precision} on {device}"
    return "onnx", "auto: fp32 on a CPU, ONNX Runtime if available"


def load_int8(visual: Any, *, key_doc: dict[str, Any], cache_dir: Path,
              image_size: tuple[int, int], mean: np.ndarray, std: np.ndarray, threads: int,
              atomic_write: Any) -> OrtImageTower:
    """The int8 tower: ORT dynamic quantisation (per-channel int8 weights, every MatMul/Gemm)
    of the checked fp32 export. Never chosen by ``auto``; only ``--precision int8`` after a
    passing `fsq model check` (fsq.classify.int8_check) uses it."""
    fp32 = load_or_export(visual, key_doc=key_doc, cache_dir=cache_dir, image_size=image_size,
                          mean=mean, std=std, threads=threads, atomic_write=atomic_write)
    ort = import_ort()
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:  # pragma: no cover - part of the onnxruntime wheel
        raise BackendUnavailable(f"onnxruntime.quantization is unavailable ({e})") from None
    import tempfile
    with tempfile.TemporaryDirectory(prefix="fsq-int8-") as td:
        out = Path(td) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its "consider pre-processing" advice, at every start
        try:
            quantize_dynamic(str(fp32.graph), str(out), per_channel=True,
                             weight_type=QuantType.QInt8)
        except Exception as e:
            text = " ".join(str(e).split())[:200] or type(e).__name__
            raise BackendUnavailable(f"cannot quantise the ONNX graph to int8 ({text})") \
                from None
        finally:
            root.setLevel(level)
        blob = out.read_bytes()
    return OrtImageTower(_session(ort, blob, threads), fp32.graph, float("nan"))
