"""The `fsq rescore` benchmark (``python -m fsq.bench --rescore-objects N``).

Synthetic but shaped like the real thing: a state database with N clean objects, each with a
model verdict and a stored ViT-L-14-sized (768-d) float16 embedding, and the shipped concept
set (21 concepts) with correlated text embeddings. The image embeddings are mixed so that the
similarities spread around the concept thresholds (as real photos do, ~0.12-0.26), so a real
share of frames gets past the vectorised screen into the rule and some objects flag (each one
then costs a verdict, an incident and an audit event, as in production). No model, no files.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 768


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def build(db: Path, n: int, *, seed: int = 0) -> tuple[np.ndarray, str]:
    """Write the synthetic database; returns (text embeddings, source URL)."""
    from fsq.classify.concepts import load_concepts
    from fsq.ledger import embeddings
    from fsq.ledger.db import connect, transaction
    from fsq.timeutil import iso
    cs = load_concepts(None)
    rng = np.random.default_rng(seed)
    base = _unit(rng.standard_normal(DIM))
    text = _unit(base + 0.9 * _unit(rng.standard_normal((len(cs.concepts), DIM))))
    source = "file:///bench/rescore"
    conn = connect(str(db))
    now = iso()
    alpha = rng.uniform(0.05, 0.20, size=n)
    with transaction(conn):
        for lo in range(0, n, 10000):
            hi = min(n, lo + 10000)
            vec = _unit(alpha[lo:hi, None] * base
                        + _unit(rng.standard_normal((hi - lo, DIM))))
            blobs = vec.astype(embeddings.DTYPE)
            shas = [hashlib.sha256(b"%d" % i).hexdigest() for i in range(lo, hi)]
            cur = conn.execute("SELECT COALESCE(MAX(id), 0) FROM verdicts").fetchone()[0]
            conn.executemany(
                "INSERT INTO verdicts (id, sha256, created_at, outcome, reason, method, "
                "model_id, details) VALUES (?,?,?,'clean','below rule','clip',?,'{}')",
                [(cur + 1 + k, s, now, "ViT-L-14/openai") for k, s in enumerate(shas)])
            conn.executemany(
                "INSERT INTO objects (source, key, size, mtime, sha256, md5, status, "
                "verdict_id, first_seen, last_seen) VALUES (?,?,1000,0,?,?,'clean',?,?,?)",
                [(source, f"{s[:2]}/{s}.jpg", s, s[:32], cur + 1 + k, now, now)
                 for k, s in enumerate(shas)])
            conn.executemany(
                "INSERT INTO embeddings (sha256, model_id, precision, n_frames, dim, vectors, "
                "verdict_id, created_at) VALUES (?,?,'bf16',1,?,?,?,?)",
                [(s, "ViT-L-14/openai", DIM, blobs[k].tobytes(), cur + 1 + k, now)
                 for k, s in enumerate(shas)])
    conn.close()
    return text.astype(np.float32), source


def run(work: Path, n: int, severity: str = "strict") -> dict[str, Any]:
    """Build (fresh) and time one rescore of the whole database."""
    from fsq.classify.concepts import load_concepts
    from fsq.ledger.db import connect
    from fsq.rescore import rescore
    db = work / "rescore.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    t0 = time.monotonic()
    text, source = build(db, n)
    build_s = time.monotonic() - t0
    conn: sqlite3.Connection = connect(str(db))
    try:
        res = rescore(conn, source, model_id="ViT-L-14/openai", cs=load_concepts(None),
                      severity=severity, text_embeddings=text, settings_digest="bench",
                      dry_run=True)
    finally:
        conn.close()
    return {"objects": res.candidates, "frames": res.frames, "decided": res.decided,
            "newly_flagged": res.flagged, "seconds": round(res.seconds, 3),
            "objects_per_s": round(res.candidates / res.seconds, 1) if res.seconds else None,
            "images_decoded": 0, "build_seconds": round(build_s, 1), "severity": severity}
