"""The concept decision rule, as a pure function of similarities and a concept set.

Why this exists apart from the model code: the rule decides what gets quarantined, so it must be
testable with tables of made-up similarities (no torch, no files, no clock), and every figure it
used must come back out in the ``Decision`` so a report can show why an image was flagged.

Steps (``decide``):

1. raw similarity per concept (cosine, from the model);
2. add each concept's ``bias`` (the reference's always-on "NSFW model" lewd additions);
3. each control concept whose *raw* similarity is over its trigger adds its deltas to its
   targets (controls are never adjusted themselves, and their triggers are not shifted by
   severity: they correct known CLIP biases and should not switch on/off with the preset);
4. compare against the thresholds shifted by the severity preset (``SEVERITY_SHIFT``, applied
   to every underage/lewd threshold and critical threshold).

An underage concept over its threshold counts 1, over its critical threshold counts
``critical_weight``. Flag when the underage count >= ``underage_min`` and at least ``lewd_min``
lewd concepts are over their thresholds. "Over" is strict: a score exactly at the line does not
fire (compared with a 1e-9 tolerance so float noise such as 0.19 + 0.02 cannot decide it).

Singular/plural guard: "child" and "children" look at the same evidence, so an adjustment must
not make the pair count twice. If both members of a ``pair`` fire and at least one of them fired
*only because of an adjustment* (its raw score alone would not reach the level it fired at,
threshold or critical), the pair contributes the larger of the two counts instead of their sum.
Pairs that fire on raw scores alone still count both. Applied the same way to lewd pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from fsq.classify.concepts import ConceptSet

RULE_VERSION = "1"

# Added to every underage/lewd threshold and critical threshold (not to control triggers).
SEVERITY_SHIFT: dict[str, float] = {"strict": -0.01, "balanced": 0.0, "lenient": 0.01}

_EPS = 1e-9


def _over(score: float, line: float) -> bool:
    return score - line > _EPS


@dataclass
class Decision:
    """The verdict for one image (or one frame) and everything that led to it."""

    flagged: bool
    underage_count: int
    lewd_fired: list[str]
    fired: list[dict[str, Any]]
    adjustments: list[dict[str, Any]]
    scores: dict[str, float]
    adjusted: dict[str, float]
    severity: str
    rule_version: str = RULE_VERSION
    lewd_count: int = 0
    guarded: list[dict[str, Any]] = field(default_factory=list)
    underage_max: float = 0.0  # highest adjusted underage score, fired or not
    # For a file of several frames, the file-level decision carries one summary per frame
    # (index, flagged, fired concepts, underage_max), so the verdict can say which frames
    # (video timestamps) fired. Not part of to_json(): the verdict records it on its own.
    per_frame: list[dict[str, Any]] = field(default_factory=list)
    # The file's frame embeddings (n_frames x d float32, sampled-frame order) when the model
    # produced this decision, so the scanner can keep them for `fsq rescore`. Not in to_json().
    embeddings: Any = None

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` highest raw similarities, highest first (for log lines and reports)."""
        return sorted(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def rank_key(self) -> tuple[bool, int, int, float]:
        """Orders frames of one file: flagged first, then underage count, lewd count, and the
        highest adjusted underage score."""
        return (self.flagged, self.underage_count, self.lewd_count, self.underage_max)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict; floats rounded to 5 decimals."""
        return _rounded({
            "flagged": self.flagged,
            "underage_count": self.underage_count,
            "lewd_count": self.lewd_count,
            "lewd_fired": list(self.lewd_fired),
            "fired": self.fired,
            "adjustments": self.adjustments,
            "guarded": self.guarded,
            "underage_max": self.underage_max,
            "scores": self.scores,
            "adjusted": self.adjusted,
            "severity": self.severity,
            "rule_version": self.rule_version,
        })


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 5)
    if isinstance(obj, dict):
        return {str(k): _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def decide(similarities: Mapping[str, float], cs: ConceptSet,
           severity: str = "balanced") -> Decision:
    """Apply the concept rule (module docstring) to one image's similarities.

    ``similarities`` maps concept text to cosine similarity and must cover every concept of
    ``cs`` (a missing one is a programming error: ValueError). Extra keys are ignored.
    """
    if severity not in SEVERITY_SHIFT:
        raise ValueError(f"unknown severity {severity!r} (one of {', '.join(SEVERITY_SHIFT)})")
    shift = SEVERITY_SHIFT[severity]

    raw: dict[str, float] = {}
    for c in cs.concepts:
        if c.text not in similarities:
            raise ValueError(f"no similarity given for concept {c.text!r}")
        raw[c.text] = float(similarities[c.text])

    adjusted = {c.text: raw[c.text] + (c.bias if c.group != "control" else 0.0)
                for c in cs.concepts}
    adjustments: list[dict[str, Any]] = []
    for c in cs.concepts:
        # Triggers look at the control's raw score and are not severity-shifted (see above).
        if c.group == "control" and _over(raw[c.text], c.threshold):
            for target, delta in c.adjust:
                adjusted[target] += delta
                adjustments.append({"control": c.text, "trigger": c.threshold,
                                    "score": raw[c.text], "target": target, "delta": delta})

    fired: list[dict[str, Any]] = []
    by_text: dict[str, dict[str, Any]] = {}
    for c in cs.concepts:
        if c.group == "control":
            continue
        thr = c.threshold + shift
        crit = c.critical + shift if c.critical is not None else None
        a = adjusted[c.text]
        if crit is not None and _over(a, crit):
            level, line, count = "critical", crit, cs.critical_weight
        elif _over(a, thr):
            level, line, count = "threshold", thr, 1
        else:
            continue
        entry = {"text": c.text, "group": c.group, "raw": raw[c.text], "adjusted": a,
                 "threshold": thr, "critical": crit, "level": level, "count": count,
                 # True when the raw score alone would not have reached this level.
                 "by_adjustment": not _over(raw[c.text], line)}
        fired.append(entry)
        by_text[c.text] = entry

    guarded: list[dict[str, Any]] = []
    done: set[str] = set()
    for entry in fired:
        partner_text = cs.get(entry["text"]).pair
        if partner_text is None or partner_text not in by_text or entry["text"] in done:
            continue
        other = by_text[partner_text]
        done.update((entry["text"], partner_text))
        if not (entry["by_adjustment"] or other["by_adjustment"]):
            continue
        # Keep the larger count (ties: the member listed first in the file); zero the other.
        keep, drop = (entry, other) if entry["count"] >= other["count"] else (other, entry)
        guarded.append({"pair": [entry["text"], partner_text], "kept": keep["text"],
                        "dropped": drop["text"], "dropped_count": drop["count"]})
        drop["count"] = 0

    underage_count = sum(f["count"] for f in fired if f["group"] == "underage")
    lewd_count = sum(f["count"] for f in fired if f["group"] == "lewd")
    flagged = underage_count >= cs.underage_min and lewd_count >= cs.lewd_min
    return Decision(
        flagged=flagged, underage_count=underage_count,
        lewd_fired=[f["text"] for f in fired if f["group"] == "lewd"],
        fired=fired, adjustments=adjustments, scores=raw, adjusted=adjusted,
        severity=severity, rule_version=RULE_VERSION, lewd_count=lewd_count, guarded=guarded,
        underage_max=max(adjusted[c.text] for c in cs.concepts if c.group == "underage"))
