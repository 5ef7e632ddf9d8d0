"""Concept-set TOML: the shipped default, the digest, and validation errors."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from fsq.classify.concepts import load_concepts
from fsq.errors import ConfigError
from tests.fixtures.model import concepts_file


def test_default_set_matches_the_reference_figures():
    cs = load_concepts(None)
    assert cs.calibrated_for == "ViT-L-14/openai"
    assert cs.path is None and len(cs.digest) == 64
    assert (cs.underage_min, cs.critical_weight, cs.lewd_min) == (3, 3, 1)
    under = {c.text: (c.threshold, c.critical) for c in cs.group("underage")}
    assert under == {
        "lolicon": (0.2, 0.25),
        "child": (0.188, 0.225), "children": (0.188, 0.225),
        "teen": (0.21, 0.26), "teens": (0.21, 0.26),
        "infant": (0.19, 0.22), "infants": (0.19, 0.22),
        "toddler": (0.19, 0.22), "toddlers": (0.19, 0.22),
        "tween": (0.188, 0.25), "tweens": (0.188, 0.25),
    }
    lewd = {c.text: (c.threshold, c.bias) for c in cs.group("lewd")}
    assert lewd == {"porn": (0.2, 0.015), "naked": (0.195, 0.02), "hentai": (0.25, 0.0),
                    "orgy": (0.21, 0.01), "nudity": (0.195, 0.02),
                    "lesbian scene": (0.22, 0.0), "gay scene": (0.22, 0.0)}
    controls = {c.text: (c.threshold, dict(c.adjust)) for c in cs.group("control")}
    assert controls["pregnant"][0] == 0.21
    # exactly the published corrections: singular targets only
    assert controls["pregnant"][1] == {"infant": -0.04, "toddler": -0.03, "child": -0.02}
    assert controls["anime"] == (0.23, {"teen": -0.03})
    assert controls["east asian"] == (0.24, {"teen": -0.025, "child": -0.025, "tween": -0.025})
    pairs = {c.text: c.pair for c in cs.concepts if c.pair}
    assert pairs["child"] == "children" and pairs["children"] == "child"
    assert pairs["infants"] == "infant" and "lolicon" not in pairs


def _dump(data: dict, reverse: bool) -> str:
    """A differently formatted TOML of the same content (order, spacing, number spelling)."""
    def num(v):
        return f"{v:.4f}" if isinstance(v, float) else repr(v)

    out = ["# reformatted", "", f"calibrated_for   =   \"{data['calibrated_for']}\"",
           f"name = \"{data['name']}\"", ""]
    out += ["[rule]"] + [f"{k} = {v}" for k, v in sorted(data["rule"].items(), reverse=True)]
    items = list(reversed(data["concept"])) if reverse else data["concept"]
    for c in items:
        out.append("\n[[concept]]   # a comment")
        for k in sorted(c, reverse=True):
            v = c[k]
            if isinstance(v, dict):
                body = ", ".join(f'"{t}" = {num(d)}' for t, d in reversed(list(v.items())))
                out.append(f"{k} = {{ {body} }}")
            elif isinstance(v, str):
                out.append(f'{k} = "{v}"')
            else:
                out.append(f"{k} = {num(v)}")
    return "\n".join(out) + "\n"


def test_digest_ignores_formatting_but_not_figures(tmp_path):
    text = resources.files("fsq.classify").joinpath("default_concepts.toml").read_text()
    data = tomllib.loads(text)
    reformatted = tmp_path / "reformatted.toml"
    reformatted.write_text(_dump(data, reverse=True))
    cs = load_concepts(str(reformatted))
    assert cs.digest == load_concepts(None).digest
    assert cs.path == str(reformatted)

    data["concept"][1]["threshold"] = 0.189
    changed = tmp_path / "changed.toml"
    changed.write_text(_dump(data, reverse=False))
    assert load_concepts(str(changed)).digest != cs.digest


def test_fixture_concept_files_load(tmp_path):
    cs = load_concepts(str(concepts_file(tmp_path, 0.25)))
    assert {c.threshold for c in cs.concepts if c.group != "control"} == {0.25}


HEAD = 'name = "t"\ncalibrated_for = "ViT-L-14/openai"\n'
CHILD = '[[concept]]\ntext = "child"\ngroup = "underage"\nthreshold = 0.188\n'
PORN = '[[concept]]\ntext = "porn"\ngroup = "lewd"\nthreshold = 0.2\n'


@pytest.mark.parametrize("body, needle", [
    (HEAD + CHILD + '[[concept]]\ntext = "x"\ngroup = "adult"\nthreshold = 0.1\n',
     "'group' must be one of"),
    (HEAD + '[[concept]]\ntext = "child"\ngroup = "underage"\n', "missing 'threshold'"),
    (HEAD + CHILD + '[[concept]]\ntext = "anime"\ngroup = "control"\nthreshold = 0.23\n'
     'adjust = { nobody = -0.03 }\n', "adjust target 'nobody'"),
    (HEAD + CHILD + CHILD, "duplicate 'text'"),
    (HEAD + '[[concept]]\ntext = "child"\ngroup = "underage"\nthreshold = 0.2\n'
     'critical = 0.1\n', "'critical' (0.1) is below 'threshold'"),
    (HEAD + CHILD + PORN.replace("threshold = 0.2\n", "threshold = 0.2\nadjust = { child = 1 }\n"),
     "'adjust' is only for control"),
    (HEAD + CHILD.replace("threshold", "treshold"), "unknown key 'treshold'"),
    (HEAD + "severity = 1\n" + CHILD, "unknown key 'severity'"),
    (HEAD + "[rule]\nunderage_min = 0\n" + CHILD, "rule.underage_min"),
    (HEAD + "[rule]\nlewd_minimum = 1\n" + CHILD, "rule: unknown key 'lewd_minimum'"),
    ('name = "t"\n' + CHILD, "'calibrated_for' is required"),
    (HEAD + CHILD + "threshold = [", "invalid TOML"),
    (HEAD + CHILD.replace("0.188", '"high"'), "'threshold' must be a number"),
    (HEAD + CHILD.replace("0.188", "true"), "'threshold' must be a number"),
    (HEAD + CHILD.replace("0.188", "nan"), "'threshold' must be a number"),
    (HEAD + CHILD + 'pair = "kids"\n', "pair 'kids' is not a concept"),
    (HEAD + CHILD + 'pair = "porn"\n' + PORN, "is in group 'lewd'"),
    (HEAD + CHILD + 'pair = "children"\n' + CHILD.replace('"child"', '"children"')
     + 'pair = "kid"\n' + CHILD.replace('"child"', '"kid"'), "pair conflict"),
    (HEAD + CHILD + '[[concept]]\ntext = "anime"\ngroup = "control"\nthreshold = 0.23\n',
     "control concept without 'adjust'"),
    (HEAD + CHILD + PORN + "critical = 0.3\n", "'critical' is only for underage"),
    (HEAD + CHILD + '[[concept]]\ntext = "anime"\ngroup = "control"\nthreshold = 0.23\n'
     'bias = 0.1\nadjust = { child = -0.03 }\n', "'bias' is not allowed on control"),
    (HEAD + CHILD + '[[concept]]\ntext = "anime"\ngroup = "control"\nthreshold = 0.23\n'
     'adjust = { child = "lots" }\n', "adjust.'child' must be a number"),
    (HEAD, "no concepts"),
    (HEAD + PORN, "no concept has group = \"underage\""),
    (HEAD + '[[concept]]\ngroup = "underage"\nthreshold = 0.1\n', "'text' is required"),
])
def test_malformed_files_name_the_field(tmp_path, body, needle):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as exc:
        load_concepts(str(path))
    msg = str(exc.value)
    assert needle in msg
    assert msg.startswith(str(path) + ": ")
    assert "\n" not in msg
    assert exc.value.exit_code == 2


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="concept file not found"):
        load_concepts(str(tmp_path / "nope.toml"))


def test_pair_declared_on_one_side_is_symmetric(tmp_path):
    path = tmp_path / "pairs.toml"
    path.write_text(HEAD + CHILD + 'pair = "children"\n'
                    + CHILD.replace('"child"', '"children"'))
    cs = load_concepts(str(path))
    assert cs.get("children").pair == "child"
