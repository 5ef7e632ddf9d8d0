"""The CLIP runner: turns decoded frames into concept similarities and rule decisions.

Why this exists: it is the only module that touches torch and open_clip. It owns the parts that
must be exactly right for the published thresholds to mean anything (the same preprocessing and
text handling the calibration used), the parts that make a CPU-only machine usable (precision
choice, one batched forward pass for all frames, cached text embeddings, no re-hashing of a
1.7 GB checkpoint on every start), and the translation of every user mistake (unknown
architecture, missing or wrong checkpoint, no internet) into one-line fsq errors.

Model selection:

- ``model`` is an open_clip architecture name (``ViT-L-14``) or the path of an open_clip
  model-config JSON (plain ``{"embed_dim", "vision_cfg", "text_cfg"}`` or the Hub style
  ``{"model_cfg": ..., "preprocess_cfg": ...}``).
- ``pretrained`` is an open_clip tag (``openai``; downloaded by open_clip on a machine with
  internet, reused from the Hugging Face cache otherwise) or a local checkpoint file
  (``torch.save`` state dict, open_clip/Hub ``.bin``/``.safetensors``, or OpenAI's TorchScript
  ``.pt``).
- ``model_id`` is ``<arch>/<tag>`` for tags and ``<arch or config stem>/file:<sha256[:16]>`` for
  files. A local file that is byte-identical to a tag's published file (open_clip lists the
  sha256 of OpenAI's downloads) is recognised as that tag, so the offline route "download
  ViT-L-14.pt elsewhere, pass --pretrained /path" still matches the shipped calibration.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import io
import json
import logging
import os
import re
import socket
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from fsq.classify.concepts import ConceptSet
from fsq.classify.precision import detect_precision, resolve_device, resolve_precision
from fsq.classify.rule import SEVERITY_SHIFT, Decision, decide
from fsq.classify.similarity import similarities_of
from fsq.errors import ConfigError, ExternalError
from fsq.media.decode import fit_size

try:  # the [clip] extra; everything else in fsq.classify works without it
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - exercised only on installs without the extra
    torch = None  # type: ignore[assignment]

log = logging.getLogger("fsq.classify")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SHRINK_TO = 512  # the reference shrinks every image to fit 512x512 before CLIP preprocessing
_CKPT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".npy"}
_PREPROCESS_KEYS = {"size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"}
_CACHE_FORMAT = 1
_NET_TIMEOUT = 5.0

# open_clip's config registry is a process-global dict; registration must not interleave.
_register_lock = threading.Lock()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fsq``, else ``~/.cache/fsq``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fsq"


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _import_open_clip() -> Any:
    if torch is None:
        raise ConfigError("the CLIP classifier needs torch and open_clip_torch: "
                          "pip install 'fsq[clip]'")
    try:
        import open_clip
    except ImportError:
        raise ConfigError("the CLIP classifier needs open_clip_torch: "
                          "pip install 'fsq[clip]'") from None
    return open_clip


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "initialized randomly" when built without weights; we load them next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _tcp_probe(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens in time, else the reason.

    Runs in a daemon thread because DNS resolution has no timeout of its own.
    """
    result: dict[str, str] = {}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = "1"
        except OSError as e:
            result["err"] = _one_line(e)

    t = threading.Thread(target=probe, name="fsq-net-probe", daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if t.is_alive():
        return f"no answer from {host} within {timeout:.0f} s"
    return None if "ok" in result else f"{host}: {result.get('err', 'unreachable')}"


# The size ``Image.thumbnail((box, box))`` would produce (same rounding), without copying:
# one rule shared with the decoder, which shrinks to the same box.
_shrink_size = fit_size


class ClipClassifier:
    """Loads one CLIP model and classifies preprocessed frames against a concept set."""

    def __init__(self, model: str, pretrained: str, concepts: ConceptSet,
                 severity: str = "balanced", precision: str = "auto", device: str = "auto",
                 cache_dir: str | None = None, threads: int = 0,
                 text_only: bool = False, backend: str = "torch",
                 int8_approved: Any = None) -> None:
        """``text_only``: compute (or read from the cache) the concept text embeddings and
        release the whole model, image tower included (``fsq rescore`` needs no image
        tower; ``embed_images`` then fails). ``backend``: torch | onnx | openvino | auto for
        the image tower (fsq.classify.onnx_backend, openvino_backend; the text tower is
        always torch).
        ``precision="int8"`` (ONNX Runtime int8) runs only if ``int8_approved(checkpoint
        sha256)`` is true: a passing `fsq model check` for this checkpoint."""
        open_clip = _import_open_clip()
        if severity not in SEVERITY_SHIFT:
            raise ConfigError(f"severity {severity!r}: expected one of "
                              f"{', '.join(SEVERITY_SHIFT)}")
        self.concepts = concepts
        self.severity = severity
        self.warnings: list[str] = []
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        if threads and threads > 0:
            torch.set_num_threads(int(threads))
        self.threads = torch.get_num_threads()

        self.device = resolve_device(device)
        int8 = (precision or "").strip().lower() == "int8"
        if int8:
            if self.device.startswith("cuda") or backend in ("torch", "openvino"):
                raise ConfigError("precision int8 runs on ONNX Runtime on the CPU only: use "
                                  "--device cpu and --backend auto or onnx")
            precision, backend = "fp32", "onnx"
        self.precision, self.precision_reason = resolve_precision(precision, self.device)
        from fsq.classify import onnx_backend
        if backend == "onnx" and precision not in ("auto", "fp32"):
            raise ConfigError(f"backend onnx runs fp32 only, not {precision}: use "
                              "--precision fp32 (or auto) or --backend torch")
        want, self.backend_reason = onnx_backend.resolve(
            backend, self.device, "fp32" if backend == "onnx" else self.precision)
        if want == "onnx" and self.precision != "fp32":
            self.precision, self.precision_reason = "fp32", "backend onnx runs fp32"
        if want == "openvino" and self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"backend openvino runs bf16 or fp32, not {self.precision}: use "
                              "--precision bf16, fp32 or auto, or another --backend")
        self.backend = "torch"
        self._ort: Any = None
        self._dtype = {"fp32": torch.float32, "bf16": torch.bfloat16,
                       "fp16": torch.float16}[self.precision]
        if (self.precision == "bf16" and not self.device.startswith("cuda")
                and detect_precision(self.device)[0] != "bf16"):
            self._warn(f"precision bf16 on a CPU without native bf16 support will be much "
                       f"slower than fp32 ({detect_precision(self.device)[1]})")

        arch_name, arch_label, arch_pp, config_file = self._resolve_arch(open_clip, model)
        self.arch = arch_label
        quick_gelu = False
        tag_pp: dict[str, Any] = {}
        weights = self._resolve_pretrained(open_clip, arch_name, pretrained, config_file)
        if weights[0] == "file":
            self.checkpoint = weights[1]
            sha = self._checkpoint_sha256(self.checkpoint)
            tag = None if config_file else self._tag_for_sha256(open_clip, arch_name, sha)
            if tag is not None:
                tag_cfg = open_clip.get_pretrained_cfg(arch_name, tag)
                self.model_id = f"{arch_label}/{tag}"
            else:
                tag_cfg = {}
                self.model_id = f"{arch_label}/file:{sha[:16]}"
        else:
            tag, tag_cfg = weights[1], weights[2]
            self.model_id = f"{arch_label}/{tag}"
            self.checkpoint = self._fetch_tag(open_clip, arch_name, tag, tag_cfg)
        if tag_cfg:
            # The tag's own training settings: QuickGELU (OpenAI weights) and its mean/std.
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
            tag_pp = {k: v for k, v in tag_cfg.items() if k in _PREPROCESS_KEYS}

        build_label = model if config_file else arch_label
        self.model = self._build(open_clip, arch_name, build_label, quick_gelu,
                                 {**tag_pp, **arch_pp})
        if not self._load_weights_lean(open_clip, self.model, self.checkpoint):
            # The lean load gave up (unusual checkpoint or model): the classic route, on a
            # freshly built model, raises the one-line error if the file is unusable.
            self.model = self._build(open_clip, arch_name, build_label, quick_gelu,
                                     {**tag_pp, **arch_pp})
            self._load_weights(open_clip, self.model, self.checkpoint, arch_label)
        self.model.eval()
        self._arch_name = arch_name
        self._setup_preprocess(self.model)

        # Text embeddings before the precision switch: they are computed once per concept set,
        # so they are always done in fp32 (on CPU) and only the per-image work uses bf16/fp16.
        self.text_cache_hit = False
        self.text_cache_path: Path | None = None
        self.text_embeddings = self._text_embeddings(open_clip)

        # Hashed (once, cached by path/size/mtime) only where it keys an ONNX graph.
        self.checkpoint_sha256 = (self._checkpoint_sha256(self.checkpoint)
                                  if (int8 or want in ("onnx", "openvino"))
                                  and not text_only else None)
        if int8 and not text_only:
            if int8_approved is None or not int8_approved(self.checkpoint_sha256):
                raise ConfigError(f"precision int8 is not approved for this checkpoint "
                                  f"({self.model_id}): run `fsq model check` first, which "
                                  "compares int8 with fp32 on your own files")
            try:
                self._ort = self.int8_tower()
            except onnx_backend.BackendUnavailable as e:
                raise ConfigError(f"precision int8: {e}") from None
            self.backend, self.backend_reason = "onnx", "int8 approved by `fsq model check`"
            self.precision, self.precision_reason = "int8", "int8 requested (approved)"
        elif want == "onnx" and not text_only:
            try:
                self._ort = onnx_backend.load_or_export(
                    self.model.visual, key_doc=self._ort_key(), cache_dir=self.cache_dir,
                    image_size=self.image_size, mean=self._mean, std=self._std,
                    threads=self.threads, atomic_write=_atomic_write)
                self.backend = "onnx"
                self.backend_reason += f" (export check cosine >= {self._ort.min_cosine:.7f})"
            except onnx_backend.BackendUnavailable as e:
                if backend == "onnx":
                    raise ConfigError(f"backend onnx: {e}") from None
                self.backend_reason = f"auto: torch, ONNX Runtime not used ({e})"
                log.info("%s", self.backend_reason)
        elif want == "openvino" and not text_only:
            from fsq.classify import openvino_backend
            try:
                self._ort = openvino_backend.load_or_export(
                    self.model.visual, key_doc=self._ort_key(), cache_dir=self.cache_dir,
                    image_size=self.image_size, mean=self._mean, std=self._std,
                    threads=self.threads, precision=self.precision, atomic_write=_atomic_write)
            except onnx_backend.BackendUnavailable as e:
                raise ConfigError(f"backend openvino: {e}") from None
            self.backend = "openvino"
            self.backend_reason += (f" (OpenVINO {self.precision}, export check cosine "
                                    f"{self._ort.min_cosine:.7f})")
        if text_only or self._ort is not None:
            # No torch image tower needed (rescore: none at all; onnx: ORT runs it).
            self.model = None
            _malloc_trim()
        else:
            # Converted weights, not torch.autocast: autocast on CPU measured far slower.
            if self._dtype != torch.float32:
                self.model.to(dtype=self._dtype)
            self.model.to(self.device)
            # The text tower is never used again: free it (ViT-L-14: 123 M parameters,
            # ~0.5 GB).
            _drop_text_tower(self.model)

        if self.model_id != concepts.calibrated_for:
            hint = (f" If this checkpoint holds the {concepts.calibrated_for} weights, set "
                    f"calibrated_for = \"{self.model_id}\" in a copy of the concept set."
                    if "/file:" in self.model_id else
                    " Calibrate a concept set for this model (its calibrated_for names it).")
            self._warn(f"concept set {concepts.name!r} was calibrated for "
                       f"{concepts.calibrated_for}, but the model in use is {self.model_id}: "
                       f"thresholds are model-specific, so verdicts may be wrong.{hint}")

    # -- public -------------------------------------------------------------------------------

    def _ort_key(self) -> dict[str, Any]:
        if self.checkpoint_sha256 is None:
            self.checkpoint_sha256 = self._checkpoint_sha256(self.checkpoint)
        return {"arch": self._arch_name, "model_id": self.model_id,
                "checkpoint_sha256": self.checkpoint_sha256, "image_size": list(self.image_size)}

    def int8_tower(self) -> Any:
        """The ONNX Runtime int8 image tower of this checkpoint (for `fsq model check` and
        approved ``--precision int8``); needs the fp32 torch tower, i.e. call it on a
        classifier built with backend torch and precision fp32 (or during __init__)."""
        from fsq.classify import onnx_backend
        if self.model is None or self._dtype != torch.float32:
            raise ConfigError("the int8 tower is built from the fp32 torch tower")
        return onnx_backend.load_int8(
            self.model.visual, key_doc=self._ort_key(), cache_dir=self.cache_dir,
            image_size=self.image_size, mean=self._mean, std=self._std, threads=self.threads,
            atomic_write=_atomic_write)

    def describe(self) -> dict[str, Any]:
        """Settings actually in use, for log lines and ``--json`` output."""
        return {"model_id": self.model_id, "device": self.device, "precision": self.precision,
                "precision_reason": self.precision_reason, "threads": self.threads,
                "backend": self.backend, "backend_reason": self.backend_reason,
                "image_size": list(self.image_size), "concepts": self.concepts.name,
                "concepts_digest": self.concepts.digest, "severity": self.severity}

    def preprocess(self, img: Image.Image) -> "torch.Tensor":
        """PIL image -> 3xSxS float32 tensor, the model's own preprocessing done with Pillow.

        Thread-safe (no shared mutable state, the caller's image is not modified), so decode
        workers can call it. Steps: convert to RGB, shrink to fit 512x512 (the reference
        calibration did), resize (shortest side to S, bicubic) and centre-crop, scale to [0, 1],
        normalise with the model's mean/std.
        """
        return torch.from_numpy(self.preprocess_array(img))

    def preprocess_array(self, img: Image.Image) -> np.ndarray:
        im = img if img.mode == "RGB" else img.convert("RGB")
        w, h = _shrink_size(im.width, im.height, SHRINK_TO)
        if (w, h) != im.size:
            # Same size rule and filter as Image.thumbnail, which would modify img in place.
            im = im.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=2.0)
        im = self._resize_crop(im)
        # One float pass over CHW: x / 255 / std - mean / std (the bytes are transposed while
        # still uint8; equal to (x / 255 - mean) / std within float32 rounding).
        std = np.asarray(self._std, dtype=np.float32).reshape(3, 1, 1)
        mean = np.asarray(self._mean, dtype=np.float32).reshape(3, 1, 1)
        arr = np.asarray(im).transpose(2, 0, 1).astype(np.float32, order="C")
        arr *= np.float32(1.0 / 255.0) / std
        arr -= mean / std
        return arr

    def embed_images(self, batch: "torch.Tensor") -> np.ndarray:
        """n x 3 x S x S preprocessed frames -> n x d L2-normalised float32 embeddings."""
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a batch shaped n x 3 x S x S, got {tuple(batch.shape)}")
        if self._ort is not None:
            e = self._ort.embed(batch.numpy() if hasattr(batch, "numpy") else batch)
            norm = np.linalg.norm(e, axis=1, keepdims=True)
            return (e / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)
        with torch.inference_mode():
            x = batch.to(self.device, dtype=self._dtype)
            # Normalise in fp32 whatever the model precision: cheap, and it keeps bf16/fp16
            # rounding out of the final cosine.
            e = self.model.encode_image(x).float()
            e = F.normalize(e, dim=-1)
        return e.cpu().numpy().astype(np.float32, copy=False)

    def similarities(self, batch: "torch.Tensor") -> np.ndarray:
        """n x n_concepts cosine similarities, columns in concept-set order."""
        return self.similarities_of(self.embed_images(batch))

    def similarities_of(self, embeddings: np.ndarray) -> np.ndarray:
        """Image embeddings (n x d, unit) -> n x n_concepts similarities; the one place the
        scan and `fsq rescore` (fsq.rescore, stored embeddings) compute them."""
        return similarities_of(embeddings, self.text_embeddings)

    def classify_items(self, items: Sequence[Sequence["torch.Tensor"]],
                       batch_size: int | None = None) -> list[tuple[Decision, int]]:
        """Classify files given as lists of preprocessed frames (animations have several).

        All frames of all items go through the model together (in chunks of ``batch_size`` if
        given). An item is flagged if any frame is; its result is the decision of the first
        flagged frame, else of the frame ranking highest (underage count, lewd count, highest
        underage score), with that frame's index.
        """
        flat: list[torch.Tensor] = []
        owner: list[tuple[int, int]] = []
        for i, frames in enumerate(items):
            if len(frames) == 0:
                raise ValueError(f"item {i} has no frames")
            for j, frame in enumerate(frames):
                flat.append(frame)
                owner.append((i, j))
        if not flat:
            return []
        step = batch_size if batch_size and batch_size > 0 else len(flat)
        embs = np.concatenate([self.embed_images(torch.stack(flat[k:k + step]))
                               for k in range(0, len(flat), step)])
        sims = self.similarities_of(embs)
        texts = self.concepts.texts
        best: list[tuple[Decision, int] | None] = [None] * len(items)
        frames_of: list[list[dict]] = [[] for _ in items]
        for (i, j), row in zip(owner, sims):
            d = decide(dict(zip(texts, row.tolist())), self.concepts, self.severity)
            frames_of[i].append({"index": j, "flagged": d.flagged,
                                 "fired": [f["text"] for f in d.fired],
                                 "underage_max": round(d.underage_max, 5)})
            cur = best[i]
            if cur is None or d.rank_key() > cur[0].rank_key():
                best[i] = (d, j)
        rows_of: list[list[int]] = [[] for _ in items]
        for k, (i, _j) in enumerate(owner):
            rows_of[i].append(k)
        for b, per, rows in zip(best, frames_of, rows_of):
            if b is not None and len(per) > 1:
                b[0].per_frame = per
            if b is not None:
                b[0].embeddings = embs[rows]
        return [b for b in best if b is not None]

    def __repr__(self) -> str:
        return (f"ClipClassifier(model_id={self.model_id!r}, device={self.device!r}, "
                f"precision={self.precision!r}, concepts={self.concepts.name!r})")

    # -- model and weights --------------------------------------------------------------------

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning("%s", msg)

    @staticmethod
    def _resolve_arch(open_clip: Any, model: str) -> tuple[str, str, dict[str, Any], bool]:
        """(open_clip registry name, label for model_id, preprocess overrides, is config file)."""
        model = (model or "").strip()
        if not model:
            raise ConfigError("model is empty: pass an open_clip architecture name such as "
                              "ViT-L-14 or the path to a model-config JSON file")
        p = Path(model).expanduser()
        is_path = model.lower().endswith(".json") or os.sep in model or p.is_file()
        if not is_path:
            known = open_clip.list_models()
            if model in known:
                return model, model, {}, False
            close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"model {model!r}: unknown open_clip architecture{hint}; pass an "
                              f"architecture name (python -c 'import open_clip; "
                              f"print(open_clip.list_models())') or a model-config JSON path")
        if not p.is_file():
            raise ConfigError(f"{model}: model config file not found")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{model}: not a readable JSON model config ({_one_line(e)})") \
                from None
        pp: dict[str, Any] = {}
        cfg = data
        if isinstance(data, dict) and isinstance(data.get("model_cfg"), dict):
            cfg = data["model_cfg"]
            raw_pp = data.get("preprocess_cfg")
            if isinstance(raw_pp, dict):
                pp = {k: v for k, v in raw_pp.items() if k in _PREPROCESS_KEYS}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{model}: not an open_clip model config (expected a JSON object)")
        for key in ("embed_dim", "vision_cfg", "text_cfg"):
            if key not in cfg:
                raise ConfigError(f"{model}: not an open_clip model config (missing {key!r})")
        canonical = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", p.stem).strip("-") or "model"
        # open_clip keys configs by file stem, so a user file called ViT-L-14.json would
        # collide with (replace, or be shadowed by) the builtin of that name. Register a copy
        # under a name derived from the content: unique, and idempotent across instances.
        name = f"fsq-{stem}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"
        with _register_lock:
            if name not in open_clip.list_models():
                with tempfile.TemporaryDirectory(prefix="fsq-model-config-") as td:
                    f = Path(td) / f"{name}.json"
                    f.write_text(canonical, encoding="utf-8")
                    # open_clip reads the file now; the entry stays registered after the
                    # temp dir is gone (later rescans skip missing paths).
                    open_clip.add_model_config(f)
                if name not in open_clip.list_models():  # pragma: no cover - open_clip change
                    raise ConfigError(f"{model}: open_clip did not accept this model config")
        return name, stem, pp, True

    @staticmethod
    def _resolve_pretrained(open_clip: Any, arch_name: str, pretrained: str,
                            config_file: bool) -> tuple[Any, ...]:
        """("file", path) or ("tag", tag, tag_cfg)."""
        value = (pretrained or "").strip()
        if not value:
            raise ConfigError("pretrained is empty: pass an open_clip tag such as 'openai' or "
                              "the path of a checkpoint file")
        p = Path(value).expanduser()
        if p.is_file():
            return ("file", str(p.resolve()))
        if p.exists():
            raise ConfigError(f"{value}: is a directory, not a checkpoint file")
        if os.sep in value or value.startswith("~") or p.suffix.lower() in _CKPT_SUFFIXES:
            raise ConfigError(f"{value}: checkpoint file not found")
        if config_file:
            raise ConfigError(f"pretrained {value!r}: with a model-config file, pretrained must "
                              f"be the path of a checkpoint file (tags only work with built-in "
                              f"architecture names)")
        tag_cfg = open_clip.get_pretrained_cfg(arch_name, value)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(arch_name)
            close = difflib.get_close_matches(value.lower(), tags, n=3, cutoff=0.6)
            hint = (f" (did you mean {', '.join(close)}?)" if close else
                    f" (known tags: {', '.join(tags)})" if tags else "")
            raise ConfigError(f"pretrained {value!r}: no such checkpoint file, and not an "
                              f"open_clip tag for {arch_name}{hint}")
        return ("tag", value.lower().replace("-", "_"), tag_cfg)

    @staticmethod
    def _tag_for_sha256(open_clip: Any, arch_name: str, sha: str) -> str | None:
        """The tag whose published download has this sha256 (open_clip embeds OpenAI's)."""
        for tag in open_clip.list_pretrained_tags_by_model(arch_name):
            url = (open_clip.get_pretrained_cfg(arch_name, tag) or {}).get("url", "")
            if sha in urlparse(url).path.split("/"):
                return tag
        return None

    def _fetch_tag(self, open_clip: Any, arch_name: str, tag: str,
                   cfg: dict[str, Any]) -> str:
        """Local path of a tag's weights: from the caches if present, else downloaded.

        Offline machines must fail fast with a useful message: huggingface_hub retries with
        backoff for most of a minute when the network is down, so we check the caches first,
        honour HF_HUB_OFFLINE, and probe the host with a short timeout before downloading.
        """
        hf = str(cfg.get("hf_hub", "") or "")
        url = str(cfg.get("url", "") or "")
        cached = self._cached_tag_files(hf, url)
        if cached:
            return cached[0]
        advice = ("download the checkpoint on a machine with internet and pass "
                  "--pretrained /path/to/file" + (f" (e.g. {url})" if url else ""))
        what = f"the {arch_name}/{tag} weights"
        try:
            from huggingface_hub import constants as hf_constants
            hf_offline = bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))
            endpoint = str(getattr(hf_constants, "ENDPOINT", "https://huggingface.co"))
        except ImportError:
            hf_offline, endpoint = False, "https://huggingface.co"
        if _env_true("HF_HUB_OFFLINE") or hf_offline:
            raise ExternalError(f"cannot download {what}: offline mode (HF_HUB_OFFLINE) and not "
                                f"in the local cache; {advice}")
        via_proxy = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy",
                                                      "ALL_PROXY", "all_proxy"))
        if not via_proxy:
            target = urlparse(endpoint if hf else url)
            reason = _tcp_probe(target.hostname or "huggingface.co",
                                target.port or (443 if target.scheme != "http" else 80),
                                _NET_TIMEOUT)
            if reason is not None:
                raise ExternalError(f"cannot download {what} ({reason}); {advice}")
        log.info("downloading %s (first run only)", what)
        try:
            path = open_clip.download_pretrained(cfg)
        except Exception as e:
            raise ExternalError(f"cannot download {what} ({_one_line(e)}); {advice}") from None
        if not path or not os.path.isfile(path):
            raise ExternalError(f"cannot download {what}; {advice}")
        return str(path)

    @staticmethod
    def _cached_tag_files(hf: str, url: str) -> list[str]:
        found: list[str] = []
        if hf:
            try:
                from huggingface_hub import try_to_load_from_cache
            except ImportError:
                try_to_load_from_cache = None
            if try_to_load_from_cache is not None:
                # Same convention as open_clip.download_pretrained: "org/repo/file" or
                # "org/repo/" for the default open_clip_pytorch_model.bin.
                repo, filename = os.path.split(hf)
                filename = filename or "open_clip_pytorch_model.bin"
                names = [filename]
                if filename.endswith((".bin", ".pth")):
                    names.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
                for name in names:
                    try:
                        p = try_to_load_from_cache(repo, name)
                    except Exception:
                        p = None
                    if isinstance(p, str) and os.path.isfile(p):
                        found.append(p)
        if url:
            p = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
            if os.path.isfile(p):
                found.append(p)
        return found

    def _checkpoint_sha256(self, path: str) -> str:
        """sha256 of the checkpoint, cached by (path, size, mtime_ns) in the cache dir."""
        st = os.stat(path)
        key = os.path.realpath(path)
        index = self.cache_dir / "checkpoint-sha256.json"
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        ent = data.get(key)
        if (isinstance(ent, dict) and ent.get("size") == st.st_size
                and ent.get("mtime_ns") == st.st_mtime_ns
                and re.fullmatch(r"[0-9a-f]{64}", str(ent.get("sha256", "")))):
            return str(ent["sha256"])
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
        sha = h.hexdigest()
        data[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
        try:
            _atomic_write(index, json.dumps(data, indent=1, sort_keys=True).encode())
        except OSError as e:
            log.warning("cannot write %s (%s); the checkpoint will be re-hashed next start",
                        index, e)
        return sha

    @staticmethod
    def _build(open_clip: Any, arch_name: str, label: str, quick_gelu: bool,
               preprocess: dict[str, Any]) -> Any:
        kwargs: dict[str, Any] = {"pretrained": None, "precision": "fp32", "device": "cpu",
                                  "force_quick_gelu": quick_gelu}
        if preprocess:
            kwargs["force_preprocess_cfg"] = preprocess
        params = inspect.signature(open_clip.create_model).parameters
        # Never let open_clip fetch tower weights from the Hub: the full checkpoint follows.
        for flag in ("pretrained_text", "pretrained_hf", "pretrained_image"):
            if flag in params:
                kwargs[flag] = False
        drop = _DropRandomInitWarning()
        root = logging.getLogger()
        root.addFilter(drop)
        try:
            return open_clip.create_model(arch_name, **kwargs)
        except Exception as e:
            raise ConfigError(f"{label}: cannot build this model ({_one_line(e)})") from None
        finally:
            root.removeFilter(drop)

    @staticmethod
    def _load_weights_lean(open_clip: Any, model: Any, path: str) -> bool:
        """Load the checkpoint without holding two copies of the weights; False = not done.

        The classic route copies the loaded state dict into the randomly initialised
        parameters, so for a moment the process holds both (ViT-L-14: 2 x 1.7 GB, a 4 GB peak).
        Here the random parameters are released first and the loaded tensors are *assigned*
        (``load_state_dict(assign=True)``); each one is then cast back to the dtype the model
        was built with, which is what the copy did implicitly (OpenAI's checkpoints are fp16).
        Same checks (strict keys and shapes), same conversions (open_clip.load_checkpoint).
        Any failure returns False: the model is then unusable and the caller rebuilds it and
        takes the classic route, which produces the usual error for a bad file.
        """
        if Path(path).suffix.lower() in (".npz", ".npy"):
            return False  # big_vision loader copies into the existing parameters
        named = list(model.named_parameters(remove_duplicate=False))
        if len({id(p) for _, p in named}) != len(named):
            return False  # tied weights would come apart under assign
        dtypes = {**{n: p.dtype for n, p in named},
                  **{n: b.dtype for n, b in model.named_buffers()}}
        del named  # no references to the random parameters may survive the swap below
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = torch.nn.Parameter(
                        torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        _malloc_trim()
        original = model.load_state_dict

        def assign(state_dict: Any, strict: bool = True, **kw: Any) -> Any:
            return original(state_dict, strict=strict, assign=True)

        model.load_state_dict = assign  # instance attribute: this model only
        try:
            if zipfile.is_zipfile(path) and _is_torchscript(path):
                sd = torch.jit.load(path, map_location="cpu").state_dict()
                for k in ("input_resolution", "context_length", "vocab_size"):
                    sd.pop(k, None)
                buffers = {name for name, _ in model.named_buffers()}
                sd = {k: v for k, v in sd.items()
                      if k not in buffers or k in model.state_dict()}
                model.load_state_dict(sd, strict=True)
                del sd
            else:
                open_clip.load_checkpoint(model, path, strict=True)
        except Exception:
            return False
        finally:
            del model.load_state_dict
        with torch.no_grad():
            for module_name, module in model.named_modules():
                prefix = module_name + "." if module_name else ""
                for table in (module._parameters, module._buffers):
                    for name, t in list(table.items()):
                        if t is None:
                            continue
                        if t.is_meta:
                            return False  # strict loading should make this impossible
                        want = dtypes.get(prefix + name, t.dtype)
                        if t.dtype != want or not t.is_contiguous():
                            new = t.detach().to(dtype=want).contiguous()
                            table[name] = (torch.nn.Parameter(new, requires_grad=t.requires_grad)
                                           if isinstance(t, torch.nn.Parameter) else new)
        _malloc_trim()
        return True

    @staticmethod
    def _load_weights(open_clip: Any, model: Any, path: str, label: str) -> None:
        try:
            if zipfile.is_zipfile(path) and _is_torchscript(path):
                # OpenAI's original .pt files are TorchScript archives, which torch.load refuses
                # with weights_only=True. torch.jit.load runs no arbitrary Python.
                sd = torch.jit.load(path, map_location="cpu").state_dict()
                for k in ("input_resolution", "context_length", "vocab_size"):
                    sd.pop(k, None)
                # A scripted module's state_dict also holds non-persistent buffers (the
                # text attention mask); the model rebuilds those itself.
                buffers = {name for name, _ in model.named_buffers()}
                sd = {k: v for k, v in sd.items()
                      if k not in buffers or k in model.state_dict()}
                model.load_state_dict(sd, strict=True)
            else:
                # weights_only loading: a checkpoint cannot execute code.
                open_clip.load_checkpoint(model, path, strict=True)
        except Exception as e:
            raise ConfigError(f"{path}: not a usable checkpoint for {label} "
                              f"({_one_line(e)})") from None

    def _setup_preprocess(self, model: Any) -> None:
        visual = getattr(model, "visual", None)
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        size = cfg.get("size") or getattr(visual, "image_size", None) or 224
        if isinstance(size, (list, tuple)):
            size = (int(size[0]), int(size[-1]))
        else:
            size = (int(size), int(size))
        self.image_size: tuple[int, int] = size  # (height, width)
        mean = cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_MEAN
        std = cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_STD
        if not isinstance(mean, (list, tuple)):
            mean = (mean,) * 3
        if not isinstance(std, (list, tuple)):
            std = (std,) * 3
        self._mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self._std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)
        self._resample = (Image.Resampling.BILINEAR if cfg.get("interpolation") == "bilinear"
                          else Image.Resampling.BICUBIC)
        self._resize_mode = cfg.get("resize_mode") or "shortest"
        self._fill = int(cfg.get("fill_color") or 0)

    def _resize_crop(self, im: Image.Image) -> Image.Image:
        """open_clip's eval transform (torchvision Resize + CenterCrop), with Pillow only."""
        th, tw = self.image_size
        w, h = im.size
        if self._resize_mode == "squash":
            return im.resize((tw, th), self._resample)
        if self._resize_mode == "longest":
            scale = min(tw / w, th / h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            small = im.resize((nw, nh), self._resample)
            canvas = Image.new("RGB", (tw, th), (self._fill,) * 3)
            canvas.paste(small, ((tw - nw) // 2, (th - nh) // 2))
            return canvas
        if th == tw:
            # torchvision Resize(int): short side -> S, long side int(S * long / short).
            if w <= h:
                nw, nh = tw, int(tw * h / w)
            else:
                nw, nh = int(th * w / h), th
        else:
            scale = max(tw / w, th / h)
            nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
        # torchvision CenterCrop offsets.
        top = int(round((nh - th) / 2.0))
        left = int(round((nw - tw) / 2.0))
        if (nw, nh) == (w, h):
            return im.crop((left, top, left + tw, top + th))
        # Resize only the crop window (box in source coordinates): same pixels as resizing the
        # whole image then cropping, without building a huge intermediate for extreme aspect
        # ratios (a 1x512 strip would otherwise become 224x114688).
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy)
        return im.resize((tw, th), self._resample, box=box)

    # -- text embeddings ----------------------------------------------------------------------

    def _text_embeddings(self, open_clip: Any) -> np.ndarray:
        """Concept text embeddings, cached per (model_id, concept digest, precision).

        They are always computed in fp32 (see __init__), so "precision" in the key is the
        precision of the stored vectors, not of the image path.
        """
        cs = self.concepts
        key_doc = {"format": _CACHE_FORMAT, "model_id": self.model_id,
                   "concepts_digest": cs.digest, "precision": "fp32",
                   "texts": cs.texts}
        key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
        directory = self.cache_dir / "text-embeddings"
        npy, meta = directory / f"{key}.npy", directory / f"{key}.json"
        self.text_cache_path = npy
        cached = self._read_text_cache(npy, meta, key_doc)
        if cached is not None:
            self.text_cache_hit = True
            return cached
        emb = self._compute_text_embeddings(open_clip)
        buf = io.BytesIO()
        np.save(buf, emb, allow_pickle=False)
        blob = buf.getvalue()
        try:
            # The sidecar is written last and carries the .npy's sha256: a crash between the
            # two writes, or any later damage, is caught on read and recomputed.
            _atomic_write(npy, blob)
            _atomic_write(meta, json.dumps({**key_doc, "shape": list(emb.shape),
                                            "npy_sha256": hashlib.sha256(blob).hexdigest()},
                                           indent=1).encode())
        except OSError as e:
            log.warning("cannot write the text-embedding cache under %s (%s); continuing "
                        "without it", directory, e)
        return emb

    def _read_text_cache(self, npy: Path, meta: Path,
                         key_doc: dict[str, Any]) -> np.ndarray | None:
        if not npy.exists() and not meta.exists():
            return None
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            blob = npy.read_bytes()
            if not isinstance(info, dict):
                raise ValueError("sidecar is not an object")
            if any(info.get(k) != v for k, v in key_doc.items()):
                raise ValueError("sidecar does not match this model/concept set")
            if info.get("npy_sha256") != hashlib.sha256(blob).hexdigest():
                raise ValueError("checksum mismatch")
            arr = np.load(io.BytesIO(blob), allow_pickle=False)
            if (arr.dtype != np.float32 or arr.ndim != 2
                    or arr.shape[0] != len(self.concepts.concepts)
                    or not np.all(np.isfinite(arr))
                    or not np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-3)):
                raise ValueError("unexpected array contents")
            return arr
        except (OSError, ValueError, EOFError) as e:
            log.warning("text-embedding cache %s is unusable (%s); recomputing", npy,
                        _one_line(e))
            return None

    def _compute_text_embeddings(self, open_clip: Any) -> np.ndarray:
        try:
            tokenizer = open_clip.get_tokenizer(self._arch_name)
            # Bare concept text, no prompt template: that is how the thresholds were calibrated.
            tokens = tokenizer(self.concepts.texts)
        except Exception as e:
            raise ExternalError(f"cannot load the tokenizer for {self.arch} "
                                f"({_one_line(e)})") from None
        with torch.inference_mode():
            t = self.model.encode_text(tokens).float()
            t = F.normalize(t, dim=-1)
        return t.cpu().numpy().astype(np.float32)


def _drop_text_tower(model: Any) -> None:
    """Release everything of a CLIP model but its image tower (and logit scale/bias).

    The tensors become "meta" tensors (shape and dtype, no storage), so the module structure
    stays intact and any accidental use of the text tower fails loudly instead of computing
    garbage.
    """
    with torch.no_grad():
        for name, child in model.named_children():
            if name != "visual":
                child.to("meta")
        for name, p in list(model._parameters.items()):
            if p is not None and name not in ("logit_scale", "logit_bias"):
                model._parameters[name] = torch.nn.Parameter(p.detach().to("meta"),
                                                             requires_grad=False)
        for name, b in list(model._buffers.items()):
            if b is not None:
                model._buffers[name] = b.to("meta")
    _malloc_trim()


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so RSS reflects what is in use."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl"
                       for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
