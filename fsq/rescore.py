"""`fsq rescore`: re-decide clean model verdicts under another concept set or severity from the
stored image embeddings (fsq.ledger.embeddings), without decoding a file or running the image
tower. Knows nothing of click.

Why: the rule is a pure function of (image embedding . text embedding) similarities, so a
changed concept set or severity needs only the new concepts' text embeddings. Decoding and the
image tower are >99% of a scan's CPU; this is a matrix product and the rule.

What it does, for every object of one source whose current verdict is a clean model verdict
with stored embeddings under the same model:

1. similarities of every stored frame with the new text embeddings (one matrix product, the
   same formula as the scan: fsq.classify.clip.similarities_of);
2. a vectorised screen computes each frame's adjusted scores exactly as ``decide`` does and an
   upper bound of its counts (the pair guard only lowers counts), so a frame that cannot flag is
   settled without calling ``decide``;
3. every other frame goes through ``decide`` itself, and a file is flagged if any frame is
   (same rule and frame choice as ``ClipClassifier.classify_items``);
4. a file that flags now gets a new verdict (method ``rescore``; the old verdict is kept and
   named in the details) and an incident, through the scanner's own ``record_verdict``.

Only clean -> flagged can change: flagged content has no stored embeddings (evidence is sealed
or not kept), and rescore never clears a flag - releasing is a person's decision
(`fsq release`). Verdicts that do not change are not rewritten. The caller quarantines the
newly flagged objects the way `fsq apply` does (Quarantiner.apply_pending).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fsq.classify.concepts import ConceptSet
from fsq.classify.similarity import similarities_of
from fsq.classify.rule import _EPS, RULE_VERSION, SEVERITY_SHIFT, decide
from fsq.ledger import embeddings as store
from fsq.ledger import audit, state
from fsq.ledger.db import transaction
from fsq.pipeline import _reason, record_verdict

log = logging.getLogger("fsq.rescore")

# Keys of a verdict's details that come from the decision itself (replaced on rescore); the
# rest (frames sampled, labels, decode facts) describe the file and are carried over.
_DECISION_KEYS = {"flagged", "underage_count", "lewd_count", "lewd_fired", "fired",
                  "adjustments", "guarded", "underage_max", "scores", "adjusted", "severity",
                  "rule_version", "frame", "frame_label", "frames"}


@dataclass
class RescoreResult:
    model_id: str
    concepts: str
    concepts_digest: str
    severity: str
    dry_run: bool
    candidates: int = 0        # objects with a clean model verdict and stored embeddings
    frames: int = 0
    screened_out: int = 0      # frames the vectorised screen settled (cannot flag)
    decided: int = 0           # frames that went through the rule itself
    unchanged: int = 0
    flagged: int = 0           # newly flagged
    errors: int = 0            # stored rows that could not be read (damaged)
    seconds: float = 0.0
    flagged_keys: list[str] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 3)
        return d


def screen(sims: np.ndarray, cs: ConceptSet, severity: str) -> np.ndarray:
    """Per frame: True if the rule could flag it. False is certain (exact adjusted scores, an
    upper bound of the counts); True means "ask ``decide``"."""
    shift = SEVERITY_SHIFT[severity]
    raw = sims.astype(np.float64)  # decide() works on Python floats (float64)
    col = {c.text: i for i, c in enumerate(cs.concepts)}
    adjusted = raw.copy()
    for i, c in enumerate(cs.concepts):
        if c.group != "control":
            adjusted[:, i] = raw[:, i] + c.bias
    for i, c in enumerate(cs.concepts):
        if c.group == "control":
            trig = (raw[:, i] - c.threshold) > _EPS
            for target, delta in c.adjust:
                adjusted[:, col[target]] += np.where(trig, delta, 0.0)
    under = np.zeros(len(raw), dtype=np.int64)
    lewd = np.zeros(len(raw), dtype=np.int64)
    for i, c in enumerate(cs.concepts):
        if c.group == "control":
            continue
        a = adjusted[:, i]
        over_thr = (a - (c.threshold + shift)) > _EPS
        if c.critical is not None:
            over_crit = (a - (c.critical + shift)) > _EPS
            count = np.where(over_crit, max(cs.critical_weight, 1), np.where(over_thr, 1, 0))
        else:
            count = over_thr.astype(np.int64)
        if c.group == "underage":
            under += count
        else:
            lewd += count
    return (under >= cs.underage_min) & (lewd >= cs.lewd_min)


def rescore(conn: sqlite3.Connection, source: str, *, model_id: str, cs: ConceptSet,
            severity: str, text_embeddings: np.ndarray, settings_digest: str | None,
            dry_run: bool = False) -> RescoreResult:
    """Re-decide the source's clean model verdicts (module docstring); record what flags."""
    if severity not in SEVERITY_SHIFT:
        raise ValueError(f"unknown severity {severity!r}")
    t0 = time.monotonic()
    res = RescoreResult(model_id=model_id, concepts=cs.name, concepts_digest=cs.digest,
                        severity=severity, dry_run=dry_run)
    objects = store.clean_model_objects(conn, source)
    texts = cs.texts
    changed: list[tuple[tuple, str, Any, int]] = []
    for chunk in store.iter_vectors(conn, model_id):
        rows, blobs = [], []
        for sha, n_frames, dim, blob in chunk:
            owners = objects.get(sha)
            if not owners:
                continue  # content of another source, or no longer clean
            problem = store.check_blob(blob, n_frames, dim)
            if problem is None and dim != text_embeddings.shape[1]:
                problem = (f"stored embedding has {dim} dimensions, the model "
                           f"{text_embeddings.shape[1]}")
            if problem is not None:
                _problem(res, owners, problem)
                continue
            rows.append((sha, owners, n_frames))
            blobs.append(blob)
        if not rows:
            continue
        vec = np.frombuffer(b"".join(blobs), dtype=store.DTYPE).astype(np.float32)
        vec = vec.reshape(-1, text_embeddings.shape[1])
        sims = similarities_of(vec, text_embeddings)
        finite = np.isfinite(vec).all(axis=1)
        maybe = screen(sims, cs, severity)
        start = 0
        for sha, owners, n in rows:
            lo, hi = start, start + n
            start = hi
            if not finite[lo:hi].all():
                _problem(res, owners, "stored embedding is not finite")
                continue
            res.candidates += len(owners)
            res.frames += n
            if not maybe[lo:hi].any():
                res.screened_out += n
                res.unchanged += len(owners)
                continue
            best, per = None, []
            for j in range(n):
                d = decide(dict(zip(texts, sims[lo + j].tolist())), cs, severity)
                res.decided += 1
                per.append({"index": j, "flagged": d.flagged,
                            "fired": [f["text"] for f in d.fired],
                            "underage_max": round(d.underage_max, 5)})
                if best is None or d.rank_key() > best[0].rank_key():
                    best = (d, j)
            assert best is not None
            if not best[0].flagged:
                res.unchanged += len(owners)
                continue
            if n > 1:
                best[0].per_frame = per
            changed.extend((o, sha, best[0], best[1]) for o in owners)
    if changed:
        with transaction(conn):
            for (object_id, key, md5, size, deciding_id), sha, decision, frame in changed:
                old = state.get_verdict(conn, int(deciding_id))
                v = _verdict(old, decision, frame, model_id=model_id, cs=cs,
                             severity=severity, settings_digest=settings_digest)
                record_verdict(conn, object_id=int(object_id), sha256=sha, md5=md5,
                               size=int(size or 0), verdict=v,
                               audit_details={"source": source, "key": key,
                                              "rescore": True, "dry_run": dry_run},
                               origin="rescore")
                res.flagged += 1
                res.flagged_keys.append(key)
            # pict-rs variants and motion files that inherited these originals' clean verdict
            # are flagged with them, into their incidents (fsq.engine.variants).
            from fsq.engine.variants import flag_derived
            derived = flag_derived(conn, source, {sha for _, sha, _, _ in changed},
                                   origin="rescore", audit_details={
                                       "source": source, "rescore": True, "dry_run": dry_run})
            res.flagged += len(derived)
            res.flagged_keys.extend(derived)
    res.seconds = time.monotonic() - t0
    audit.append(conn, "rescore", f"source:{source}",
                 {"model_id": model_id, "concepts": cs.name, "concepts_digest": cs.digest,
                  "severity": severity, "rule_version": RULE_VERSION,
                  "candidates": res.candidates, "flagged": res.flagged,
                  "errors": res.errors, "dry_run": dry_run})
    return res


