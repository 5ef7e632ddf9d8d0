"""`fsq model check`: int8 is approved for a checkpoint only when it agrees with fp32 on the
admin's own files (zero verdict flips, similarity differences under the bound); an injected
disagreement that flips a verdict refuses it; `--precision int8` runs only after approval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsq.classify import int8_check, onnx_backend
from fsq.ledger.db import connect
from tests.fixtures.images import jpeg_bytes
from tests.fixtures.model import concepts_file

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture
def scanned(tmp_path, tiny_model, fsq):
    store = tmp_path / "store"
    for i in range(6):
        (store / f"0{i}").mkdir(parents=True)
        (store / f"0{i}" / f"i{i}.jpeg").write_bytes(jpeg_bytes(40 + 5 * i, 30 + i, seed=i))
    cfg, ckpt = tiny_model
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg),
           "FSQ_PRETRAINED": str(ckpt), "FSQ_CONCEPTS": str(concepts_file(tmp_path, 2.0))}
    r = fsq(["scan", "--all", "--dry-run"], env=env)
    assert r.exit_code == 0, r.stderr
    return store, env


def _approvals():
    c = connect("fsq.db")
    try:
        return [(r["approved"], json.loads(r["details"])) for r in
                c.execute("SELECT * FROM model_approvals ORDER BY id")]
    finally:
        c.close()


def test_check_approves_int8_and_then_int8_scans(scanned, fsq):
    store, env = scanned
    r = fsq(["scan", "--all", "--dry-run", "--rescan", "--precision", "int8"], env=env)
    assert r.exit_code == 2 and "not approved" in r.stderr and "fsq model check" in r.stderr
    # Random tiny weights move more than trained ones would: a loose bound for this model.
    r = fsq(["model", "check", "--max-delta", "0.05", "--json"], env=env)
    assert r.exit_code == 0, r.stderr + r.stdout
    out = json.loads(r.stdout)
    assert out["passed"] and out["files"] == 6 and out["flips"] == []
    assert 0 < out["max_delta"] < 0.05
    ((ok, details),) = _approvals()
    assert ok == 1 and details["sample"]["compared"] == 6
    c = connect("fsq.db")
    ev = c.execute("SELECT details FROM audit WHERE action='model.check'").fetchone()
    c.close()
    assert json.loads(ev["details"])["approved"] is True
    r = fsq(["scan", "--all", "--dry-run", "--rescan", "--precision", "int8", "--json"],
            env=env)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["classified"] == 6


def _k(scores: dict) -> float:
    """Uniform concept set (tests.fixtures.model): flagged iff this is over the threshold."""
    return min(max(scores[t] for t in ("child", "children", "teen", "teens")),
               max(scores[t] for t in ("porn", "naked")))


def test_injected_disagreement_that_flips_a_verdict_refuses_int8(scanned, fsq, tmp_path,
                                                                 monkeypatch):
    store, env = scanned
    from fsq.classify.clip import ClipClassifier
    from fsq.classify.concepts import load_concepts
    cs_path = concepts_file(tmp_path, 0.0)
    cfg, ckpt = env["FSQ_MODEL"], env["FSQ_PRETRAINED"]
    text = ClipClassifier(model=cfg, pretrained=ckpt, concepts=load_concepts(cs_path),
                          text_only=True, cache_dir=str(tmp_path / "c")).text_embeddings
    # The injected int8 tower: every frame comes out pointing away from the concepts.
    away = -text.sum(axis=0)
    away /= np.linalg.norm(away)
    int8_scores = dict(zip(load_concepts(cs_path).texts, (text @ away).tolist()))
    monkeypatch.setattr(onnx_backend.OrtImageTower, "embed",
                        lambda self, batch: np.tile(away, (len(batch), 1)))
    c = connect("fsq.db")
    fp32_k = [_k(json.loads(r["details"])["scores"]) for r in
              c.execute("SELECT v.details FROM objects o JOIN verdicts v ON v.id=o.verdict_id")]
    c.close()
    assert max(fp32_k) > _k(int8_scores) + 0.01, "precondition of the injected disagreement"
    line = (max(fp32_k) + _k(int8_scores)) / 2  # fp32 flags at least one file, int8 none
    cs = tmp_path / "line.toml"
    cs.write_text(cs_path.read_text().replace("threshold = 0.0", f"threshold = {line!r}")
                  .replace("critical = 0.0", f"critical = {line!r}"))
    env = {**env, "FSQ_CONCEPTS": str(cs)}
    r = fsq(["model", "check", "--max-delta", "1.0", "--json"], env=env)
    assert r.exit_code == 1, r.stderr
    out = json.loads(r.stdout)
    assert not out["passed"] and len(out["flips"]) == sum(k > line for k in fp32_k) >= 1
    assert {f["fp32"] for f in out["flips"]} == {"flagged"}
    assert {f["int8"] for f in out["flips"]} == {"clean"}
    assert [a for a, _ in _approvals()] == [0]
    r = fsq(["scan", "--all", "--dry-run", "--rescan", "--precision", "int8"], env=env)
    assert r.exit_code == 2 and "not approved" in r.stderr


def test_a_refusal_after_an_approval_withdraws_it(scanned, fsq):
    _, env = scanned
    assert fsq(["model", "check", "--max-delta", "0.05"], env=env).exit_code == 0
    # The same weights against an impossible bound: refused, and the latest row decides.
    r = fsq(["model", "check", "--max-delta", "1e-9"], env=env)
    assert r.exit_code == 1 and "REFUSED" in r.stdout
    assert [a for a, _ in _approvals()] == [1, 0]
    r = fsq(["scan", "--all", "--dry-run", "--rescan", "--precision", "int8"], env=env)
    assert r.exit_code == 2


def test_check_without_files_refuses(tmp_path, tiny_model, fsq):
    store = tmp_path / "empty"
    store.mkdir()
    cfg, ckpt = tiny_model
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg),
           "FSQ_PRETRAINED": str(ckpt)}
    assert fsq(["scan", "--all", "--dry-run"], env=env).exit_code == 0
    r = fsq(["model", "check", "--json"], env=env)
    assert r.exit_code == 1 and "no file could be compared" in json.loads(r.stdout)["reason"]


def test_check_compares_flagged_files_sealed_in_the_vault(tmp_path, tiny_model, fsq):
    store = tmp_path / "store"
    for i in range(3):
        (store / f"0{i}").mkdir(parents=True)
        (store / f"0{i}" / f"f{i}.jpeg").write_bytes(jpeg_bytes(44 + i, 32, seed=20 + i))
    pw = tmp_path / "pass.txt"
    pw.write_text("correct horse battery staple\n")
    assert fsq(["init", "--passphrase-file", str(pw)]).exit_code == 0
    cfg, ckpt = tiny_model
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg),
           "FSQ_PRETRAINED": str(ckpt), "FSQ_CONCEPTS": str(concepts_file(tmp_path, -1.0))}
    r = fsq(["scan", "--all"], env=env)  # everything flags and is sealed
    assert r.exit_code == 0, r.stderr
    assert not any(store.rglob("*.jpeg"))
    r = fsq(["model", "check", "--max-delta", "0.05", "--json"], env=env)
    assert r.exit_code == 1 and json.loads(r.stdout)["files"] == 0  # nothing readable
    r = fsq(["model", "check", "--max-delta", "0.05", "--include-vault", "--passphrase-file",
             str(pw), "--json"], env=env)
    assert r.exit_code == 0, r.stderr + r.stdout
    out = json.loads(r.stdout)
    assert out["passed"] and out["files"] == 3 and out["flagged_fp32"] == 3
    c = connect("fsq.db")
    ev = c.execute("SELECT details FROM audit WHERE action='evidence.decrypted' "
                   "ORDER BY seq DESC").fetchone()
    c.close()
    assert "model check" in json.loads(ev["details"])["purpose"]
    assert not list(tmp_path.rglob("*.jpeg"))  # no plaintext written anywhere
