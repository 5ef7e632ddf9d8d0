"""Concept sets: the words CLIP compares each image against, with their calibrated figures.

Why this exists: thresholds are facts about one model (a concept set calibrated for
ViT-L-14/openai is wrong for ViT-B-32), and admins must be able to tune or replace them without
editing code. So a concept set is a data file (TOML, read with the stdlib ``tomllib``) that
records which model it was calibrated for, and every verdict stores the set's ``digest`` so a
report can say exactly which figures produced it.

File format (see ``default_concepts.toml`` for the full shipped set)::

    name = "my-set"
    calibrated_for = "ViT-L-14/openai"

    [rule]                     # optional; these are the defaults
    underage_min = 3
    critical_weight = 3
    lewd_min = 1

    [[concept]]
    text = "child"
    group = "underage"         # underage | lewd | control
    threshold = 0.188
    critical = 0.225           # optional; underage only
    pair = "children"          # optional singular/plural partner (same group)

    [[concept]]
    text = "porn"
    group = "lewd"
    threshold = 0.200
    bias = 0.015               # optional, always added to the raw similarity

    [[concept]]
    text = "pregnant"
    group = "control"
    threshold = 0.21           # for controls: the trigger
    adjust = { infant = -0.04, child = -0.02 }

Validation is strict and every problem is a ``ConfigError`` whose single line names the file and
the field, because a silently ignored typo in a threshold file changes what gets quarantined.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fsq.errors import ConfigError

GROUPS = ("underage", "lewd", "control")
DEFAULT_RESOURCE = "default_concepts.toml"

_TOP_KEYS = {"name", "calibrated_for", "rule", "concept"}
_RULE_KEYS = {"underage_min", "critical_weight", "lewd_min"}
_CONCEPT_KEYS = {"text", "group", "threshold", "critical", "bias", "adjust", "pair"}


@dataclass(frozen=True)
class Concept:
    """One phrase and its figures.

    ``threshold`` is the firing line for underage/lewd concepts and the *trigger* for control
    concepts. ``adjust`` is only set on controls: (target text, delta) pairs added to the targets'
    scores when the control's raw similarity is over its trigger. ``bias`` is always added (the
    reference's "NSFW model" lewd additions).
    """

    text: str
    group: str
    threshold: float
    critical: float | None = None
    bias: float = 0.0
    adjust: tuple[tuple[str, float], ...] = ()
    pair: str | None = None


@dataclass(frozen=True)
class ConceptSet:
    """A validated concept set; ``digest`` identifies its content, not its formatting."""

    name: str
    calibrated_for: str
    concepts: tuple[Concept, ...]
    underage_min: int = 3
    critical_weight: int = 3
    lewd_min: int = 1
    digest: str = ""
    path: str | None = None
    _by_text: dict[str, Concept] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def __post_init__(self) -> None:
        # Frozen dataclass: fill the lookup table through object.__setattr__ once.
        object.__setattr__(self, "_by_text", {c.text: c for c in self.concepts})

    @property
    def texts(self) -> list[str]:
        """Concept texts in file order (the column order of similarity matrices)."""
        return [c.text for c in self.concepts]

    def get(self, text: str) -> Concept:
        return self._by_text[text]

    def group(self, name: str) -> list[Concept]:
        return [c for c in self.concepts if c.group == name]


# --- loading -----------------------------------------------------------------------------------

def load_concepts(path: str | None = None) -> ConceptSet:
    """Load and validate a concept-set TOML file; ``None`` loads the set shipped with fsq."""
    if path is None:
        ref = resources.files("fsq.classify").joinpath(DEFAULT_RESOURCE)
        label = f"(built-in) {DEFAULT_RESOURCE}"
        try:
            raw = ref.read_bytes()
        except OSError as e:  # pragma: no cover - broken installation
            raise ConfigError(f"{label}: cannot read the shipped concept set ({e})") from None
        return parse_concepts(raw, label, path=None)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: concept file not found (set --concepts / FSQ_CONCEPTS to an "
                          f"existing TOML file, or leave it empty for the built-in set)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read concept file ({e.strerror or e})") from None
    return parse_concepts(raw, str(path), path=str(path))


def parse_concepts(raw: bytes, label: str, path: str | None = None) -> ConceptSet:
    """Parse TOML bytes; ``label`` names the source in error messages."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label}: invalid TOML ({e})") from None

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{label}: {msg}")

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")

    name = data.get("name", "")
    if not isinstance(name, str):
        raise fail("'name' must be a string")
    calibrated_for = data.get("calibrated_for")
    if not isinstance(calibrated_for, str) or not calibrated_for.strip():
        raise fail("'calibrated_for' is required: the model the thresholds were calibrated for, "
                   "e.g. \"ViT-L-14/openai\"")

    rule = data.get("rule", {})
    if not isinstance(rule, dict):
        raise fail("'rule' must be a table ([rule])")
    unknown = sorted(set(rule) - _RULE_KEYS)
    if unknown:
        raise fail(f"rule: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_RULE_KEYS))})")
    rule_values: dict[str, int] = {}
    for key, default, minimum in (("underage_min", 3, 1), ("critical_weight", 3, 1),
                                  ("lewd_min", 1, 0)):
        v = rule.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise fail(f"rule.{key} must be a whole number >= {minimum}")
        rule_values[key] = v

    items = data.get("concept")
    if not isinstance(items, list) or not items:
        raise fail("no concepts: add at least one [[concept]] table")

    concepts: list[Concept] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items, 1):
        concepts.append(_parse_concept(item, i, seen, fail))

    concepts = _check_cross_references(concepts, fail)
    if not any(c.group == "underage" for c in concepts):
        raise fail("no concept has group = \"underage\"; the rule needs at least one")

    cs_name = name or (path.rsplit("/", 1)[-1].rsplit(".", 1)[0] if path else "unnamed")
    digest = _digest(cs_name, calibrated_for, concepts, rule_values)
    return ConceptSet(name=cs_name, calibrated_for=calibrated_for.strip(),
                      concepts=tuple(concepts), digest=digest, path=path, **rule_values)


