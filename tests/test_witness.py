"""Witnessed audit heads (issue 12): truncation and rewrite+rechain are caught.

A valid shorter chain, or a chain rewritten from some row on and re-hashed with fsq's own
``row_hash``, passes ``fsq audit verify``; only a head kept elsewhere proves what was there.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from fsq.ledger import audit
from fsq.synth import make_store
from tests.fixtures.images import run_cli, run_proc

PASS = "witness test passphrase"


def ok(args, code=0):
    r = run_cli(args)
    assert r.exit_code == code, (args, r.exit_code, r.output)
    return r


def heads(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


@pytest.fixture
def witnessed(tmp_path, _isolated_env, monkeypatch):
    work = _isolated_env
    wfile = tmp_path / "elsewhere" / "heads.jsonl"
    wfile.parent.mkdir()
    monkeypatch.setenv("FSQ_AUDIT_WITNESS", str(wfile))
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")
    root = tmp_path / "pictrs" / "files"
    keys = make_store(root, 2, seed=3, megapixels=(0.01, 0.02))
    (tmp_path / "known.txt").write_text("".join(
        hashlib.sha256((root / k).read_bytes()).hexdigest() + "\n" for k in keys))
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", PASS)
    ok(["init"])
    ok(["scan", "--all", "--source", f"file://{root}", "--hash-list",
        str(tmp_path / "known.txt")])
    ok(["clear", "1", "--by", "A", "--reason", "done"])
    return work, wfile


def _raw(work: Path) -> sqlite3.Connection:
    c = sqlite3.connect(work / "fsq.db", isolation_level=None)
    c.execute("DROP TRIGGER audit_no_update")   # the attacker owns the file
    c.execute("DROP TRIGGER audit_no_delete")
    return c


def test_heads_are_appended_and_signed(witnessed):
    work, wfile = witnessed
    hs = heads(wfile)
    assert [h["signer"] for h in hs] == ["scanner", "scanner", "custodian"]  # init, scan, clear
    assert hs[-1]["seq"] == int(ok(["audit", "head"]).stdout.split(":")[0])
    assert (work / "keys" / "witness.key").stat().st_mode & 0o777 == 0o600
    out = json.loads(ok(["audit", "verify", "--witness", "--json"]).stdout)
    assert out["ok"] and out["witness"] == {"heads": 3, "problems": []}
    n = len(hs)
    ok(["audit", "verify"])                       # writes no audit row: no new head
    assert len(heads(wfile)) == n


def test_truncation_is_detected(witnessed):
    work, _ = witnessed
    c = _raw(work)
    last = c.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    c.execute("DELETE FROM audit WHERE seq > ?", (last - 3,))
    c.close()
    ok(["audit", "verify"])                        # a valid, shorter chain
    p = run_proc(["audit", "verify", "--witness"], cwd=str(work), timeout=60)
    assert p.returncode == 4, (p.stdout, p.stderr)
    assert "truncated" in p.stderr


def test_rewrite_and_rechain_is_detected(witnessed):
    work, _ = witnessed
    c = _raw(work)
    rows = c.execute("SELECT seq, ts, actor, tool_version, command, action, subject, details, "
                     "prev_hash FROM audit ORDER BY seq").fetchall()
    # Rewrite row 3 (hide what it says) and re-chain every later row with fsq's own hash.
    prev = c.execute("SELECT hash FROM audit WHERE seq=2").fetchone()[0]
    for r in rows[2:]:
        seq, ts, actor_, ver, cmd, action, subject, det, _ = r
        if seq == 3:
            det = audit.canonical_json({"rewritten": True})
        h = audit.row_hash(prev, seq, ts, actor_, ver, cmd, action, subject, det)
        c.execute("UPDATE audit SET details=?, prev_hash=?, hash=? WHERE seq=?",
                  (det, prev, h, seq))
        prev = h
    c.close()
    ok(["audit", "verify"])                        # the chain itself is consistent again
    r = ok(["audit", "verify", "--witness", "--json"], 4)
    probs = json.loads(r.stdout)["witness"]["problems"]
    assert probs and all("rewritten and re-chained" in p for p in probs)


def test_forged_head_is_reported(witnessed):
    work, wfile = witnessed
    h = heads(wfile)[-1]
    h.update(seq=h["seq"], hash="0" * 64)
    with open(wfile, "a") as f:
        f.write(json.dumps(h) + "\n" + "not json\n")
    r = ok(["audit", "verify", "--witness"], 4)
    assert "no valid signature" in r.stderr and "malformed" in r.stderr


def test_witness_needs_configuring(tmp_path, _isolated_env, monkeypatch):
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", PASS)
    ok(["init"])
    assert "FSQ_AUDIT_WITNESS" in ok(["audit", "verify", "--witness"], 2).stderr
    monkeypatch.setenv("FSQ_AUDIT_WITNESS", "ftp://x/y")
    assert "not supported" in ok(["audit", "verify", "--witness"], 2).stderr
    monkeypatch.setenv("FSQ_AUDIT_WITNESS", "syslog://127.0.0.1:9")
    assert "cannot be read back" in ok(["audit", "verify", "--witness"], 2).stderr
    ok(["key", "show"])


def test_unwritable_witness_is_a_warning_not_a_failure(tmp_path, _isolated_env, monkeypatch):
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", PASS)
    monkeypatch.setenv("FSQ_AUDIT_WITNESS", str(tmp_path / "no-such-dir" / "heads.jsonl"))
    r = ok(["init"])
    assert "audit witness not updated" in r.stderr


def test_s3_object_lock_witness(tmp_path, _isolated_env, s3, monkeypatch):
    bucket = s3.make_bucket(object_lock=True)
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FSQ_AUDIT_WITNESS", f"s3://{bucket}/heads/")
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", PASS)
    ok(["init"])
    ok(["incidents"])
    ok(["vault", "verify"])                        # appends vault.verified -> a second head
    objs = s3.client.list_objects_v2(Bucket=bucket, Prefix="heads/")["Contents"]
    assert len(objs) == 2
    head = s3.client.head_object(Bucket=bucket, Key=objs[0]["Key"])
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"]
    ok(["audit", "verify", "--witness"])
    c = _raw(_isolated_env)
    c.execute("DELETE FROM audit WHERE seq > 1")
    c.close()
    assert "truncated" in ok(["audit", "verify", "--witness"], 4).stderr


def test_daemon_publishes_periodically(tmp_path, _isolated_env, monkeypatch):
    from fsq.config import load_settings
    from fsq.custody.witness import Periodic
    from fsq.ledger.db import connect
    wfile = tmp_path / "heads.jsonl"
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", PASS)
    ok(["init"])
    settings = load_settings({"audit_witness": str(wfile)})
    p = Periodic(lambda: connect("fsq.db", create=False), settings, Path("keys/vault.pub"),
                 0.1)
    try:
        conn = connect("fsq.db")
        audit.append(conn, "test.event", "x", {})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (wfile.exists() and heads(wfile)):
            time.sleep(0.05)
        n = len(heads(wfile))
        time.sleep(0.4)                            # no new rows: no new heads
        assert n == 1 and len(heads(wfile)) == 1
        audit.append(conn, "test.event", "x", {})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(heads(wfile)) < 2:
            time.sleep(0.05)
        assert heads(wfile)[-1]["seq"] == audit.verify(conn).rows
    finally:
        p.stop()


def test_syslog_witness_receives_the_head(tmp_path, _isolated_env, monkeypatch):
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    try:
        monkeypatch.setenv("FSQ_AUDIT_WITNESS", f"syslog://127.0.0.1:{sock.getsockname()[1]}")
        monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", PASS)
        ok(["init"])
        msg = sock.recv(65536).decode()
    finally:
        sock.close()
    assert "fsq-audit-head" in msg
    head = json.loads(msg[msg.index("{"):].rstrip("\x00"))
    assert head["seq"] == int(ok(["audit", "head"]).stdout.split(":")[0])
    assert head["signer"] == "scanner" and head["sig"]