def _problem(res: RescoreResult, owners: list[tuple], reason: str) -> None:
    for o in owners:
        res.errors += 1
        res.problems.append({"key": o[1], "status": "error", "reason": reason})


def _verdict(old: sqlite3.Row | None, decision: Any, frame: int, *, model_id: str,
             cs: ConceptSet, severity: str, settings_digest: str | None
             ) -> state.VerdictRecord:
    """The new verdict: the decision's figures, the file's facts carried over from the verdict
    the embeddings came from (which stays, and is named in ``rescored_from``)."""
    try:
        prev = json.loads(old["details"]) if old is not None else {}
    except ValueError:
        prev = {}
    details = {k: v for k, v in (prev if isinstance(prev, dict) else {}).items()
               if k not in _DECISION_KEYS}
    details.update(decision.to_json())
    sampled = details.get("frames_sampled") or []
    details["frame"] = sampled[frame] if frame < len(sampled) else frame
    if decision.per_frame:
        details["frames"] = decision.per_frame
    details["rescored_from"] = int(old["id"]) if old is not None else None
    reason = _reason(decision) + " (rescored from stored embeddings)"
    return state.VerdictRecord(
        "flagged", "rescore", reason, model_id=model_id, concepts_digest=cs.digest,
        severity=severity, rule_version=RULE_VERSION,
        media_type=old["media_type"] if old is not None else None,
        width=old["width"] if old is not None else None,
        height=old["height"] if old is not None else None,
        frames=old["frames"] if old is not None else None,
        details=details, settings_digest=settings_digest)
