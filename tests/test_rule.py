"""The decision rule, table-driven with synthetic similarities (no model, no files)."""

from __future__ import annotations

import json
import random

import pytest

from fsq.classify.concepts import load_concepts, parse_concepts
from fsq.classify.rule import RULE_VERSION, SEVERITY_SHIFT, decide
from tests.fixtures.model import concepts_toml

DEFAULT = load_concepts(None)


def sims(cs=DEFAULT, **over: float) -> dict[str, float]:
    """Every concept at 0.0 except the overrides (underscores stand for spaces)."""
    s = {c.text: 0.0 for c in cs.concepts}
    for k, v in over.items():
        k = k.replace("_", " ")
        assert k in s, k
        s[k] = v
    return s


def fired(d) -> dict[str, str]:
    return {f["text"]: f["level"] for f in d.fired}


# --- thresholds and levels ---------------------------------------------------------------------

@pytest.mark.parametrize("score, level, count", [
    (0.187, None, 0),          # below threshold 0.188
    (0.188, None, 0),          # at the threshold: "over" is strict
    (0.189, "threshold", 1),
    (0.225, "threshold", 1),   # at critical 0.225: still only the threshold level
    (0.226, "critical", 3),    # over critical counts critical_weight
])
def test_threshold_and_critical_levels(score, level, count):
    d = decide(sims(child=score), DEFAULT)
    assert fired(d).get("child") == level
    assert d.underage_count == count


def test_float_noise_at_the_line_does_not_fire():
    # nudity: threshold 0.195, bias 0.02. 0.175 + 0.02 is 0.19500000000000003 in floats.
    d = decide(sims(nudity=0.175), DEFAULT)
    assert "nudity" not in d.lewd_fired


@pytest.mark.parametrize("over, flagged, count", [
    # two underage concepts (no pairs involved) + lewd: not enough
    (dict(child=0.19, teen=0.215, porn=0.21), False, 2),
    # three: flagged
    (dict(child=0.19, teen=0.215, tween=0.19, porn=0.21), True, 3),
    # one critical counts 3 on its own
    (dict(lolicon=0.26, porn=0.21), True, 3),
    # underage met but no lewd concept over its threshold
    (dict(lolicon=0.26, child=0.23), False, 6),
    # lewd alone never flags
    (dict(porn=0.5, naked=0.5, hentai=0.5), False, 0),
])
def test_rule_counts(over, flagged, count):
    d = decide(sims(**over), DEFAULT)
    assert d.flagged is flagged
    assert d.underage_count == count


def test_lewd_bias_pushes_over_the_threshold():
    base = dict(child=0.19, teen=0.215, tween=0.19)
    # nudity threshold 0.195 with bias +0.02: raw 0.18 -> 0.20 fires; hentai has no bias.
    d = decide(sims(nudity=0.18, **base), DEFAULT)
    assert d.lewd_fired == ["nudity"] and d.flagged
    f = next(f for f in d.fired if f["text"] == "nudity")
    assert f["raw"] == pytest.approx(0.18) and f["adjusted"] == pytest.approx(0.20)
    assert f["by_adjustment"] is True
    assert not decide(sims(nudity=0.17, **base), DEFAULT).flagged       # 0.19 < 0.195
    assert not decide(sims(hentai=0.24, **base), DEFAULT).flagged       # no bias on hentai
    # every NSFW-model addition from the reference is there
    assert {c.text: c.bias for c in DEFAULT.group("lewd") if c.bias} == {
        "nudity": 0.02, "naked": 0.02, "porn": 0.015, "orgy": 0.01}


# --- control concepts --------------------------------------------------------------------------

@pytest.mark.parametrize("control, trigger, deltas", [
    ("pregnant", 0.21, {"infant": -0.04, "toddler": -0.03, "child": -0.02}),
    ("anime", 0.23, {"teen": -0.03}),
    ("east asian", 0.24, {"teen": -0.025, "child": -0.025, "tween": -0.025}),
])
def test_control_adjustments(control, trigger, deltas):
    # Each target sits just over its threshold, so it fires unless the control lowers it.
    targets = {t: DEFAULT.get(t).threshold + 0.005 for t in deltas}
    for score, active in ((trigger - 0.01, False), (trigger, False), (trigger + 0.01, True)):
        s = sims(**{k.replace(" ", "_"): v for k, v in targets.items()})
        s[control] = score
        d = decide(s, DEFAULT)
        got = {a["target"]: a["delta"] for a in d.adjustments if a["target"] in deltas}
        if active:
            assert got == deltas
            for t, delta in deltas.items():
                assert d.adjusted[t] == pytest.approx(targets[t] + delta)
                assert t not in fired(d)
        else:
            assert got == {} and d.adjustments == []
            assert set(deltas) <= set(fired(d))


def test_default_control_corrections_touch_only_the_published_targets():
    s = sims(pregnant=0.3, child=0.2, children=0.2, infant=0.2, infants=0.2)
    d = decide(s, DEFAULT)
    assert d.adjusted["child"] == pytest.approx(0.18)
    assert d.adjusted["infant"] == pytest.approx(0.16)
    assert d.adjusted["children"] == pytest.approx(0.2)
    assert d.adjusted["infants"] == pytest.approx(0.2)


def test_control_trigger_uses_raw_score_and_ignores_severity():
    # strict shifts thresholds down by 0.01, but not the 0.21 trigger of "pregnant".
    d = decide(sims(pregnant=0.205, child=0.2), DEFAULT, severity="strict")
    assert d.adjustments == []


