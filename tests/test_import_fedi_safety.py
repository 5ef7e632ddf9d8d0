"""`fsq import fedi-safety`: a lemmy_safety.db built here from fedi-safety's schema
(``images(id, filename UNIQUE, nsfw, csam, created)``) imports as history, never as findings;
importing twice changes nothing. Real CLI; local store and a real S3 endpoint (moto server)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fsq.ledger.db import connect
from tests.fixtures.images import jpeg_bytes, png_bytes
from tests.fixtures.model import concepts_file

PASS = "correct horse battery staple"


def legacy_db(path: Path, rows: list[tuple]) -> Path:
    """fedi-safety's table exactly as its SQLAlchemy model creates it in SQLite."""
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE images (id INTEGER NOT NULL, filename VARCHAR NOT NULL, "
              "nsfw BOOLEAN, csam BOOLEAN, created DATETIME NOT NULL, PRIMARY KEY (id))")
    c.execute("CREATE UNIQUE INDEX ix_images_filename ON images (filename)")
    c.executemany("INSERT INTO images (filename, nsfw, csam, created) VALUES (?,?,?,?)", rows)
    c.commit()
    c.close()
    return path


def init(fsq_proc, tmp_path, env=None):
    (tmp_path / "pw").write_text(PASS)
    r = fsq_proc(["init", "--passphrase-file", str(tmp_path / "pw")], env=env)
    assert r.returncode == 0, r.stderr


def snapshot(db="fsq.db"):
    c = connect(db)
    try:
        return ([tuple(r) for r in c.execute("SELECT tool, source, key, legacy_id, nsfw, csam, "
                                             "recorded_at, outcome, note FROM legacy_flags "
                                             "ORDER BY key")],
                c.execute("SELECT COUNT(*) FROM audit").fetchone()[0],
                c.execute("SELECT COUNT(*) FROM objects").fetchone()[0],
                c.execute("SELECT COUNT(*) FROM incidents").fetchone()[0])
    finally:
        c.close()


