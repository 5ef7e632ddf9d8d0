"""The vault end to end: quarantine with only the public key, crash safety at every step of
the move, release, tamper detection, and no plaintext leaking into vault or database."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from fsq.ledger.db import connect
from fsq.quarantine.keys import load_private_key
from fsq.quarantine.move import UNFINISHED, blob_name, key_name
from fsq.quarantine.release import decrypt_entry
from fsq.quarantine.store_dir import DirStore
from fsq.secrets import Secret
from tests.fixtures.images import jpeg_bytes
from tests.fixtures.model import concepts_file

PASS = "correct horse battery staple"
CANARY = b"FSQ-CANARY-do-not-leak-3c1d9a"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def setup(tmp_path, tiny_model, fsq):
    """A store of 4 JPEGs carrying a canary comment, keys from `fsq init`, everything flags."""
    store = tmp_path / "pictrs" / "files"
    originals = {}
    for i in range(4):
        key = f"0{i}/a{i}/img{i}.jpeg"
        data = jpeg_bytes(64 + i, 48, seed=100 + i, marker=CANARY + bytes([65 + i]))
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        (store / key).write_bytes(data)
        originals[key] = data
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    r = fsq(["init", "--passphrase-file", str(pw)])
    assert r.exit_code == 0, r.output
    cfg, ckpt = tiny_model
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg), "FSQ_PRETRAINED": str(ckpt),
           "FSQ_CONCEPTS": str(concepts_file(tmp_path, -1.0))}
    return store, originals, pw, env


def vault_files(root="quarantine") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(root).rglob("*") if p.is_file()
            and not p.name.startswith(".")}


def private_key(pw):
    return load_private_key("keys/vault.key", Secret(Path(pw).read_text().strip()))


def check_exactly_once(store: Path, originals: dict[str, bytes], pw) -> dict[str, str]:
    """Each original is in the source or in the vault -- exactly once, sha256 intact."""
    conn = connect("fsq.db")
    vault = DirStore("quarantine")
    key = private_key(pw)
    where = {}
    live = conn.execute("SELECT * FROM vault_entries WHERE state='done'").fetchall()
    assert conn.execute(f"SELECT COUNT(*) FROM vault_entries WHERE state IN "
                        f"({','.join('?' * len(UNFINISHED))})", UNFINISHED).fetchone()[0] == 0
    in_vault = {}
    for e in live:
        meta, content = decrypt_entry(vault, e, key)
        assert sha(content) == sha(originals[e["key"]])
        assert e["key"] not in in_vault, "two vault copies of one key"
        in_vault[e["key"]] = e["id"]
    for k, data in originals.items():
        present = (store / k).exists()
        assert present != (k in in_vault), f"{k}: in source={present}, in vault={k in in_vault}"
        if present:
            assert (store / k).read_bytes() == data
        where[k] = "source" if present else "vault"
    # no stray vault objects: every object belongs to a live entry
    names = set(vault.names())
    assert names == {n for eid in in_vault.values() for n in (blob_name(eid), key_name(eid))}
    return where


def test_scan_quarantines_with_public_key_only_and_leaks_nothing(setup, fsq, tmp_path):
    store, originals, pw, env = setup
    # The private key is not even on this "host" during the scan.
    shutil.move("keys/vault.key", tmp_path / "offline-vault.key")
    r = fsq(["scan", "--all", "--json"], env=env)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["flagged"] == 4 and s["quarantined"] == 4
    assert not any((store / k).exists() for k in originals)
    files = vault_files()
    assert len(files) == 8
    db_bytes = b"".join(Path(p).read_bytes() for p in Path(".").glob("fsq.db*"))
    for blob in list(files.values()) + [db_bytes]:
        assert CANARY not in blob
        for data in originals.values():
            assert data[100:164] not in blob
    for p in Path("quarantine").rglob("*"):
        assert oct(p.stat().st_mode & 0o777) == (oct(0o700) if p.is_dir() else oct(0o600))
    inc = json.loads(fsq(["incidents", "--json"]).stdout)
    assert len(inc) == 4 and all(i["state"] == "quarantined" for i in inc)
    shutil.move(tmp_path / "offline-vault.key", "keys/vault.key")
    assert check_exactly_once(store, originals, pw) == {k: "vault" for k in originals}
    assert fsq(["vault", "verify"]).exit_code == 0
    assert fsq(["vault", "verify", "--deep", "--passphrase-file", str(pw)]).exit_code == 0
    assert fsq(["audit", "verify"]).exit_code == 0


def test_dry_run_then_apply_without_classifying_again(setup, fsq):
    store, originals, pw, env = setup
    s = json.loads(fsq(["scan", "--all", "--dry-run", "--json"], env=env).stdout)
    assert s["flagged"] == 4 and s["quarantined"] == 0
    assert all((store / k).exists() for k in originals)
    assert len(json.loads(fsq(["flagged", "--json"]).stdout)) == 4
    # one file changes after it was flagged: apply must not act on the stale verdict
    changed = sorted(originals)[0]
    (store / changed).write_bytes(jpeg_bytes(90, 60, seed=999))
    r = fsq(["apply", "--json"], env={"FSQ_SOURCE": env["FSQ_SOURCE"]})
    res = json.loads(r.stdout)
    assert res["quarantined"] == 3 and res["changed"] == 1
    assert (store / changed).exists()
    del originals[changed]
    check_exactly_once(store, originals, pw)


CRASH_POINTS = ["after-intent", "after-put-key", "after-put-blob", "after-stored",
                "after-verified", "after-remove", "after-source-removed"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_every_step_loses_nothing(setup, fsq, fsq_proc, point):
    store, originals, pw, env = setup
    r = fsq(["scan", "--all", "--dry-run", "--json"], env=env)
    assert json.loads(r.stdout)["flagged"] == 4
    p = fsq_proc(["apply"], env={**env, "FSQ_TESTONLY_CRASH_AT": point})
    assert p.returncode == -9, (p.returncode, p.stderr)
    assert "FSQ_TESTONLY_CRASH_AT" in p.stderr  # the test-only switch always warns
    rec = fsq_proc(["recover", "--json"], env=env)
    assert rec.returncode == 0, rec.stderr
    where = check_exactly_once(store, originals, pw)
    # finishing the job afterwards quarantines everything exactly once
    fin = fsq_proc(["apply", "--json"], env=env)
    assert fin.returncode == 0, fin.stderr
    where = check_exactly_once(store, originals, pw)
    assert set(where.values()) == {"vault"}
    assert fsq(["audit", "verify"]).exit_code == 0


def test_release_restores_byte_identical_and_allowlists(setup, fsq):
    store, originals, pw, env = setup
    fsq(["scan", "--all"], env=env)
    inc = json.loads(fsq(["incidents", "--json"]).stdout)
    target = inc[0]
    r = fsq(["release", str(target["id"]), "--reason", "cartoon", "--passphrase-file", str(pw),
             "--json"])
    assert r.exit_code == 0, r.output
    (key,) = json.loads(r.stdout)["restored"]
    assert (store / key).read_bytes() == originals[key]
    assert sha(originals[key]) == target["sha256"]
    # the next scan sees the restored file and does not flag it again
    s = json.loads(fsq(["scan", "--all", "--json"], env=env).stdout)
    assert s["flagged"] == 0 and (store / key).exists()
    log = json.loads(fsq(["audit", "log", "--json", "--limit", "500"]).stdout)
    actions = [e["action"] for e in log]
    assert "evidence.decrypted" in actions and "released" in actions
    assert fsq(["audit", "verify"]).exit_code == 0
    again = fsq(["release", str(target["id"]), "--reason", "x", "--passphrase-file", str(pw)])
    assert again.exit_code == 2 and "already released" in again.stderr


def test_release_refuses_to_overwrite_other_content(setup, fsq):
    store, originals, pw, env = setup
    fsq(["scan", "--all"], env=env)
    conn = connect("fsq.db")
    e = conn.execute("SELECT * FROM vault_entries WHERE state='done' LIMIT 1").fetchone()
    (store / e["key"]).write_bytes(b"someone else's new file")
    r = fsq(["release", str(e["incident_id"]), "--reason", "fp", "--passphrase-file", str(pw)])
    assert r.exit_code == 2 and "--force" in r.stderr
    assert (store / e["key"]).read_bytes() == b"someone else's new file"
    assert len(vault_files()) == 8
    r = fsq(["release", str(e["incident_id"]), "--reason", "fp", "--force",
             "--passphrase-file", str(pw)])
    assert r.exit_code == 0 and (store / e["key"]).read_bytes() == originals[e["key"]]


def test_flipped_byte_fails_release_and_verify_with_exit_4(setup, fsq):
    store, originals, pw, env = setup
    fsq(["scan", "--all"], env=env)
    before = vault_files()
    conn = connect("fsq.db")
    e = conn.execute("SELECT * FROM vault_entries WHERE state='done' LIMIT 1").fetchone()
    blob = next(Path("quarantine").rglob(blob_name(e["id"])))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(blob, 0o600)
    blob.write_bytes(bytes(data))
    v = fsq(["vault", "verify"])
    assert v.exit_code == 4 and e["id"] in v.stdout
    r = fsq(["release", str(e["incident_id"]), "--reason", "fp", "--passphrase-file", str(pw)])
    assert r.exit_code == 4 and e["id"] in r.stderr
    assert not (store / e["key"]).exists()
    after = vault_files()
    assert {k: v for k, v in after.items() if k != blob.name} == \
        {k: v for k, v in before.items() if k != blob.name}
    # every other incident still releases fine
    other = conn.execute("SELECT incident_id FROM vault_entries WHERE state='done' AND id != ?",
                         (e["id"],)).fetchone()[0]
    ok = fsq(["release", str(other), "--reason", "fp", "--passphrase-file", str(pw)])
    assert ok.exit_code == 0


def test_wrong_passphrase_is_exit_2_and_not_echoed(setup, fsq, tmp_path):
    store, originals, pw, env = setup
    fsq(["scan", "--all"], env=env)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not-the-passphrase-0451\n")
    r = fsq(["release", "1", "--reason", "fp", "--passphrase-file", str(wrong)])
    assert r.exit_code == 2 and "passphrase" in r.stderr
    assert "not-the-passphrase-0451" not in r.output and PASS not in r.output
    both = fsq(["release", "1", "--reason", "fp", "--passphrase-file", str(pw)],
               env={"FSQ_VAULT_PASSPHRASE": PASS})
    assert both.exit_code == 2 and "ambiguous" in both.stderr


def test_scan_without_keys_says_run_init(tmp_path, fsq, small_store, tiny_model):
    store, _ = small_store
    shutil.rmtree("keys")  if Path("keys").exists() else None
    r = fsq(["scan", "--all", "--source", f"file://{store}"])
    assert r.exit_code == 2 and "fsq init" in r.stderr


def test_release_of_a_rejected_upload_shreds_and_allowlists_but_writes_nothing(setup, fsq,
                                                                               tmp_path):
    """Uploads sealed by `fsq serve` have no original key (pict-rs discarded them): release
    must not try to "restore" into some directory named after the pseudo-source."""
    from fsq.media import hashes
    from fsq.ledger import state
    from fsq.ledger.db import transaction
    from fsq.quarantine.keys import load_public_key
    from fsq.quarantine.move import UPLOAD_SOURCE, Quarantiner

    store, originals, pw, env = setup
    data = jpeg_bytes(70, 50, seed=4242)
    sha, md5 = hashes(data)
    conn = connect("fsq.db")
    q = Quarantiner(DirStore("quarantine"), load_public_key("keys/vault.pub"))
    key = f"upload/2026-11-21T00:00:00Z-{sha[:16]}"
    oid = state.touch_object(conn, UPLOAD_SOURCE, key, len(data), 0.0, None)
    with transaction(conn):
        iid, _ = state.ensure_incident(conn, sha256=sha, md5=md5, size=len(data),
                                       media_type="image/jpeg", width=70, height=50,
                                       verdict_id=None, origin="serve")
    q.seal_upload(conn, object_id=oid, key=key, data=data, sha256=sha, md5=md5,
                  incident_id=iid, media_type="image/jpeg", extra_meta={"client": "127.0.0.1"})
    Path("upload:pict-rs").mkdir()  # a trap: nothing may be written here
    r = fsq(["release", str(iid), "--reason", "fp", "--passphrase-file", str(pw), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["restored"] == [] and res["uploads_not_restored"] == [key]
    assert list(Path("upload:pict-rs").rglob("*")) == []
    assert vault_files() == {}
    assert state.is_allowlisted(conn, sha)
    bad = fsq(["scan", "--all", "--dry-run", "--source", "upload:pict-rs"])
    assert bad.exit_code == 2 and "not a source URL" in bad.stderr


def test_key_change_passphrase_cli(setup, fsq, tmp_path):
    store, originals, pw, env = setup
    new = tmp_path / "new.txt"
    new.write_text("a brand new passphrase\n")
    r = fsq(["key", "change-passphrase", "--passphrase-file", str(pw), "--new-passphrase-file",
             str(new)])
    assert r.exit_code == 0, r.output
    fsq(["scan", "--all"], env=env)
    old = fsq(["vault", "verify", "--deep", "--passphrase-file", str(pw)])
    assert old.exit_code == 2 and "wrong passphrase" in old.stderr
    ok = fsq(["vault", "verify", "--deep", "--passphrase-file", str(new)])
    assert ok.exit_code == 0, ok.output
    log = json.loads(fsq(["audit", "log", "--json", "--limit", "500"]).stdout)
    assert "key.passphrase_changed" in [e["action"] for e in log]
    assert "a brand new passphrase" not in json.dumps(log)


def test_released_file_is_not_downloaded_again_on_every_pass(setup, fsq):
    """Release writes the file back with a new mtime; the next pass re-reads it once (and
    passes it: allowlisted), records the new mtime, and the pass after skips it unread."""
    store, originals, pw, env = setup
    fsq(["scan", "--all"], env=env)
    inc = json.loads(fsq(["incidents", "--json"]).stdout)[0]
    r = fsq(["release", str(inc["id"]), "--reason", "cartoon", "--passphrase-file", str(pw)])
    assert r.exit_code == 0, r.output
    first = json.loads(fsq(["scan", "--all", "--dry-run", "--json"], env=env).stdout)
    assert first["scanned"] == 1 and first["clean"] == 1  # the released file, once
    again = json.loads(fsq(["scan", "--all", "--dry-run", "--json"], env=env).stdout)
    assert again["scanned"] == 0 and again["skipped"] == again["listed"]
