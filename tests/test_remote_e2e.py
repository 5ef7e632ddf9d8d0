"""Issue 6 end to end through the real CLI: scan, quarantine, release and purge over S3 (moto
server) and SFTP (OpenSSH sshd) sources and into directory and S3 vaults; storage outages in the
middle of a scan and of a quarantine move; the 2,000-object rescan that must not download.

Images are synthetic (fsq.synth); "flagged" comes from a known-hash list, so no model weights
are needed except where a test says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from fsq.ledger.db import connect
from fsq.quarantine.keys import load_private_key
from fsq.quarantine.move import UNFINISHED, blob_name, key_name
from fsq.quarantine.release import decrypt_entry
from fsq.quarantine.store import open_vault
from fsq.secrets import Secret
from fsq.synth import make_store
from tests.fixtures.images import REPO, run_cli

PASS = "correct horse battery staple"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@dataclass
class Remote:
    """Where the images live and where the vault is, as the CLI is told (env) and as the test
    inspects them (behind fsq's back)."""

    source_url: str
    vault_url: str
    env: dict[str, str]
    plant: Callable[[str, bytes], None]
    raw: Callable[[str], bytes | None]
    versions: Callable[[str], int] = lambda key: 0   # S3 versions + markers left of a key
    vault_versions: Callable[[], int] = lambda: 0     # S3 vault: versions of any object
    settings: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def vault(self):
        return open_vault(self.vault_url, self.settings)


def make_remote(request, source: str, vault: str, tmp_path: Path, s3_fixture: str = "s3"
                ) -> Remote:
    from fsq.config import load_settings

    env: dict[str, str] = {}
    overrides: dict[str, Any] = {}
    rem: dict[str, Any] = {}
    ep = None
    if source == "s3" or vault == "s3":
        ep = request.getfixturevalue(s3_fixture)
        env.update(ep.env)
        overrides.update(s3_endpoint=ep.url, s3_path_style=True)
    if source == "local":
        root = tmp_path / "pictrs" / "files"
        root.mkdir(parents=True)
        rem["source_url"] = f"file://{root}"
        rem["plant"], rem["raw"] = _disk(root)
    elif source == "sftp":
        sshd = request.getfixturevalue("sshd")
        env.update(sshd.env)
        overrides.update(sftp_key_file=env["FSQ_SFTP_KEY_FILE"],
                         sftp_known_hosts=env["FSQ_SFTP_KNOWN_HOSTS"])
        rem["source_url"] = sshd.url()
        rem["plant"], rem["raw"] = _disk(sshd.root)
        rem["extra"] = {"sshd": sshd}
    else:
        bucket = ep.make_bucket(versioned=True)  # a versioned bucket: no copy may stay behind
        c = ep.client

        def plant(key: str, data: bytes) -> None:
            c.put_object(Bucket=bucket, Key="files/" + key, Body=data)

        def raw(key: str) -> bytes | None:
            try:
                return c.get_object(Bucket=bucket, Key="files/" + key)["Body"].read()
            except c.exceptions.NoSuchKey:
                return None

        rem.update(source_url=f"s3://{bucket}/files", plant=plant, raw=raw,
                   versions=lambda key: len(ep.all_versions(bucket, "files/" + key)),
                   extra={"s3": ep, "bucket": bucket})
    if vault == "s3":
        vb = ep.make_bucket(object_lock=True)
        rem["vault_url"] = f"s3://{vb}/vault"
        rem["vault_versions"] = lambda: len(ep.all_versions(vb))
    else:
        rem["vault_url"] = f"file://{tmp_path / 'work' / 'quarantine'}"
    env.update({"FSQ_SOURCE": rem["source_url"], "FSQ_VAULT": rem["vault_url"]})
    settings = load_settings(environ={}, cwd=Path("/nonexistent-fsq-test-dir")).replace(
        vault=rem["vault_url"], **overrides)
    return Remote(env=env, settings=settings, **rem)


def _disk(root: Path):
    def plant(key: str, data: bytes) -> None:
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def raw(key: str) -> bytes | None:
        p = root / key
        return p.read_bytes() if p.is_file() else None

    return plant, raw


def ok(args: list[str], env: dict[str, str], code: int = 0):
    r = run_cli(args, env=env)
    assert r.exit_code == code, (args, r.exit_code, r.output)
    return r


def js(args: list[str], env: dict[str, str], code: int = 0):
    return json.loads(ok([*args, "--json"], env, code).stdout)


def images(tmp_path: Path, n: int, seed: int = 11) -> dict[str, bytes]:
    staging = tmp_path / "staging"
    keys = make_store(staging, n, seed=seed, megapixels=(0.01, 0.03))
    return {k: (staging / k).read_bytes() for k in keys}


def exactly_once(rem: Remote, originals: dict[str, bytes]) -> dict[str, str]:
    """Each original is in the source or in the vault - exactly once, bytes intact - and the
    vault holds nothing but the live entries' objects."""
    conn = connect("fsq.db")
    assert conn.execute(f"SELECT COUNT(*) FROM vault_entries WHERE state IN "
                        f"({','.join('?' * len(UNFINISHED))})", UNFINISHED).fetchone()[0] == 0
    vault = rem.vault()
    key = load_private_key("keys/vault.key", Secret(PASS))
    in_vault: dict[str, str] = {}
    for e in conn.execute("SELECT * FROM vault_entries WHERE state='done'"):
        _, content = decrypt_entry(vault, e, key)
        assert content == originals[e["key"]], e["key"]
        assert e["key"] not in in_vault, f"two vault copies of {e['key']}"
        in_vault[e["key"]] = e["id"]
    where = {}
    for k, data in originals.items():
        got = rem.raw(k)
        assert (got is not None) != (k in in_vault), \
            f"{k}: in source={got is not None}, in vault={k in in_vault}"
        if got is not None:
            assert got == data
        else:
            assert rem.versions(k) == 0, f"{k}: an old version stayed in the bucket"
        where[k] = "source" if got is not None else "vault"
    assert set(vault.names()) == {n for e in in_vault.values()
                                  for n in (blob_name(e), key_name(e))}
    conn.close()
    return where


# -- scan, quarantine, release, purge ------------------------------------------------------------

COMBOS = [
    pytest.param("s3", "dir", id="s3-source+dir-vault"),
    pytest.param("sftp", "dir", id="sftp-source+dir-vault", marks=pytest.mark.sshd),
    pytest.param("local", "s3", id="local-source+s3-vault"),
    pytest.param("s3", "s3", id="s3-source+s3-vault"),
    pytest.param("sftp", "s3", id="sftp-source+s3-vault", marks=pytest.mark.sshd),
]


@pytest.mark.parametrize("source,vault", COMBOS)
def test_scan_quarantine_release_purge(request, source, vault, tmp_path, tiny_model,
                                       monkeypatch):
    from tests.fixtures.model import concepts_file

    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")
    rem = make_remote(request, source, vault, tmp_path)
    originals = images(tmp_path, 5)
    for k, v in originals.items():
        rem.plant(k, v)
    keys = sorted(originals)
    bad = keys[:3]
    known = tmp_path / "known.txt"
    known.write_text("".join(sha(originals[k]) + "\n" for k in bad))
    (tmp_path / "pass").write_text(PASS + "\n")
    cfg, ckpt = tiny_model
    env = {**rem.env, "FSQ_HASH_LISTS": str(known), "FSQ_MODEL": str(cfg),
           "FSQ_PRETRAINED": str(ckpt), "FSQ_CONCEPTS": str(concepts_file(tmp_path, 1.5))}
    ok(["init", "--passphrase-file", str(tmp_path / "pass")], env)

    s = js(["scan", "--all"], env)
    assert (s["flagged"], s["quarantined"], s["clean"]) == (3, 3, 2), s
    where = exactly_once(rem, originals)
    assert where == {k: ("vault" if k in bad else "source") for k in keys}
    assert len(list(rem.vault().names())) == 6

    again = js(["scan", "--all"], env)
    assert (again["scanned"], again["skipped"], again["quarantined"]) == (0, 2, 0), again

    incidents = {i["sha256"]: i for i in js(["incidents"], env)}
    released, purged = bad[0], bad[1]
    rel = js(["release", str(incidents[sha(originals[released])]["id"]), "--reason",
              "false positive", "--passphrase-file", str(tmp_path / "pass")], env)
    assert rel["restored"] == [released]
    assert rem.raw(released) == originals[released]

    iid = incidents[sha(originals[purged])]["id"]
    ok(["clear", str(iid), "--by", "A. Admin", "--reason", "reported, year over",
        "--passphrase-file", str(tmp_path / "pass")], env)
    res = js(["purge", "--after-clearance", "--passphrase-file", str(tmp_path / "pass")], env)
    assert res["purged"] == [iid], res
    del originals[purged]
    where = exactly_once(rem, originals)
    assert where[released] == "source" and where[bad[2]] == "vault"
    if vault == "s3":
        # crypto-shredding is real: no version of the purged entry's objects is left
        assert rem.vault_versions() == 2  # only the remaining entry's .key and .blob
    ok(["vault", "verify"], env)
    ok(["audit", "verify"], env)


# -- outages through the CLI ---------------------------------------------------------------------

def _proc(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env)
    return subprocess.Popen([sys.executable, "-m", "fsq", *args], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _count(sql: str) -> int:
    try:
        c = sqlite3.connect("file:fsq.db?mode=ro", uri=True, timeout=1)
        try:
            return int(c.execute(sql).fetchone()[0])
        finally:
            c.close()
    except sqlite3.Error:
        return 0


def _interrupt(p: subprocess.Popen, sql: str, at_least: int, stop: Callable[[], None]
               ) -> tuple[int, str, str]:
    """Stop the server once ``sql`` counts ``at_least`` rows (the run is under way)."""
    deadline = time.monotonic() + 120
    while _count(sql) < at_least:
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"fsq ended (exit {p.returncode}) before the outage could be "
                        f"injected:\n{err[-2000:]}")
        if time.monotonic() > deadline:
            p.kill()
            pytest.fail("the run made no progress")
        time.sleep(0.01)
    stop()
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def _outage_remote(request, kind: str, tmp_path: Path) -> tuple[Remote, Callable, Callable]:
    if kind == "s3":
        rem = make_remote(request, "s3", "dir", tmp_path, s3_fixture="s3_process")
        ep = rem.extra["s3"]
        return rem, ep.stop, ep.start
    rem = make_remote(request, "sftp", "dir", tmp_path)
    sshd = rem.extra["sshd"]
    return rem, sshd.stop, sshd.start


def _blobs(n: int) -> dict[str, bytes]:
    """n distinct small objects (not images: they end 'unreadable' or flagged by hash)."""
    return {f"{i % 10:02d}/{i // 10:02d}/obj{i:04d}.webp": b"not an image %06d " % i * 20
            for i in range(n)}


OUTAGE_KINDS = [pytest.param("s3", id="s3"),
                pytest.param("sftp", id="sftp", marks=pytest.mark.sshd)]


@pytest.mark.parametrize("kind", OUTAGE_KINDS)
def test_outage_in_the_middle_of_a_scan(request, kind, tmp_path):
    rem, stop, start = _outage_remote(request, kind, tmp_path)
    originals = _blobs(150)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: rem.plant(*kv), originals.items()))
    env = dict(rem.env)
    p = _proc(["scan", "--all", "--dry-run", "--json"], env)
    code, out, err = _interrupt(p, "SELECT COUNT(*) FROM objects WHERE status != 'pending'",
                                20, stop)
    lines = [ln for ln in err.splitlines() if ln.startswith("fsq: ")]
    assert code == 3, err
    assert len(lines) == 1 and ("unreachable" in lines[0] or "connection" in lines[0]), err
    assert "Traceback" not in err and "testing" not in err
    assert _count("SELECT COUNT(*) FROM scan_runs WHERE status='failed'") == 1
    start()
    r = _proc(["scan", "--all", "--dry-run", "--json"], env)
    out, err = r.communicate(timeout=120)
    assert r.returncode == 0, err
    s = json.loads(out)
    assert s["listed"] == 150 and s["scanned"] + s["skipped"] == 150
    assert s["status"] == "finished"
    conn = connect("fsq.db")
    rows = conn.execute("SELECT key, status FROM objects").fetchall()
    assert sorted(r["key"] for r in rows) == sorted(originals)  # each once, none lost
    assert {r["status"] for r in rows} == {"unreadable"}
    assert all(rem.raw(k) == v for k, v in originals.items())  # a dry run moves nothing


