"""Near-identical frames are classified once (issue 20, FSQ_FRAME_SKIP): the measure and the
plan on made-up model inputs, then the real scanner with the tiny model on generated
100-frame animations (fsq.bench_frames), with the skip at its default and with 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsq.bench_frames import animation, base_picture
from fsq.classify import frameskip
from fsq.classify.rule import Decision
from fsq.config import load_settings
from fsq.errors import ConfigError
from fsq.media.budget import sample_indices

SCALE = frameskip.levels_scale(None)
BOUND = frameskip.DEFAULT_BOUND


def model_input(levels: np.ndarray) -> np.ndarray:
    """A 3 x H x W "preprocessed" frame whose pixels are ``levels`` (8-bit units)."""
    return (levels / SCALE).astype(np.float32)


def picture(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (3, size, size)).astype(np.float32)


def noisy(levels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return levels + rng.integers(-1, 2, levels.shape) * (rng.random(levels.shape) < 0.25)


# --- the measure and the plan (no model) -----------------------------------------------------

def test_measure_is_in_levels_and_sees_a_single_pixel():
    a = picture()
    assert frameskip.difference(model_input(a), model_input(a)) == 0.0
    assert frameskip.difference(model_input(a), model_input(a + 1.5)) == pytest.approx(1.5,
                                                                                       abs=1e-3)
    # One pixel of the model input turned from black to white: 255 levels over one 8x8 block
    # is ~4 levels, twice the default bound: classified.
    black = np.zeros((3, 64, 64), np.float32)
    white_dot = black.copy()
    white_dot[:, 37, 21] = 255
    assert frameskip.difference(model_input(black), model_input(white_dot)) == \
        pytest.approx(255 / 64, abs=1e-3)
    p = frameskip.plan([model_input(black), model_input(white_dot)], BOUND, SCALE)
    assert p is not None and p.kept == [0, 1] and not p.same_as


def test_noise_is_skipped_but_a_small_patch_is_not():
    base = picture(1)
    frames = [noisy(base, s) for s in range(8)]
    patched = frames[5].copy()
    patched[:, 13:19, 30:36] += 40  # 6x6 pixels, across four blocks, +40 levels
    frames[5] = patched
    p = frameskip.plan([model_input(f) for f in frames], BOUND, SCALE)
    assert p is not None
    assert p.kept == [0, 5]
    assert p.same_as == {1: 0, 2: 0, 3: 0, 4: 0, 6: 0, 7: 0}  # nearest kept, not previous
    assert all(d < BOUND for d in p.difference.values())
    assert p.summary() == "8 sampled, 2 classified, 6 near-identical"


def test_slow_drift_is_compared_with_the_classified_frames_not_the_previous_one():
    base = picture(2)
    frames = [model_input(base + 0.5 * i) for i in range(32)]  # neighbours differ by 0.5
    p = frameskip.plan(frames, BOUND, SCALE)
    assert p is not None
    assert p.kept == list(range(0, 32, 4))  # 2.0 levels is not below the bound
    for i, k in p.same_as.items():
        assert frameskip.difference(frames[i], frames[k]) < BOUND


def test_innocent_first_frame_does_not_cover_different_frames():
    # The attack: frame 0 innocent, the rest another picture with tiny changes between them.
    innocent, other = picture(3), picture(4)
    frames = [model_input(innocent)] + [model_input(noisy(other, s)) for s in range(31)]
    p = frameskip.plan(frames, BOUND, SCALE)
    assert p is not None and p.kept == [0, 1]
    assert set(p.same_as.values()) == {1}


def test_frames_with_equal_block_means_cost_bounded_work(monkeypatch):
    """A hostile file whose frames all pass the cheap lower bound (same block means, different
    fine texture): at most MAX_CANDIDATES exact measures per frame, and all are classified."""
    rng = np.random.default_rng(6)
    base = picture(6) * 0.5 + 60
    checker = np.indices((8, 8)).sum(axis=0) % 2 * 2 - 1.0   # zero-sum in every block
    frames = []
    for _ in range(48):
        phase = rng.choice([-1.0, 1.0], (8, 8))                 # per block, per frame
        tex = np.kron(phase, checker) * 20
        frames.append(model_input(base + tex[None]))
    calls = []
    real = frameskip._exact
    monkeypatch.setattr(frameskip, "_exact", lambda *a: calls.append(1) or real(*a))
    p = frameskip.plan(frames, BOUND, SCALE)
    assert p is not None and p.kept == list(range(48)) and not p.same_as
    assert 0 < len(calls) <= frameskip.MAX_CANDIDATES * 48


def test_off_or_not_applicable_means_every_frame():
    a = model_input(picture(5))
    assert frameskip.plan([a, a], 0) is None
    assert frameskip.plan([a], BOUND) is None
    assert frameskip.plan([a, model_input(picture(5, size=32))], BOUND) is None
    assert frameskip.plan([(1, 2, 3), (1, 2, 3)], BOUND) is None  # not model inputs

    class D:
        frames = ["x", "y"]
        frame_plan = "stale"

    d = D()
    assert frameskip.preprocess_frames(lambda f: a, d, 0.0) == [a, a]
    assert d.frame_plan is None
    assert len(frameskip.preprocess_frames(lambda f: a, d, BOUND)) == 1
    assert d.frame_plan.same_as == {1: 0}


def _decision(flagged: bool, u: float) -> Decision:
    return Decision(flagged=flagged, underage_count=int(flagged), lewd_fired=[],
                    fired=[{"text": "child"}] if flagged else [], adjustments=[],
                    scores={}, adjusted={}, severity="balanced", underage_max=u)


def test_expand_gives_skipped_frames_the_decision_they_matched():
    p = frameskip.FramePlan(n=4, bound=BOUND, kept=[0, 2], same_as={1: 0, 3: 2},
                            difference={1: 0.5, 3: 1.25})
    d = _decision(True, 0.3)
    d.per_frame = [{"index": 0, "flagged": False, "fired": [], "underage_max": 0.1},
                   {"index": 1, "flagged": True, "fired": ["child"], "underage_max": 0.3}]
    d.embeddings = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    assert p.expand(d, 1) == 2
    assert [f["index"] for f in d.per_frame] == [0, 1, 2, 3]
    assert [f["flagged"] for f in d.per_frame] == [False, False, True, True]
    assert d.per_frame[3]["same_as"] == 2 and d.per_frame[3]["difference"] == 1.25
    assert "same_as" not in d.per_frame[2]
    np.testing.assert_array_equal(d.embeddings, [[1, 0], [1, 0], [0, 1], [0, 1]])
    one = frameskip.FramePlan(n=3, bound=BOUND, kept=[0], same_as={1: 0, 2: 0},
                              difference={1: 0.1, 2: 0.2})
    d1 = _decision(False, 0.2)  # one kept frame: the classifier listed no frames
    assert one.expand(d1, 0) == 0
    assert [f["same_as"] for f in d1.per_frame[1:]] == [0, 0]


@pytest.mark.parametrize("value, message", [("-1", "at least 0"), ("9", "at most 8"),
                                            ("abc", "expected a number")])
def test_setting_validates(value, message):
    with pytest.raises(ConfigError, match=f"FSQ_FRAME_SKIP.*{message}"):
        load_settings({}, environ={"FSQ_FRAME_SKIP": value})
    assert load_settings({}, environ={"FSQ_FRAME_SKIP": "0"}).frame_skip == 0.0
    assert load_settings({}, environ={}).frame_skip == BOUND


def test_negative_setting_is_a_configuration_error_on_the_cli(fsq, tmp_path, tiny_model):
    r = fsq(["config", "show"], env={"FSQ_FRAME_SKIP": "-0.5"})
    assert r.exit_code == 2
    assert "FSQ_FRAME_SKIP" in r.stderr and "Traceback" not in r.stderr


# --- the scanner, tiny model ------------------------------------------------------------------

SAMPLED = sample_indices(100, 32)
SIZE = (96, 72)


class Counting:
    """The real classifier; counts the frames it is given."""

    def __init__(self, clf) -> None:
        self.clf = clf
        self.frames = 0

    def classify_items(self, items, batch_size=None):
        self.frames += sum(len(i) for i in items)
        return self.clf.classify_items(items, batch_size)

    def __getattr__(self, name):
        return getattr(self.clf, name)


def _classifier(tiny_model, concepts, cache):
    from fsq.classify.clip import ClipClassifier
    cfg, ckpt = tiny_model
    return ClipClassifier(model=str(cfg), pretrained=str(ckpt), concepts=concepts,
                          precision="fp32", device="cpu", cache_dir=str(cache))


def _scan(store: Path, clf, db: str, frame_skip: float) -> dict[str, dict]:
    from fsq.ledger.db import connect, migrate
    from fsq.pipeline import ScanConfig, Scanner
    from fsq.sources.base import open_source
    conn = connect(db)
    migrate(conn)
    source = open_source(f"file://{store}", load_settings({}, environ={}))
    s = Scanner(conn, source, ScanConfig(dry_run=True, frame_skip=frame_skip),
                classifier_factory=lambda: clf, db_path=db).run_pass()
    assert s.status == "finished" and not s.errors and not s.unreadable, s.to_json()
    rows = {}
    for r in conn.execute("SELECT o.key, o.status, v.outcome, v.method, v.reason, v.details, "
                          "e.n_frames FROM objects o JOIN verdicts v ON v.id = o.verdict_id "
                          "LEFT JOIN embeddings e ON e.sha256 = o.sha256"):
        rows[r["key"]] = {"status": r["status"], "outcome": r["outcome"],
                          "method": r["method"], "reason": r["reason"],
                          "details": json.loads(r["details"]), "embedded": r["n_frames"]}
    conn.close()
    return rows


def test_near_static_animations_classify_few_frames_with_the_same_verdicts(tmp_path,
                                                                          tiny_model):
    from fsq.classify.concepts import load_concepts
    store = tmp_path / "store"
    store.mkdir()
    (store / "still.png").write_bytes(animation("still", seed=1, size=SIZE))
    (store / "cut.png").write_bytes(animation("cut", seed=2, size=SIZE))
    clf = _classifier(tiny_model, load_concepts(None), tmp_path / "cache")
    skip, off = Counting(clf), Counting(clf)
    on_rows = _scan(store, skip, "skip.db", BOUND)
    off_rows = _scan(store, off, "off.db", 0.0)
    assert off.frames == 2 * 32          # bound 0: every sampled frame, as before
    assert skip.frames == 1 + 2          # one frame per picture
    for key in ("still.png", "cut.png"):
        a, b = on_rows[key], off_rows[key]
        assert (a["outcome"], a["method"], a["reason"]) == (b["outcome"], b["method"],
                                                            b["reason"])
        assert a["details"]["frames_sampled"] == b["details"]["frames_sampled"] == SAMPLED
        assert len(a["details"]["frames"]) == 32 and a["embedded"] == b["embedded"] == 32
        assert "frame_skip" not in b["details"]
    still = on_rows["still.png"]["details"]
    assert still["frame_skip"]["summary"] == "32 sampled, 1 classified, 31 near-identical"
    assert all(f["same_as"] == 0 and f["difference"] < BOUND for f in still["frames"][1:])
    assert on_rows["cut.png"]["details"]["frame_skip"]["classified"] == 2


def _key(row, texts):
    under = max(row[texts.index(t)] for t in ("child", "children", "teen", "teens"))
    lewd = max(row[texts.index(t)] for t in ("porn", "naked"))
    return min(under, lewd)


def test_a_frame_that_differs_in_a_small_patch_is_classified_and_flags(tmp_path, tiny_model):
    """A 14x14-pixel patch (of 96x72) on one sampled frame only, with thresholds put between
    the unpatched frames and the patched one: the file flags at that frame, with the skip on
    (the patch is not "near-identical") exactly as with bound 0."""
    import torch

    from fsq.classify.concepts import load_concepts
    from tests.fixtures.model import concepts_file
    clf = _classifier(tiny_model, load_concepts(None), tmp_path / "cache")
    at = SAMPLED[17]
    base = base_picture(7, SIZE)
    plain = clf.similarities(torch.stack([clf.preprocess(Image.fromarray(
        np.clip(base + d, 0, 255).astype(np.uint8))) for d in (-1, 0, 1)]))
    texts = clf.concepts.texts
    top = max(_key(r, texts) for r in plain)
    best = None
    for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0),
                   (255, 255, 0), (255, 0, 255), (0, 255, 255)]:
        for xy in ((10, 10), (60, 40), (40, 25)):
            arr = base.copy()
            arr[xy[1]:xy[1] + 14, xy[0]:xy[0] + 14] = colour
            k = _key(clf.similarities(clf.preprocess(Image.fromarray(
                arr.astype(np.uint8))).unsqueeze(0))[0], texts)
            if best is None or k > best[0]:
                best = (k, colour, xy)
    assert best is not None and best[0] - top > 0.002, (best, top)
    t = round(float(best[0] + top) / 2, 6)
    store = tmp_path / "store"
    store.mkdir()
    (store / "patched.png").write_bytes(animation(
        "still", seed=7, size=SIZE, patch=((*best[2], 14, 14), best[1], {at})))
    flagging = _classifier(tiny_model, load_concepts(str(concepts_file(tmp_path, t))),
                           tmp_path / "cache")
    on = _scan(store, flagging, "skip.db", BOUND)["patched.png"]
    off = _scan(store, flagging, "off.db", 0.0)["patched.png"]
    for r in (on, off):
        assert r["outcome"] == "flagged" and r["method"] == "clip", r["reason"]
        assert r["details"]["frame"] == at
        assert [f["index"] for f in r["details"]["frames"] if f["flagged"]] == [17]
    assert on["reason"] == off["reason"]
    assert on["details"]["frame_skip"]["classified"] == 2
    assert "same_as" not in on["details"]["frames"][17]
