"""Changing a decision setting (concept set, severity, model) is not silently ignored for files
already scanned: every model verdict carries the digest of the settings that decided it, a scan
counts the objects decided under other settings, and --rescan-stale re-decides exactly those."""

from __future__ import annotations

import json

import pytest

from fsq.ledger.db import connect
from tests.fixtures.images import jpeg_bytes, png_bytes
from tests.fixtures.model import concepts_file


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    for i in range(4):
        (root / f"0{i}").mkdir(parents=True)
        (root / f"0{i}" / f"i{i}.jpeg").write_bytes(jpeg_bytes(40 + i, 30, seed=i))
    return root


def scan(fsq_proc, store, tiny_model, concepts, *extra):
    cfg, ckpt = tiny_model
    p = fsq_proc(["scan", "--all", "--dry-run", "--source", f"file://{store}", "--model",
                  str(cfg), "--pretrained", str(ckpt), "--concepts", str(concepts), "--json",
                  *extra])
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr


def verdicts():
    c = connect("fsq.db")
    try:
        return {r["key"]: (r["verdict_id"], r["settings_digest"]) for r in c.execute(
            "SELECT o.key, o.verdict_id, v.settings_digest FROM objects o "
            "JOIN verdicts v ON v.id = o.verdict_id")}
    finally:
        c.close()


def test_settings_change_is_reported_and_rescan_stale_redecides_exactly_those(
        store, tiny_model, tmp_path, fsq_proc):
    never = concepts_file(tmp_path, 2.0)
    s, err = scan(fsq_proc, store, tiny_model, never)
    assert s["classified"] == 4 and s["stale"] == 0 and "rescan-stale" not in err
    first = verdicts()
    assert len({d for _, d in first.values()}) == 1 and None not in {d for _, d in first.values()}

    # same settings again: nothing stale, nothing re-read
    s, err = scan(fsq_proc, store, tiny_model, never)
    assert s["stale"] == 0 and s["skipped"] == 4 and "rescan-stale" not in err

    # another severity: the 4 objects are stale, said so, and left alone without the flag
    s, err = scan(fsq_proc, store, tiny_model, never, "--severity", "strict")
    assert s["stale"] == 4 and s["stale_changed"] == ["severity"] and s["classified"] == 0
    assert "4 object(s) were decided under another severity" in err
    assert "--rescan-stale" in err
    assert verdicts() == first

    # a new file and a changed file meanwhile: normal scanning handles those; --rescan-stale
    # adds exactly the stale ones (4), no more
    (store / "09").mkdir()
    (store / "09" / "new.png").write_bytes(png_bytes(33, 22, seed=9))
    s, _ = scan(fsq_proc, store, tiny_model, never, "--severity", "strict", "--rescan-stale")
    assert s["stale"] == 4 and s["classified"] == 5 and s["skipped"] == 0
    after = verdicts()
    strict = after["09/new.png"][1]
    assert strict != first["00/i0.jpeg"][1]
    assert all(d == strict for _, d in after.values())
    # and afterwards nothing is stale under the strict settings...
    s, err = scan(fsq_proc, store, tiny_model, never, "--severity", "strict")
    assert s["stale"] == 0 and s["skipped"] == 5 and "rescan-stale" not in err
    # ...while going back to the first settings makes all 5 stale (another concept set too)
    other = concepts_file(tmp_path, 1.5)
    s, err = scan(fsq_proc, store, tiny_model, other)
    assert s["stale"] == 5 and set(s["stale_changed"]) == {"concept set", "severity"}


def test_identical_content_is_not_reused_across_settings(store, tiny_model, tmp_path, fsq_proc):
    """A new key with the bytes of an already-decided file reuses that verdict only if it was
    decided under the current settings."""
    never = concepts_file(tmp_path, 2.0)
    scan(fsq_proc, store, tiny_model, never)
    (store / "10").mkdir()
    (store / "10" / "copy-same.jpeg").write_bytes((store / "00" / "i0.jpeg").read_bytes())
    s, _ = scan(fsq_proc, store, tiny_model, never)
    assert s["reused"] == 1 and s["classified"] == 0
    (store / "10" / "copy-strict.jpeg").write_bytes((store / "00" / "i0.jpeg").read_bytes())
    s, _ = scan(fsq_proc, store, tiny_model, never, "--severity", "strict")
    assert s["reused"] == 0 and s["classified"] == 1
    v = verdicts()
    assert v["10/copy-same.jpeg"][1] == v["00/i0.jpeg"][1]  # a reuse keeps its origin's tag
    assert v["10/copy-strict.jpeg"][1] != v["00/i0.jpeg"][1]


def test_verdicts_from_before_digests_compare_on_recorded_columns(store, tiny_model, tmp_path,
                                                                  fsq_proc):
    never = concepts_file(tmp_path, 2.0)
    scan(fsq_proc, store, tiny_model, never)
    c = connect("fsq.db")
    c.execute("UPDATE verdicts SET settings_digest=NULL")  # as written by an older fsq
    c.close()
    s, _ = scan(fsq_proc, store, tiny_model, never)
    assert s["stale"] == 0
    s, _ = scan(fsq_proc, store, tiny_model, never, "--severity", "lenient")
    assert s["stale"] == 4 and s["stale_changed"] == ["severity"]
