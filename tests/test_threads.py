"""The torch thread policy (fsq.classify.threads): the pure choice, the setting's parsing, and
the classifier getting what the policy chose."""

from __future__ import annotations

import pytest

from fsq.classify import threads as tp
from fsq.config import load_settings
from fsq.errors import ConfigError


@pytest.mark.parametrize("cores,load,own,want", [
    (2, 0.0, 0.0, 2),     # quiet: every core, like torch's default
    (2, 0.4, 0.0, 2),     # a little background noise is still quiet
    (2, 1.0, 0.0, 1),     # one busy neighbour on 2 cores: the case, 1 thread
    (2, 1.3, 1.0, 2),     # the load is mostly our own: quiet
    (2, 2.2, 1.0, 1),     # our own 1.0 plus a neighbour
    (2, 6.0, 0.0, 1),     # overloaded: never below 1
    (8, 1.0, 0.0, 7),     # cores minus the busy ones
    (8, 1.5, 0.0, 7),     # half rounds down
    (8, 1.6, 0.0, 6),
    (8, 3.2, 0.0, 5),
    (8, 20.0, 0.0, 1),
    (1, 5.0, 0.0, 1),
    (0, 0.0, 0.0, 1),     # a broken core count still gives 1
    (4, 2.0, 5.0, 4),     # own share over the load (estimates): quiet, not negative
])
def test_choice(cores, load, own, want):
    n, why = tp.choose(cores, load, own)
    assert n == want and why.startswith("auto: ")


def test_choice_says_why():
    assert "quiet" in tp.choose(4, 0.1)[1]
    assert "shared" in tp.choose(4, 2.0)[1] and "2.00" in tp.choose(4, 2.0)[1]


def test_own_load_estimate():
    assert tp.own_load(0.0, 100.0) == 0.0
    assert tp.own_load(10.0, 0.0) == 0.0
    # one thread busy for a long time adds about 1; for 6 s about 0.1
    assert tp.own_load(600.0, 600.0) == pytest.approx(1.0, abs=1e-3)
    assert tp.own_load(6.0, 6.0) == pytest.approx(0.095, abs=0.01)


def test_resolve_integers_keep_their_meaning():
    assert tp.resolve(0)[0] == 0 and "default" in tp.resolve(0)[1]
    assert tp.resolve(3) == (3, "3 (FSQ_THREADS)")
    n, why = tp.resolve("auto")
    assert 1 <= n <= tp.usable_cores() and why.startswith("auto")


@pytest.mark.parametrize("raw,want", [("auto", "auto"), ("AUTO ", "auto"), ("0", 0),
                                      ("4", 4)])
def test_setting_parses(tmp_path, raw, want):
    s = load_settings({}, environ={"FSQ_THREADS": raw}, cwd=tmp_path)
    assert s.threads == want
    assert load_settings({"threads": raw}, environ={}, cwd=tmp_path).threads == want


@pytest.mark.parametrize("raw", ["-1", "two", "1.5", "", "auto2"])
def test_bad_values_are_a_clear_config_error(tmp_path, raw):
    with pytest.raises(ConfigError) as ei:
        load_settings({}, environ={"FSQ_THREADS": raw}, cwd=tmp_path)
    msg = str(ei.value)
    assert msg.startswith("FSQ_THREADS=") and "auto" in msg and "\n" not in msg


def test_cli_rejects_a_bad_value_with_exit_2(fsq, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = fsq(["scan", "--all", "--dry-run", "--threads", "many"])
    assert r.exit_code == 2 and "FSQ_THREADS='many'" in r.output


def test_classifier_runs_on_what_auto_chose(tiny_model, tmp_path, monkeypatch):
    import torch

    from fsq.runtime import build_classifier
    before = torch.get_num_threads()
    monkeypatch.setattr(tp, "usable_cores", lambda: 2)
    monkeypatch.setattr(tp.os, "getloadavg", lambda: (1.0 + tp.own_load(
        sum(tp.os.times()[:2]), tp._process_age()), 0.0, 0.0))
    config, ckpt = tiny_model
    s = load_settings({"model": str(config), "pretrained": str(ckpt), "threads": "auto",
                       "precision": "fp32", "device": "cpu",
                       "cache_dir": str(tmp_path / "cache")}, environ={}, cwd=tmp_path)
    try:
        clf = build_classifier(s)
        assert clf.describe()["threads"] == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
