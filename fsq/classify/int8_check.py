"""`fsq model check`: may int8 decide for this checkpoint? Compared on the admin's own files.

Why this exists: int8 moves similarities, and fsq has no trained CLIP weights offline to
validate it on. So int8 (ONNX Runtime, dynamic quantisation, per-channel int8 weights) is
never chosen by ``auto``; it runs only for a checkpoint whose int8 tower was compared with the
torch fp32 tower on the admin's own files and agreed:

* zero verdict flips (a file flagged by one and not the other, under the configured concept
  set and severity), and
* the largest |similarity difference| over every frame and concept under ``max_delta``.

Default bound 0.005: half of the severity presets' step (0.01, SEVERITY_SHIFT) and of the
spacing of the shipped thresholds (0.188 / 0.19 / 0.195 / 0.2 ... steps of 0.002-0.01 between
neighbouring concepts; one concept is always compared with its own line, so the bound is what a
score may move at most), and the same as bf16's measured disagreement, which ``auto`` already
accepts on bf16 CPUs. The verdicts over the sample must agree exactly regardless.

Approvals live in ``model_approvals`` (latest row per checkpoint and precision decides) and
every check is audited (``model.check``). Pure core: no click, no printing.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fsq.classify.rule import decide
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.timeutil import iso

DEFAULT_MAX_DELTA = 0.005


@dataclass
class CheckResult:
    model_id: str
    checkpoint_sha256: str
    max_delta_bound: float
    files: int = 0
    frames: int = 0
    max_delta: float = 0.0
    mean_delta: float = 0.0
    flagged_fp32: int = 0
    flagged_int8: int = 0
    flips: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = False
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["max_delta"] = round(self.max_delta, 6)
        d["mean_delta"] = round(self.mean_delta, 6)
        return d


def compare(clf: Any, int8: Any, items: Sequence[tuple[str, Any]], *,
            max_delta: float = DEFAULT_MAX_DELTA) -> CheckResult:
    """``items``: (key, n x 3 x S x S preprocessed frames) of the admin's files; ``clf`` the
    torch fp32 ClipClassifier, ``int8`` its int8 tower (fsq.classify.onnx_backend)."""
    res = CheckResult(model_id=clf.model_id, checkpoint_sha256=clf.checkpoint_sha256 or "",
                      max_delta_bound=max_delta)
    total, count = 0.0, 0
    texts, cs, sev = clf.concepts.texts, clf.concepts, clf.severity
    for key, frames in items:
        s32 = clf.similarities_of(clf.embed_images(frames))
        e8 = int8.embed(frames.numpy() if hasattr(frames, "numpy") else frames)
        e8 = e8 / np.maximum(np.linalg.norm(e8, axis=1, keepdims=True), 1e-12)
        s8 = clf.similarities_of(e8)
        delta = np.abs(s8.astype(np.float64) - s32)
        res.max_delta = max(res.max_delta, float(delta.max()))
        total += float(delta.sum())
        count += delta.size
        f32 = any(decide(dict(zip(texts, r.tolist())), cs, sev).flagged for r in s32)
        f8 = any(decide(dict(zip(texts, r.tolist())), cs, sev).flagged for r in s8)
        res.flagged_fp32 += f32
        res.flagged_int8 += f8
        if f32 != f8:
            res.flips.append({"key": key, "fp32": "flagged" if f32 else "clean",
                              "int8": "flagged" if f8 else "clean"})
        res.files += 1
        res.frames += len(s32)
    res.mean_delta = total / count if count else 0.0
    if not res.files:
        res.reason = "no file could be compared (scan first, or check --source)"
    elif res.flips:
        res.reason = f"{len(res.flips)} verdict(s) differ between int8 and fp32"
    elif not res.max_delta < max_delta:
        res.reason = (f"largest similarity difference {res.max_delta:.5f} is not under the "
                      f"bound {max_delta}")
    else:
        res.passed = True
        res.reason = "int8 agrees with fp32 on every compared file"
    return res


def record(conn: sqlite3.Connection, res: CheckResult, runtime: str,
           sample: dict[str, Any]) -> None:
    """The approval (or refusal) row and its audit event, in one transaction."""
    details = {**res.to_json(), "sample": sample}
    with transaction(conn):
        conn.execute(
            "INSERT INTO model_approvals (checkpoint_sha256, model_id, precision, runtime, "
            "approved, checked_at, details) VALUES (?,?, 'int8', ?,?,?,?)",
            (res.checkpoint_sha256, res.model_id, runtime, int(res.passed), iso(),
             json.dumps(details, sort_keys=True)))
        audit.append(conn, "model.check", f"model:{res.model_id}",
                     {"precision": "int8", "approved": res.passed, "reason": res.reason,
                      "checkpoint_sha256": res.checkpoint_sha256, "files": res.files,
                      "max_delta": round(res.max_delta, 6), "flips": len(res.flips),
                      "runtime": runtime})


def approved(conn: sqlite3.Connection, checkpoint_sha256: str) -> bool:
    """True if the latest int8 check of this checkpoint passed."""
    row = conn.execute("SELECT approved FROM model_approvals WHERE checkpoint_sha256=? AND "
                       "precision='int8' ORDER BY id DESC LIMIT 1",
                       (checkpoint_sha256,)).fetchone()
    return bool(row and row[0] == 1)
