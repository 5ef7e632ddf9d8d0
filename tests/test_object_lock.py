"""S3 vault with Object Lock: sealed objects get a retention date matching the incident's
retention when they are quarantined; a release restores the file even while the sealed copy
is locked, keeps that copy on record, and a later release retries its deletion."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

from fsq.quarantine.move import blob_name, key_name
from fsq.quarantine.store import open_vault
from fsq.ledger.db import connect
from fsq.synth import make_store
from tests.fixtures.images import run_cli

PASS = "object lock passphrase"


def test_sealing_sets_retention_and_release_keeps_locked_copy(s3, tmp_path, monkeypatch):
    vb = s3.make_bucket(object_lock=True)
    store = tmp_path / "files"
    keys = make_store(store, 2, seed=5, megapixels=(0.01, 0.02))
    known = tmp_path / "known.txt"
    known.write_text(hashlib.sha256((store / keys[0]).read_bytes()).hexdigest() + "\n")
    (tmp_path / "pass").write_text(PASS)
    env = {**s3.env, "FSQ_SOURCE": f"file://{store}", "FSQ_VAULT": f"s3://{vb}/vault",
           "FSQ_RETENTION_DAYS": "2", "FSQ_HASH_LISTS": str(known)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert run_cli(["init", "--passphrase-file", str(tmp_path / "pass")]).exit_code == 0
    # only hash-list matches flag; the rest is unreadable-free synthetic images -> need no model
    r = run_cli(["scan", "--all", "--json", "--unreadable", "skip"] +
                ["--concepts", str(_never(tmp_path))] + _tiny(tmp_path))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quarantined"] == 1
    conn = connect("fsq.db")
    e = conn.execute("SELECT * FROM vault_entries WHERE state='done'").fetchone()
    vault = open_vault(f"s3://{vb}/vault", s3.settings())
    want = datetime.now(timezone.utc) + timedelta(days=2)
    for name in (key_name(e["id"]), blob_name(e["id"])):
        until = vault.retention(name)
        assert until is not None and abs((until - want).total_seconds()) < 600
    assert e["retain_until"] is not None

    rel = run_cli(["release", str(e["incident_id"]), "--reason", "fp", "--passphrase-file",
                   str(tmp_path / "pass"), "--json"])
    assert rel.exit_code == 0, rel.output
    res = json.loads(rel.stdout)
    assert res["restored"] == [keys[0]] and (store / keys[0]).exists()
    assert [r["entry"] for r in res["retained"]] == [e["id"]]
    assert vault.exists(blob_name(e["id"]))  # WORM: still there until its date
    v = json.loads(run_cli(["vault", "verify", "--json"]).stdout)
    assert v["stray_objects"] == [] and len(v["retained_after_release"]) == 2
    again = json.loads(run_cli(["release", str(e["incident_id"]), "--reason", "retry",
                                "--passphrase-file", str(tmp_path / "pass"),
                                "--json"]).stdout)
    assert again["deleted"] == [] and [r["entry"] for r in again["retained"]] == [e["id"]]
    assert run_cli(["audit", "verify"]).exit_code == 0


def _never(tmp_path):
    from tests.fixtures.model import concepts_file
    return concepts_file(tmp_path, 2.0)


def _tiny(tmp_path):
    from fsq.classify.tiny import write_tiny_model
    cfg, ckpt = write_tiny_model(tmp_path / "model")
    return ["--model", str(cfg), "--pretrained", str(ckpt)]
