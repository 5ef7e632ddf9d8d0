"""A working directory moved or copied elsewhere: `fsq vault verify` checks every vault the
ledger references (an unreachable one is a failure, not "0 entries, green"), and
`fsq vault relocate OLD NEW` re-points the ledger only at a vault that holds every entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fsq.ledger.db import connect
from tests.fixtures.images import jpeg_bytes
from tests.fixtures.model import concepts_file


def recorded(wd: Path) -> set[str]:
    conn = connect(wd / "fsq.db")
    try:
        return {x[0] for x in conn.execute("SELECT vault FROM vault_entries")}
    finally:
        conn.close()


@pytest.fixture
def quarantined(tmp_path, tiny_model, fsq):
    """Working directory A: 3 files quarantined into A/quarantine (file:///.../A/quarantine)."""
    a = Path.cwd()
    store = tmp_path / "store"
    for i in range(3):
        (store / f"0{i}").mkdir(parents=True)
        (store / f"0{i}" / f"i{i}.jpeg").write_bytes(jpeg_bytes(40 + i, 30, seed=i))
    (tmp_path / "pw").write_text("correct horse battery staple")
    assert fsq(["init", "--passphrase-file", str(tmp_path / "pw")]).exit_code == 0
    cfg, ckpt = tiny_model
    r = fsq(["scan", "--all", "--source", f"file://{store}", "--model", str(cfg),
             "--pretrained", str(ckpt), "--concepts", str(concepts_file(tmp_path, -1.0)),
             "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["quarantined"] == 3, r.output
    return a, f"file://{a / 'quarantine'}"


def test_moved_working_directory_is_a_clear_failure_until_relocated(quarantined, tmp_path,
                                                                    fsq_proc):
    a, old_url = quarantined
    b = tmp_path / "moved"
    shutil.move(str(a), str(b))  # the admin moves the whole directory
    new_url = f"file://{b / 'quarantine'}"
    r = fsq_proc(["vault", "verify"], cwd=b)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert f"{old_url}: UNREACHABLE" in r.stdout and "3 entries there" in r.stdout
    assert "fsq vault relocate" in r.stderr
    j = fsq_proc(["vault", "verify", "--json"], cwd=b)
    doc = json.loads(j.stdout)
    assert j.returncode == 4 and doc["ok"] is False
    assert doc["unreachable"][0]["vault"] == old_url and doc["unreachable"][0]["entries"] == 3
    assert not Path(old_url[7:]).exists()  # probing never re-created the old directory

    # a NEW that does not hold the entries is refused, nothing changes
    empty = tmp_path / "empty-vault"
    empty.mkdir(mode=0o700)
    r = fsq_proc(["vault", "relocate", old_url, f"file://{empty}"], cwd=b)
    assert r.returncode == 4 and "nothing was changed" in r.stderr, r.stderr
    assert recorded(b) == {old_url}
    # an OLD the ledger does not know is a usage error naming the ones it does
    r = fsq_proc(["vault", "relocate", "file:///nowhere", new_url], cwd=b)
    assert r.returncode == 2 and old_url in r.stderr

    dry = fsq_proc(["vault", "relocate", old_url, "file://./quarantine", "--dry-run"], cwd=b)
    assert dry.returncode == 0 and "3 entries" in dry.stdout, dry.stderr
    assert recorded(b) == {old_url}
    ok = fsq_proc(["vault", "relocate", old_url, "file://./quarantine", "--json"], cwd=b)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["new"] == new_url
    assert recorded(b) == {new_url}
    v = fsq_proc(["vault", "verify", "--json"], cwd=b)
    assert v.returncode == 0, v.stdout
    assert json.loads(v.stdout)["entries"] == 3
    log = json.loads(fsq_proc(["audit", "log", "--json"], cwd=b).stdout)
    ev = [e for e in log if e["action"] == "vault.relocated"]
    assert ev and ev[0]["details"]["old"] == old_url and ev[0]["details"]["entries"] == 3
    assert fsq_proc(["audit", "verify"], cwd=b).returncode == 0


def test_copied_working_directory_warns_that_the_vault_is_shared(quarantined, tmp_path,
                                                                fsq_proc):
    a, old_url = quarantined
    b = tmp_path / "copy"
    shutil.copytree(a, b)
    r = fsq_proc(["vault", "verify"], cwd=b)
    # the evidence is where the ledger says (A's vault): intact, but say it is not this one
    assert r.returncode == 0, r.stderr
    assert f"{old_url}: 3 entries checked" in r.stdout
    assert "not in FSQ_VAULT" in r.stderr and "relocate" in r.stderr
