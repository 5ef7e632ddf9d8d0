"""Guardrails a new admin needs, on the real CLI: a short passphrase is refused when one is
set, and a routine purge under a retention shorter than the US preservation year warns and,
on a terminal, asks first."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.images import REPO, jpeg_bytes
from tests.fixtures.model import concepts_file

GOOD = "correct horse battery staple"


def test_short_new_passphrase_is_refused_and_nothing_written(tmp_path, fsq_proc):
    short = tmp_path / "short"
    short.write_text("12345\n")
    r = fsq_proc(["init", "--passphrase-file", str(short)])
    assert r.returncode == 2 and "at least 12" in r.stderr, r.stderr
    assert not Path("keys").exists() or not any(Path("keys").iterdir())
    good = tmp_path / "good"
    good.write_text(GOOD)
    assert fsq_proc(["init", "--passphrase-file", str(good)]).returncode == 0
    r = fsq_proc(["key", "change-passphrase", "--passphrase-file", str(good),
                  "--new-passphrase-file", str(short)])
    assert r.returncode == 2 and "at least 12" in r.stderr
    assert "12345" not in r.stderr  # never echo a passphrase, not even a bad one
    # the old passphrase still opens the key
    r = fsq_proc(["key", "change-passphrase", "--passphrase-file", str(good),
                  "--new-passphrase-file", str(good)])
    assert r.returncode == 0, r.stderr


@pytest.fixture
def cleared(tmp_path, fsq_proc, tiny_model):
    store = tmp_path / "store"
    (store / "aa").mkdir(parents=True)
    (store / "aa" / "x.jpeg").write_bytes(jpeg_bytes(40, 30, seed=3))
    (tmp_path / "pw").write_text(GOOD)
    assert fsq_proc(["init", "--passphrase-file", str(tmp_path / "pw")]).returncode == 0
    cfg, ckpt = tiny_model
    r = fsq_proc(["scan", "--all", "--source", f"file://{store}", "--model", str(cfg),
                  "--pretrained", str(ckpt), "--concepts", str(concepts_file(tmp_path, -1.0)),
                  "--json"])
    assert r.returncode == 0 and json.loads(r.stdout)["quarantined"] == 1, r.stderr
    r = fsq_proc(["clear", "1", "--by", "A. Admin", "--reason", "test", "--passphrase-file",
                  str(tmp_path / "pw")])
    assert r.returncode == 0, r.stderr
    # Purge unlocks the custodian key (fsq.custody): the passphrase comes from the env here.
    return {"FSQ_RETENTION_DAYS": "0", "FSQ_VAULT_PASSPHRASE": GOOD.strip()}


def _state(fsq_proc) -> str:
    return json.loads(fsq_proc(["incidents", "--json"]).stdout)[0]["state"]


def test_short_retention_purge_asks_on_a_terminal(cleared, fsq_proc):
    master, slave = pty.openpty()
    try:
        os.write(master, b"n\n")
        env = {**os.environ, **cleared,
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        p = subprocess.run([sys.executable, "-m", "fsq", "purge", "--after-clearance"],
                           stdin=slave, capture_output=True, text=True, env=env, timeout=120)
    finally:
        os.close(master)
        os.close(slave)
    assert p.returncode == 1 and "Aborted" in p.stderr, (p.returncode, p.stderr)
    assert "FSQ_RETENTION_DAYS=0 is shorter than 365 days" in p.stderr
    assert _state(fsq_proc) == "cleared"  # nothing destroyed


def test_short_retention_purge_warns_when_scripted(cleared, fsq_proc):
    r = fsq_proc(["purge", "--after-clearance", "--dry-run"], env=cleared)
    assert r.returncode == 0 and "shorter than" not in r.stderr  # a dry run destroys nothing
    r = fsq_proc(["purge", "--after-clearance", "--json"], env=cleared)
    assert r.returncode == 0, r.stderr
    assert "FSQ_RETENTION_DAYS=0 is shorter than 365 days" in r.stderr
    assert json.loads(r.stdout)["purged"] == [1]
    r = fsq_proc(["purge", "--after-clearance"],
                 env={**cleared, "FSQ_RETENTION_DAYS": "365"})
    assert "shorter than" not in r.stderr
