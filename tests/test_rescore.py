"""`fsq rescore`: a changed concept set or severity re-decided from the stored embeddings, with
no file read or decoded, flags exactly what a full `--rescan` flags; flagged content's
embeddings are never kept; newly flagged objects are quarantined like `fsq apply`."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from fsq.classify.concepts import load_concepts
from fsq.classify.rule import decide
from fsq.ledger.db import connect
from fsq.rescore import screen
from tests.fixtures.images import animated_gif, jpeg_bytes, png_bytes
from tests.fixtures.model import concepts_file, concepts_toml

PASS = "correct horse battery staple"


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    files = {}
    for i in range(10):
        files[f"0{i % 3}/j{i}.jpeg"] = jpeg_bytes(40 + 3 * i, 30 + i, seed=50 + i)
    for i in range(3):
        files[f"p/p{i}.png"] = png_bytes(36 + i, 52, seed=80 + i)
    files["a/anim.gif"] = animated_gif(frames=4, seed=9)
    for k, data in files.items():
        (root / k).parent.mkdir(parents=True, exist_ok=True)
        (root / k).write_bytes(data)
    return root, files


def _scan(fsq, store, tiny_model, concepts, *extra, db="fsq.db"):
    cfg, ckpt = tiny_model
    r = fsq(["scan", "--all", "--source", f"file://{store}", "--model", str(cfg),
             "--pretrained", str(ckpt), "--concepts", str(concepts), "--db", db, "--json",
             *extra])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _rescore(fsq, store, tiny_model, *extra):
    cfg, ckpt = tiny_model
    r = fsq(["rescore", "--source", f"file://{store}", "--model", str(cfg), "--pretrained",
             str(ckpt), "--json", *extra])
    return r


def _flagged(db="fsq.db") -> set[str]:
    c = connect(db)
    try:
        return {r["key"] for r in c.execute("SELECT key FROM objects WHERE status IN "
                                            "('flagged', 'quarantined')")}
    finally:
        c.close()


def _stricter_value() -> float:
    """A uniform threshold between the objects' scores, as far as possible from any of them,
    that flags some objects and not others (uniform set: flagged iff both the best underage and
    the best lewd score of some frame are over it)."""
    c = connect("fsq.db")
    keyscore = []
    try:
        for r in c.execute("SELECT v.details FROM objects o JOIN verdicts v ON "
                           "v.id = o.verdict_id"):
            d = json.loads(r["details"])
            frames = [d["scores"]]  # the deciding frame; enough for a conservative margin
            for s in frames:
                keyscore.append(min(max(s["child"], s["children"], s["teen"], s["teens"]),
                                    max(s["porn"], s["naked"])))
    finally:
        c.close()
    ks = sorted(keyscore)
    gaps = [(ks[i + 1] - ks[i], (ks[i + 1] + ks[i]) / 2) for i in range(len(ks) - 1)]
    gap, value = max(gaps)
    assert gap > 4e-3, f"scores too close together for a meaningful comparison: {ks}"
    return round(value, 6)


def test_rescore_flags_exactly_what_a_rescan_flags_without_reading_a_file(
        store, tiny_model, tmp_path, fsq):
    root, files = store
    never = concepts_file(tmp_path, 2.0)  # cosine <= 1: nothing fires
    s = _scan(fsq, root, tiny_model, never, "--dry-run")
    assert s["clean"] == len(files) and s["flagged"] == 0
    c = connect("fsq.db")
    n_emb = c.execute("SELECT COUNT(*), SUM(n_frames) FROM embeddings").fetchone()
    before = {r["key"]: r["verdict_id"] for r in c.execute("SELECT key, verdict_id FROM objects")}
    c.close()
    assert n_emb[0] == len(files) and n_emb[1] > len(files)  # the animation kept its frames

    value = _stricter_value()
    stricter = tmp_path / "stricter.toml"
    stricter.write_text(concepts_toml(value), encoding="utf-8")

    # No file can be decoded: every file is gone from the store (the directory stays).
    for k in files:
        (root / k).unlink()
    r = _rescore(fsq, root, tiny_model, "--concepts", str(stricter), "--dry-run")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    rescored = set(out["flagged_keys"])
    assert out["candidates"] == len(files) and out["errors"] == 0
    assert 0 < len(rescored) < len(files), out
    assert _flagged() == rescored

    # The same concept set through the model, on a fresh database, with the files back.
    for k, data in files.items():
        (root / k).write_bytes(data)
    s2 = _scan(fsq, root, tiny_model, stricter, "--dry-run", "--rescan", db="rescan.db")
    assert _flagged("rescan.db") == rescored
    assert s2["flagged"] == len(rescored)

    c = connect("fsq.db")
    try:
        for key in rescored:
            o = c.execute("SELECT * FROM objects WHERE key=?", (key,)).fetchone()
            v = c.execute("SELECT * FROM verdicts WHERE id=?", (o["verdict_id"],)).fetchone()
            assert v["method"] == "rescore" and v["outcome"] == "flagged"
            assert json.loads(v["details"])["rescored_from"] == before[key]
            # The old verdict is kept.
            assert c.execute("SELECT outcome FROM verdicts WHERE id=?",
                             (before[key],)).fetchone()[0] == "clean"
            assert c.execute("SELECT COUNT(*) FROM incidents WHERE sha256=?",
                             (o["sha256"],)).fetchone()[0] == 1
            # Now evidence: its embeddings are gone.
            assert c.execute("SELECT COUNT(*) FROM embeddings WHERE sha256=?",
                             (o["sha256"],)).fetchone()[0] == 0
        assert c.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == \
            len(files) - len(rescored)
        ev = c.execute("SELECT details FROM audit WHERE action='rescore'").fetchone()
        assert json.loads(ev["details"])["flagged"] == len(rescored)
    finally:
        c.close()

    # Rescore again: nothing left to change.
    r = _rescore(fsq, root, tiny_model, "--concepts", str(stricter), "--dry-run")
    assert json.loads(r.stdout)["flagged"] == 0


def test_rescore_quarantines_newly_flagged_like_apply(store, tiny_model, tmp_path, fsq):
    root, files = store
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    assert fsq(["init", "--passphrase-file", str(pw)]).exit_code == 0
    _scan(fsq, root, tiny_model, concepts_file(tmp_path, 2.0), "--dry-run")
    everything = concepts_file(tmp_path, -1.0)
    r = _rescore(fsq, root, tiny_model, "--concepts", str(everything))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["flagged"] == len(files) and out["quarantined"] == len(files)
    assert not any((root / k).exists() for k in files)
    c = connect("fsq.db")
    try:
        assert {r["status"] for r in c.execute("SELECT status FROM objects")} == {"quarantined"}
        assert c.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 0
    finally:
        c.close()


def test_flagged_content_embeddings_are_never_kept(store, tiny_model, tmp_path, fsq):
    root, files = store
    s = _scan(fsq, root, tiny_model, concepts_file(tmp_path, -1.0), "--dry-run")
    assert s["flagged"] == len(files)
    c = connect("fsq.db")
    try:
        assert c.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 0
    finally:
        c.close()


def test_damaged_stored_embedding_is_an_error_not_a_guess(store, tiny_model, tmp_path, fsq):
    root, files = store
    _scan(fsq, root, tiny_model, concepts_file(tmp_path, 2.0), "--dry-run")
    c = connect("fsq.db")
    with c:
        # Someone with write access to the state DB: a blob of the wrong size, one with NaN.
        rows = c.execute("SELECT sha256, n_frames, dim FROM embeddings ORDER BY sha256 "
                         "LIMIT 2").fetchall()
        c.execute("UPDATE embeddings SET vectors=X'00' WHERE sha256=?", (rows[0][0],))
        nan = np.full(rows[1][1] * rows[1][2], np.nan, dtype="<f2").tobytes()
        c.execute("UPDATE embeddings SET vectors=? WHERE sha256=?", (nan, rows[1][0]))
    c.close()
    r = _rescore(fsq, root, tiny_model, "--concepts", str(concepts_file(tmp_path, -1.0)),
                 "--dry-run")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["errors"] == 2 and out["flagged"] == len(files) - 2
    assert {p["status"] for p in out["problems"]} == {"error"}


def test_rescore_without_stored_embeddings_says_so(store, tiny_model, tmp_path, fsq):
    root, _ = store
    _scan(fsq, root, tiny_model, concepts_file(tmp_path, -1.0), "--dry-run")
    r = _rescore(fsq, root, tiny_model, "--severity", "strict", "--dry-run")
    assert r.exit_code == 0
    assert "no stored embeddings" in r.stderr
    assert json.loads(r.stdout)["candidates"] == 0


def test_rescore_text_output(store, tiny_model, tmp_path, fsq):
    root, files = store
    _scan(fsq, root, tiny_model, concepts_file(tmp_path, 2.0), "--dry-run")
    cfg, ckpt = tiny_model
    r = fsq(["rescore", "--source", f"file://{root}", "--model", str(cfg), "--pretrained",
             str(ckpt), "--severity", "strict", "--dry-run"])
    assert r.exit_code == 0, r.stderr
    assert f"rescored {len(files)} object(s)" in r.stdout and "(dry run)" in r.stdout
    assert f"{len(files)} unchanged object(s) keep their earlier verdict" in r.stdout


@pytest.mark.parametrize("severity", ["strict", "balanced", "lenient"])
def test_screen_never_dismisses_a_frame_the_rule_flags(severity):
    """The vectorised screen may only settle frames that cannot flag (shipped concept set,
    random similarities around its thresholds)."""
    cs = load_concepts(None)
    rng = random.Random(7)
    thr = np.array([c.threshold for c in cs.concepts])
    sims = np.clip(thr + np.array([[rng.gauss(0, 0.02) for _ in cs.concepts]
                                   for _ in range(3000)]), -1, 1).astype(np.float32)
    maybe = screen(sims, cs, severity)
    flags = np.array([decide(dict(zip(cs.texts, row.tolist())), cs, severity).flagged
                      for row in sims])
    assert flags.any() and (~maybe).any()
    assert not (flags & ~maybe).any()


def test_help_has_an_example(fsq):
    r = fsq(["rescore", "--help"])
    assert r.exit_code == 0 and "Example" in r.stdout and "--concepts" in r.stdout
