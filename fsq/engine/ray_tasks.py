"""What runs on Ray workers (fsq.engine.ray_engine submits it): fetch + hash, decode +
preprocess, and the classifier actor.

Invariants (docs/scale.md "Security"):
- Nothing here opens the state database or sees a vault key. Workers get a copy of the
  settings reduced to the source's and the decoder's/classifier's (``worker_settings``): no
  vault, database, Lemmy, pict-rs API or exchange setting ever leaves the coordinator.
- Workers decide nothing that needs the database (allowlist, hash lists and banks, trusted
  peers, verdict cache): they return hashes and facts; the coordinator decides and records.
- The bytes stay on the worker that read them (in Ray's object store, passed by reference from
  the fetch task to the decode task); the coordinator never receives them and re-reads an
  object itself before sealing it (fsq.pipeline.Scanner._reread).
- Decoding uses the same fsq.media code and limits as a local scan: a DecodePool (worker
  process killed at the CPU budget) with the pass's DecodeRequest.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from fsq.errors import SourceError, UsageError
from fsq.media import hashes, sniff
from fsq.sources.base import ObjectError

# Groups of settings a worker may see: reading the store and decoding/classifying.
WORKER_GROUPS = frozenset({"scan", "s3", "sftp"})

_lock = threading.Lock()
_sources: dict[str, Any] = {}   # token -> open Source, one per worker process and pass
_decoders: dict[float, Any] = {}  # cpu budget -> DecodePool of this worker process


def worker_settings(settings: Any) -> dict[str, Any]:
    """The values of ``settings``, every one outside WORKER_GROUPS reset to its default (a
    plain dict: what is shipped to the workers)."""
    from fsq.config import SETTINGS
    return {s.name: (getattr(settings, s.name) if s.group in WORKER_GROUPS else s.default)
            for s in SETTINGS}


def _settings(values: dict[str, Any]) -> Any:
    from fsq.config import Settings
    return Settings(dict(values), {k: "coordinator" for k in values})


def build_classifier(values: dict[str, Any], concepts: Any) -> Any:
    """An actor's classifier (fsq.runtime.build_classifier) from shipped worker settings."""
    from fsq.runtime import build_classifier as build
    return build(_settings(values), concepts)


def _source(spec: dict[str, Any]) -> Any:
    with _lock:
        src = _sources.get(spec["token"])
        if src is None:
            from fsq.sources.base import open_source
            src = open_source(spec["url"], _settings(spec["settings"]))
            _sources[spec["token"]] = src
        return src


def _decoder(cpu_seconds: float) -> Any:
    with _lock:
        pool = _decoders.get(cpu_seconds)
        if pool is None:
            from fsq.media import DecodePool
            pool = _decoders[cpu_seconds] = DecodePool(1, cpu_seconds)
        return pool


def fetch_hash(spec: dict[str, Any], key: str, max_bytes: int) -> tuple[dict[str, Any], Any]:
    """Ray task (num_returns=2): read one object; (facts, bytes). The bytes stay in the object
    store of this node for ``decode_prepare``; only the facts go to the coordinator."""
    try:
        data = _source(spec).read(key, max_bytes=max_bytes)
    except ObjectError as exc:
        return {"error": exc.reason}, None
    except UsageError as exc:  # the source refused the key itself: this object only
        return {"error": f"key refused: {exc.message}"}, None
    except SourceError as exc:  # the storage itself: the coordinator stops the pass
        return {"source_error": exc.message}, None
    sha256, md5 = hashes(data)
    return {"sha256": sha256, "md5": md5, "size": len(data), "sniff": sniff(data)}, data


def decode_prepare(cfg: Any, pre: Any, data: bytes) -> tuple[dict[str, Any], Any]:
    """Ray task (num_returns=2): decode (fsq.media, the pass's limits), PDQ-hash and
    preprocess; (facts, list of 3xSxS float32 arrays or None). ``cfg`` is the pass's ScanConfig
    without its database-bound parts."""
    from fsq.pipeline import decode_or_verdict
    from fsq.signals import match as signals
    decoded, verdict = decode_or_verdict(data, cfg, _decoder(cfg.decode_seconds))
    if verdict is not None:
        return {"verdict": verdict}, None
    from fsq.classify import frameskip
    frames, _ = signals.check_decoded(None, decoded)  # banks are matched by the coordinator
    # Near-identical frames are left out here, so only the frames to classify travel; the
    # plan goes back with ``decoded`` (fsq.pipeline.clip_verdict expands the decision).
    tensors = frameskip.preprocess_frames(pre.preprocess_array, decoded,
                                          getattr(cfg, "frame_skip", 0.0), pre)
    decoded.frames = []
    return {"decoded": decoded, "pdq": frames, "n": len(tensors)}, tensors


class Preprocessor:
    """The classifier's own preprocessing (ClipClassifier.preprocess_array, the same code),
    without the model: built by an actor from its loaded model and shipped to the workers."""

    def __init__(self, clf: Any) -> None:
        for name in ("image_size", "_mean", "_std", "_resample", "_resize_mode", "_fill"):
            setattr(self, name, getattr(clf, name))

    def preprocess_array(self, img: Any) -> Any:
        from fsq.classify.clip import ClipClassifier
        return ClipClassifier.preprocess_array(self, img)  # type: ignore[arg-type]

    def _resize_crop(self, im: Any) -> Any:
        from fsq.classify.clip import ClipClassifier
        return ClipClassifier._resize_crop(self, im)  # type: ignore[arg-type]


class ClassifierActor:
    """Ray actor: one model load; classifies batches of preprocessed files."""

    def __init__(self, factory: Any) -> None:
        self.clf = factory()

    def info(self) -> dict[str, Any]:
        return {"model_id": self.clf.model_id, "pre": Preprocessor(self.clf),
                "pid": os.getpid()}

    def classify(self, refs: list[Any]) -> list[tuple[Any, int]]:
        import warnings

        import ray
        import torch
        items = ray.get(refs)  # each: the list of one file's frames
        with warnings.catch_warnings():
            # Zero-copy views of Ray's read-only object store: the model only reads them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors = [[torch.from_numpy(a) for a in frames] for frames in items]
        return self.clf.classify_items(tensors)