@pytest.mark.parametrize("kind", OUTAGE_KINDS)
def test_outage_in_the_middle_of_quarantine_moves(request, kind, tmp_path):
    rem, stop, start = _outage_remote(request, kind, tmp_path)
    originals = _blobs(30)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: rem.plant(*kv), originals.items()))
    known = tmp_path / "known.txt"
    known.write_text("".join(sha(v) + "\n" for v in originals.values()))
    (tmp_path / "pass").write_text(PASS + "\n")
    env = {**rem.env, "FSQ_HASH_LISTS": str(known)}
    init = _proc(["init", "--passphrase-file", str(tmp_path / "pass")], env)
    assert init.wait(60) == 0, init.communicate()[1]

    p = _proc(["scan", "--all", "--json"], env)
    code, out, err = _interrupt(p, "SELECT COUNT(*) FROM vault_entries", 3, stop)
    lines = [ln for ln in err.splitlines() if ln.startswith("fsq: ")]
    assert code == 3, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    done_before = _count("SELECT COUNT(*) FROM vault_entries WHERE state='done'")
    assert 0 < done_before < len(originals)

    start()
    r = _proc(["scan", "--all", "--json"], env)
    out, err = r.communicate(timeout=180)
    assert r.returncode == 0, err
    where = exactly_once(rem, originals)
    assert set(where.values()) == {"vault"}
    conn = connect("fsq.db")
    assert tuple(conn.execute("SELECT COUNT(DISTINCT key), COUNT(*) FROM vault_entries "
                              "WHERE state='done'").fetchone()) == (30, 30)
    ok(["audit", "verify"], env)