# --- singular/plural guard ---------------------------------------------------------------------

GUARD_SET = parse_concepts(b"""
calibrated_for = "test"
[[concept]]
text = "child"
group = "underage"
threshold = 0.188
critical = 0.225
pair = "children"
[[concept]]
text = "children"
group = "underage"
threshold = 0.188
critical = 0.225
[[concept]]
text = "teen"
group = "underage"
threshold = 0.21
[[concept]]
text = "porn"
group = "lewd"
threshold = 0.2
[[concept]]
text = "boost"
group = "control"
threshold = 0.5
adjust = { child = 0.03, children = 0.03 }
""", "guard-set")


@pytest.mark.parametrize("over, count, guarded", [
    # both over on raw scores: no guard, both count
    (dict(child=0.19, children=0.19), 2, False),
    # children only fires because of the boost: pair counts once
    (dict(child=0.19, children=0.16, boost=0.6), 1, True),
    # same scores without the trigger: only child fires
    (dict(child=0.19, children=0.16, boost=0.4), 1, False),
    # both pushed over by the boost: still once
    (dict(child=0.16, children=0.16, boost=0.6), 1, True),
    # child critical on raw (3), children pushed to threshold (1): the larger, 3
    (dict(child=0.23, children=0.16, boost=0.6), 3, True),
    # child pushed from threshold to critical by the boost, children over on raw: max(3, 1)
    (dict(child=0.2, children=0.19, boost=0.6), 3, True),
])
def test_singular_plural_guard(over, count, guarded):
    d = decide(sims(GUARD_SET, **over), GUARD_SET)
    assert d.underage_count == count
    assert bool(d.guarded) is guarded
    if guarded:
        g = d.guarded[0]
        assert set(g["pair"]) == {"child", "children"}


def test_guard_changes_the_verdict():
    base = dict(child=0.19, teen=0.22, porn=0.25, boost=0.6)
    # Without the guard: child 1 + children (boosted) 1 + teen 1 = 3 -> flagged.
    assert not decide(sims(GUARD_SET, children=0.16, **base), GUARD_SET).flagged
    # Both of the pair over on their own: 3 -> flagged.
    assert decide(sims(GUARD_SET, children=0.19, **base), GUARD_SET).flagged


# --- severity ----------------------------------------------------------------------------------

def test_severity_shift_values():
    assert SEVERITY_SHIFT == {"strict": -0.01, "balanced": 0.0, "lenient": 0.01}


@pytest.mark.parametrize("scores, expect", [
    # child 0.185 is below 0.188 but over strict's 0.178
    (dict(child=0.185, teen=0.215, tween=0.19, porn=0.21),
     {"strict": True, "balanced": False, "lenient": False}),
    # tween 0.195 is over 0.188 but below lenient's 0.198
    (dict(child=0.2, teen=0.23, tween=0.195, porn=0.25),
     {"strict": True, "balanced": True, "lenient": False}),
    # porn: 0.19 + bias 0.015 = 0.205 > 0.2, but not > lenient's 0.21
    (dict(child=0.2, teen=0.23, tween=0.2, porn=0.19),
     {"strict": True, "balanced": True, "lenient": False}),
])
def test_severity_flips_borderline_cases(scores, expect):
    for severity, flagged in expect.items():
        d = decide(sims(**scores), DEFAULT, severity=severity)
        assert d.flagged is flagged, severity
        assert d.severity == severity


def test_severity_shifts_critical_too():
    assert fired(decide(sims(child=0.22), DEFAULT, "strict"))["child"] == "critical"
    assert fired(decide(sims(child=0.22), DEFAULT))["child"] == "threshold"


# --- extremes, errors, output ------------------------------------------------------------------

def test_all_thresholds_minus_one_flags_anything():
    cs = parse_concepts(concepts_toml(-1.0).encode(), "low")
    rng = random.Random(1)
    for _ in range(50):
        d = decide({c.text: rng.uniform(-0.99, 1.0) for c in cs.concepts}, cs)
        assert d.flagged


def test_all_thresholds_above_one_flag_nothing():
    cs = parse_concepts(concepts_toml(1.5).encode(), "high")
    assert not decide({c.text: 1.0 for c in cs.concepts}, cs).flagged
    rng = random.Random(2)
    for _ in range(50):
        assert not decide({c.text: rng.uniform(-1, 1) for c in cs.concepts}, cs).flagged


def test_missing_similarity_is_a_programming_error():
    s = sims()
    del s["teens"]
    with pytest.raises(ValueError, match="teens"):
        decide(s, DEFAULT)


def test_unknown_severity():
    with pytest.raises(ValueError, match="severity"):
        decide(sims(), DEFAULT, severity="paranoid")


def test_to_json_is_plain_and_rounded():
    d = decide(sims(lolicon=0.2612345678, porn=0.21, pregnant=0.3), DEFAULT)
    j = d.to_json()
    assert json.loads(json.dumps(j)) == j
    assert j["flagged"] is True and j["rule_version"] == RULE_VERSION == "1"
    assert j["scores"]["lolicon"] == 0.26123
    assert j["fired"][0] == {"text": "lolicon", "group": "underage", "raw": 0.26123,
                             "adjusted": 0.26123, "threshold": 0.2, "critical": 0.25,
                             "level": "critical", "count": 3, "by_adjustment": False}
    assert {"control": "pregnant", "trigger": 0.21, "score": 0.3, "target": "infant",
            "delta": -0.04} in j["adjustments"]
    assert d.top(2) == [("pregnant", 0.3), ("lolicon", pytest.approx(0.2612345678))]