def _number(v: Any) -> float | None:
    # TOML ints are accepted for figures (threshold = 1); bools are ints in Python, reject them.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _parse_concept(item: Any, index: int, seen: dict[str, int], fail: Any) -> Concept:
    if not isinstance(item, dict):
        raise fail(f"concept #{index}: must be a table ([[concept]])")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise fail(f"concept #{index}: 'text' is required (the word or phrase)")
    if text != text.strip():
        raise fail(f"concept {text!r}: 'text' has leading/trailing spaces")
    where = f"concept {text!r}"
    unknown = sorted(set(item) - _CONCEPT_KEYS)
    if unknown:
        raise fail(f"{where}: unknown key {unknown[0]!r} "
                   f"(allowed: {', '.join(sorted(_CONCEPT_KEYS))})")
    if text in seen:
        raise fail(f"{where}: duplicate 'text' (also concept #{seen[text]})")
    seen[text] = index

    group = item.get("group")
    if group not in GROUPS:
        raise fail(f"{where}: 'group' must be one of {', '.join(GROUPS)} (got {group!r})")

    if "threshold" not in item:
        what = "trigger" if group == "control" else "firing line"
        raise fail(f"{where}: missing 'threshold' (the {what})")
    threshold = _number(item["threshold"])
    if threshold is None:
        raise fail(f"{where}: 'threshold' must be a number")

    critical: float | None = None
    if "critical" in item:
        if group != "underage":
            raise fail(f"{where}: 'critical' is only for underage concepts")
        critical = _number(item["critical"])
        if critical is None:
            raise fail(f"{where}: 'critical' must be a number")
        if critical < threshold:
            raise fail(f"{where}: 'critical' ({critical}) is below 'threshold' ({threshold})")

    bias = 0.0
    if "bias" in item:
        if group == "control":
            raise fail(f"{where}: 'bias' is not allowed on control concepts "
                       f"(a control acts through its raw score)")
        b = _number(item["bias"])
        if b is None:
            raise fail(f"{where}: 'bias' must be a number")
        bias = b

    adjust: tuple[tuple[str, float], ...] = ()
    if "adjust" in item:
        if group != "control":
            raise fail(f"{where}: 'adjust' is only for control concepts")
        table = item["adjust"]
        if not isinstance(table, dict) or not table:
            raise fail(f"{where}: 'adjust' must be a non-empty table of target = delta")
        pairs = []
        for target, delta in table.items():
            d = _number(delta)
            if d is None:
                raise fail(f"{where}: adjust.{target!r} must be a number")
            pairs.append((target, d))
        adjust = tuple(pairs)
    elif group == "control":
        raise fail(f"{where}: control concept without 'adjust' has no effect")

    pair = item.get("pair")
    if pair is not None:
        if not isinstance(pair, str) or not pair:
            raise fail(f"{where}: 'pair' must be the text of another concept")
        if group == "control":
            raise fail(f"{where}: 'pair' is not allowed on control concepts")
        if pair == text:
            raise fail(f"{where}: 'pair' names the concept itself")

    return Concept(text=text, group=group, threshold=threshold, critical=critical, bias=bias,
                   adjust=adjust, pair=pair)


def _check_cross_references(concepts: list[Concept], fail: Any) -> list[Concept]:
    by_text = {c.text: c for c in concepts}
    for c in concepts:
        for target, _ in c.adjust:
            t = by_text.get(target)
            if t is None:
                raise fail(f"concept {c.text!r}: adjust target {target!r} is not a concept "
                           f"in this file")
            if t.group == "control":
                raise fail(f"concept {c.text!r}: adjust target {target!r} is a control concept")
    # Pairs are symmetric: declaring it on one side is enough; contradictions are errors.
    partner: dict[str, str] = {}
    for c in concepts:
        if c.pair is None:
            continue
        p = by_text.get(c.pair)
        if p is None:
            raise fail(f"concept {c.text!r}: pair {c.pair!r} is not a concept in this file")
        if p.group != c.group:
            raise fail(f"concept {c.text!r}: pair {c.pair!r} is in group {p.group!r}, "
                       f"not {c.group!r}")
        for a, b in ((c.text, p.text), (p.text, c.text)):
            if partner.get(a, b) != b:
                raise fail(f"concept {a!r}: pair conflict ({partner[a]!r} and {b!r})")
            partner[a] = b
    return [Concept(text=c.text, group=c.group, threshold=c.threshold, critical=c.critical,
                    bias=c.bias, adjust=c.adjust, pair=partner.get(c.text))
            for c in concepts]


def _digest(name: str, calibrated_for: str, concepts: list[Concept],
            rule: dict[str, int]) -> str:
    """sha256 of a canonical JSON form: key order, concept order, comments, whitespace and
    number spelling (0.20 vs 0.2, 1 vs 1.0) in the TOML do not change it; any figure does."""
    doc = {
        "name": name,
        "calibrated_for": calibrated_for.strip(),
        "rule": dict(sorted(rule.items())),
        "concepts": sorted(
            ({"text": c.text, "group": c.group, "threshold": c.threshold,
              "critical": c.critical, "bias": c.bias,
              "adjust": sorted([t, d] for t, d in c.adjust), "pair": c.pair}
             for c in concepts),
            key=lambda d: d["text"]),
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