# -- host keys through the CLI -------------------------------------------------------------------

@pytest.mark.sshd
def test_cli_refuses_changed_host_key(sshd, tmp_path):
    from tests.fixtures.sshd import write_private_key

    impostor = write_private_key(tmp_path / "impostor", "ed25519")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{sshd.host_name} {impostor}\n")
    (sshd.root / "a.jpg").write_bytes(b"x")
    env = {**sshd.env, "FSQ_SFTP_KNOWN_HOSTS": str(kh), "FSQ_SFTP_ACCEPT_NEW_HOST_KEY": "true"}
    r = run_cli(["scan", "--all", "--dry-run", "--source", sshd.url()], env=env)
    assert r.exit_code == 4, r.output
    assert "HOST KEY OF" in r.stderr and "CHANGED" in r.stderr
    assert not Path("fsq.db").exists() or _count("SELECT COUNT(*) FROM objects") == 0
    unknown = tmp_path / "empty_known_hosts"
    unknown.write_text("")
    r = run_cli(["scan", "--all", "--dry-run", "--source", sshd.url()],
                env={**sshd.env, "FSQ_SFTP_KNOWN_HOSTS": str(unknown)})
    assert r.exit_code == 2 and "SHA256:" in r.stderr and "accept-new-host-key" in r.stderr