def test_local_store_import_outcomes_and_idempotence(tmp_path, fsq_proc, tiny_model):
    store = tmp_path / "files"
    (store / "aa").mkdir(parents=True)
    (store / "aa" / "present-clean.jpeg").write_bytes(jpeg_bytes(40, 30, seed=1))
    (store / "aa" / "present-flagged.png").write_bytes(png_bytes(41, 31, seed=2))  # dry run
    (store / "aa" / "unreadable.webp").write_bytes(b"this is not an image at all")
    legacy = legacy_db(tmp_path / "lemmy_safety.db", [
        ("aa/present-clean.jpeg", None, False, "2024-01-05 10:00:00.123456"),
        ("aa/present-flagged.png", None, True, "2024-01-06 11:00:00"),
        ("aa/unreadable.webp", None, True, "2024-01-07 12:00:00"),   # unreadable -> "CSAM"
        ("bb/deleted-by-it.jpeg", None, True, "2024-02-01 08:30:00"),
        ("bb/gone-clean.jpeg", None, False, "2024-02-02 09:00:00"),
        ("../../etc/passwd", None, True, "2024-02-03 09:00:00"),       # hostile row
    ])
    before = legacy.read_bytes()
    init(fsq_proc, tmp_path)
    src = f"file://{store}"
    r = fsq_proc(["import", "fedi-safety", str(legacy), "--source", src, "--json"])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["imported"], res["queued"], res["removed"], res["gone"], res["invalid"],
            res["already_imported"], res["legacy_csam_flags"]) == (6, 3, 1, 1, 1, 0, 4)
    assert legacy.read_bytes() == before  # only read
    flags, audits, objects, incidents = snapshot()
    by_key = {f[2]: f for f in flags}
    assert by_key["aa/present-flagged.png"][7] == "queued"
    assert "legacy flag, unverified" in by_key["aa/unreadable.webp"][8]
    assert "legacy flag" not in by_key["aa/present-clean.jpeg"][8]
    assert by_key["bb/deleted-by-it.jpeg"][7] == "removed"
    assert by_key["bb/deleted-by-it.jpeg"][6] == "2024-02-01T08:30:00.000000Z"
    assert by_key["../../etc/passwd"][7] == "invalid"
    assert incidents == 0 and objects == 0  # history, never findings

    log = json.loads(fsq_proc(["audit", "log", "--json", "--limit", "100"]).stdout)
    removed = [e for e in log if e["action"] == "legacy.removed_before_fsq"]
    assert len(removed) == 1
    d = removed[0]["details"]
    assert d["key"] == "bb/deleted-by-it.jpeg" and d["recorded_at"].startswith("2024-02-01")
    assert "removed by fedi-safety before fsq" in d["note"] and "unverified" in d["note"]
    gone = [e for e in log if e["action"] == "legacy.gone_before_fsq"]
    assert [e["details"]["key"] for e in gone] == ["bb/gone-clean.jpeg"]
    assert sum(e["action"] == "legacy.imported" for e in log) == 1

    # twice: nothing changes, not even the audit log
    r2 = fsq_proc(["import", "fedi-safety", str(legacy), "--source", src])
    assert r2.returncode == 0, r2.stderr
    assert "0 row(s) imported, 6 already imported" in r2.stdout
    assert snapshot() == (flags, audits, objects, incidents)

    # the queued files are decided by a normal scan (here a concept set that flags every
    # readable file); the old flag decides nothing: the unreadable "CSAM" is just unreadable
    cfg, ckpt = tiny_model
    s = fsq_proc(["scan", "--all", "--dry-run", "--source", src, "--model", str(cfg),
                  "--pretrained", str(ckpt), "--concepts", str(concepts_file(tmp_path, -1.0)),
                  "--json"])
    assert s.returncode == 0, s.stderr
    summ = json.loads(s.stdout)
    assert summ["scanned"] == 3 and summ["flagged"] == 2 and summ["unreadable"] == 1
    # the old flag is shown beside fsq's own finding, as a note
    shown = {}
    for inc in json.loads(fsq_proc(["incidents", "--json"]).stdout):
        d = json.loads(fsq_proc(["incident", "show", str(inc["id"]), "--json"]).stdout)
        shown[d["storage_keys"][0]["key"]] = d["legacy_notes"]
    assert "unverified" in shown["aa/present-flagged.png"][0]["note"]
    assert shown["aa/present-clean.jpeg"][0]["csam"] == 0
    text = fsq_proc(["incident", "show", "1"]).stdout + fsq_proc(["incident", "show", "2"]).stdout
    assert "fedi-safety (imported, 2024-01-06" in text
    assert fsq_proc(["audit", "verify"]).returncode == 0


def test_s3_store_keys_and_prefix(tmp_path, fsq_proc, s3):
    bucket = s3.make_bucket()
    s3.client.put_object(Bucket=bucket, Key="files/cc/present.jpeg", Body=jpeg_bytes(30, 20))
    legacy = legacy_db(tmp_path / "lemmy_safety.db", [
        ("files/cc/present.jpeg", None, False, "2024-03-01 00:00:00"),  # full object key
        ("cc/also-gone.jpeg", None, True, "2024-03-02 00:00:00"),       # relative to prefix
    ])
    init(fsq_proc, tmp_path, env=s3.env)
    r = fsq_proc(["import", "fedi-safety", str(legacy), "--source", f"s3://{bucket}/files",
                  "--json"], env=s3.env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["queued"], res["removed"]) == (1, 1), res
    flags, audits, *_ = snapshot()
    r = fsq_proc(["import", "fedi-safety", str(legacy), "--source", f"s3://{bucket}/files"],
                 env=s3.env)
    assert r.returncode == 0 and snapshot()[:2] == (flags, audits)


@pytest.mark.parametrize("content", [b"", b"not sqlite", None], ids=["empty", "text", "other"])
def test_not_a_fedi_safety_db_is_refused(tmp_path, fsq_proc, content):
    init(fsq_proc, tmp_path)
    p = tmp_path / "x.db"
    if content is None:
        c = sqlite3.connect(p)
        c.execute("CREATE TABLE other (id INTEGER)")
        c.commit()
        c.close()
    else:
        p.write_bytes(content)
    r = fsq_proc(["import", "fedi-safety", str(p), "--source", f"file://{tmp_path}"])
    assert r.returncode == 2 and "not a fedi-safety database" in r.stderr, r.stderr
    r = fsq_proc(["import", "fedi-safety", str(tmp_path / "missing.db"), "--source",
                  f"file://{tmp_path}"])
    assert r.returncode == 2 and "does not exist" in r.stderr