# -- 2,000 objects: the second pass downloads nothing ---------------------------------------------

@pytest.mark.slow
def test_rescan_of_2000_object_bucket_downloads_nothing(s3, tmp_path):
    bucket = s3.make_bucket()
    c = s3.client
    objs = _blobs(2000)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: c.put_object(Bucket=bucket, Key="files/" + kv[0], Body=kv[1]),
                      objs.items()))
    env = {**s3.env, "FSQ_SOURCE": f"s3://{bucket}/files"}
    s3.start_counting()
    first = js(["scan", "--all", "--dry-run"], env)
    assert first["listed"] == 2000 and first["scanned"] == 2000
    assert s3.count_gets(bucket) == 2000  # the honest baseline: every object fetched once
    s3.start_counting()
    second = js(["scan", "--all", "--dry-run"], env)
    reqs = s3.requests()
    s3.stop_counting()
    assert second["listed"] == 2000 and second["skipped"] == 2000 and second["scanned"] == 0
    assert s3.count_gets(bucket) == 0
    lists = [r for r in reqs if r["method"] == "GET" and "list-type=2" in r["query"]]
    assert len(lists) == 2  # 1000 keys per page
    assert not [r for r in reqs if r["method"] in ("PUT", "DELETE", "POST")]


# -- the daemon cursor never misses an object written during a listing -----------------------------

def test_daemon_cursor_catches_objects_written_during_a_listing(s3, tmp_path):
    """S3 lists keys in order: objects written behind the listing's position are not in this
    pass. The next daemon pass must pick them up (cursor = listing *start*, minus a margin)."""
    from fsq.ledger.db import connect as db_connect
    from fsq.pipeline import ScanConfig, Scanner
    from fsq.sources.s3 import S3Source

    bucket = s3.make_bucket()
    c = s3.client
    for k, v in _blobs(60).items():
        c.put_object(Bucket=bucket, Key="files/" + k, Body=v)
    src = S3Source.from_url(f"s3://{bucket}/files", s3.settings())
    src.page_size = 20
    conn = db_connect(tmp_path / "state.db")
    late = {f"00/00/late{i}.webp": b"written during the listing %d" % i for i in range(3)}

    def progress(summary, total):
        if summary.listed == 30 and total is None and not any(
                s3.keys(bucket, "files/00/00/late")):
            for k, v in late.items():  # sorts before everything already listed
                c.put_object(Bucket=bucket, Key="files/" + k, Body=v)

    def no_model():
        raise AssertionError("nothing here needs the model")

    cfg = ScanConfig(dry_run=True, mode="daemon")
    first = Scanner(conn, src, cfg, classifier_factory=no_model, progress=progress).run_pass()
    assert first.status == "finished" and first.listed == 60 and first.scanned == 60
    assert len(s3.keys(bucket, "files/00/00/late")) == 3  # written, but behind the listing

    s3.start_counting()
    second = Scanner(conn, src, cfg, classifier_factory=no_model).run_pass()
    assert second.status == "finished"
    assert second.scanned == 3, second  # exactly the late objects: fetched and recorded
    gets = sorted(r["key"] for r in s3.requests() if r["method"] == "GET" and r["key"])
    assert gets == sorted("files/" + k for k in late)
    rows = {r["key"]: r["status"] for r in conn.execute("SELECT key, status FROM objects")}
    assert all(rows[k] == "unreadable" for k in late) and len(rows) == 63
    src.close()
    conn.close()
