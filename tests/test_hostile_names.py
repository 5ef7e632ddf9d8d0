"""Issue 11 (names and shapes): no name, rewrite or tree shape stops `fsq scan`.

Every case runs the real CLI as a separate process (``python -m fsq scan``) over a generated
local store and the tiny random-weight model; concept thresholds of -1 make every readable image
flagged, so "classified" is visible as "flagged".
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fsq.ledger.db import connect
from fsq.names import db_key, display_key, key_bytes, key_from_db, key_problem
from fsq.sources.base import ObjectChanged
from fsq.sources.local import MAX_DEPTH, LocalSource
from fsq.synth import make_store
from tests.fixtures.images import REPO, jpeg_bytes
from tests.fixtures.model import concepts_file

BAD_BYTES = b"aa/bad\xff\xfename.jpg"            # not UTF-8
BACKSLASH = "aa/back\\slash.jpg"
EVIL = "aa/evil\x1b]0;pwned\x07\x1b[2J\nrun 9: finished, flagged 0\u202e.jpg"


def scan(store: Path, tiny_model, concepts: Path, *extra: str, nofile: int | None = None,
         timeout: float = 240) -> subprocess.CompletedProcess:
    cfg, ckpt = tiny_model
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSQ_")}
    env.update({"PYTHONPATH": str(REPO), "FSQ_TESTONLY_WEAKEN_KDF": "1"})

    def limit_fds():  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run(
        [sys.executable, "-m", "fsq", "scan", "--all", "--source", f"file://{store}",
         "--model", str(cfg), "--pretrained", str(ckpt), "--concepts", str(concepts),
         "--workers", "2", *extra],
        env=env, capture_output=True, timeout=timeout,
        preexec_fn=limit_fds if nofile else None)


def objects(db="fsq.db") -> dict[str, tuple[str, str]]:
    conn = connect(db)
    try:
        return {r["key"]: (r["status"], r["reason"]) for r in conn.execute("SELECT * FROM objects")}
    finally:
        conn.close()


# --- the names module ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["plain/key.jpg", "ünïcode/ключ.png", "a\\b", "\\\\x41",
                                 os.fsdecode(b"x\xff\x80y"), "tab\there", "a\\x41\udcff",
                                 "lone\ud800surrogate"])
def test_db_key_is_reversible_and_plain_keys_unchanged(raw):
    stored = db_key(raw)
    assert key_from_db(stored) == raw
    stored.encode("utf-8")                       # SQLite and JSON can hold it
    if "\\" not in raw and not any(0xD800 <= ord(c) <= 0xDFFF for c in raw):
        assert stored == raw                     # keys written before keep their meaning


def test_display_key_escapes_everything_a_terminal_would_act_on():
    shown = display_key(EVIL)
    assert shown.isprintable() and "\x1b" not in shown and "\n" not in shown
    assert "\\x1b]0;pwned\\x07" in shown and "\\n" in shown and "\\u202e" in shown
    assert display_key(os.fsdecode(BAD_BYTES)) == "aa/bad\\xff\\xfename.jpg"
    assert display_key("ok/ключ.jpg") == "ok/ключ.jpg"


def test_key_problem_names_the_bytes():
    raw = os.fsdecode(BAD_BYTES)
    assert key_bytes(raw) == BAD_BYTES
    assert repr(BAD_BYTES) in key_problem(raw)
    assert "backslash" in key_problem(BACKSLASH)
    assert key_problem(EVIL) is None             # odd but representable: classified


# --- the real CLI -------------------------------------------------------------------------------

def test_unrepresentable_names_are_skipped_and_the_other_100_classified(tmp_path, tiny_model):
    """Acceptance: one invalid-UTF-8 name and one backslash name among 100 images: the scan
    exits 0, classifies the 100 and lists the two as skipped with reasons (exit 1 and exit 2
    before). A second pass does the same, and the human summary names both, escaped."""
    store = tmp_path / "store"
    keys = make_store(store, 100, seed=5, megapixels=(0.005, 0.01), formats=("jpeg", "png"))
    img = jpeg_bytes()
    (store / "aa").mkdir(exist_ok=True)
    with open(os.fsencode(store) + b"/" + BAD_BYTES, "wb") as fh:
        fh.write(img)
    (store / BACKSLASH).write_bytes(img)
    concepts = concepts_file(tmp_path, -1.0)

    p = scan(store, tiny_model, concepts, "--dry-run", "--json")
    assert p.returncode == 0, p.stderr.decode()
    s = json.loads(p.stdout)
    assert s["listed"] == 102 and s["skipped"] == 2
    assert s["scanned"] == s["flagged"] == 100 and s["errors"] == 0
    skipped = {x["key"]: x["reason"] for x in s["problems"] if x["status"] == "skipped"}
    bad_stored = db_key(os.fsdecode(BAD_BYTES))
    assert set(skipped) == {bad_stored, db_key(BACKSLASH)}
    assert repr(BAD_BYTES) in skipped[bad_stored] and "not valid UTF-8" in skipped[bad_stored]
    assert "backslash" in skipped[db_key(BACKSLASH)]

    rows = objects()
    assert rows[bad_stored][0] == rows[db_key(BACKSLASH)][0] == "skipped"
    assert key_bytes(key_from_db(bad_stored)) == BAD_BYTES      # the exact name, recoverable
    assert sum(1 for k in keys if rows[k][0] == "flagged") == 100

    p = scan(store, tiny_model, concepts, "--dry-run")            # human output, second pass
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode("utf-8")
    assert "skipped 102" in out                                   # 100 unchanged + 2 names
    assert "aa/bad\\xff\\xfename.jpg: name is not valid UTF-8" in out
    assert "aa/back\\\\slash.jpg: name contains a backslash" in out


def test_control_characters_in_names_are_escaped_in_human_output(tmp_path, tiny_model):
    store = tmp_path / "store"
    (store / "aa").mkdir(parents=True)
    (store / EVIL).write_bytes(jpeg_bytes())
    (store / "aa/ctrl\x1b[31m.png").write_bytes(b"not an image\n")   # unreadable: listed
    p = scan(store, tiny_model, concepts_file(tmp_path, -1.0), "--dry-run")
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode("utf-8")
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "aa/ctrl\\x1b[31m.png" in out
    assert "flagged 1" in out                          # the odd-but-valid name was classified
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSQ_")}
    env["PYTHONPATH"] = str(REPO)
    f = subprocess.run([sys.executable, "-m", "fsq", "flagged"], env=env, capture_output=True,
                       timeout=60)
    assert f.returncode == 0, f.stderr
    text = f.stdout.decode("utf-8")
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert display_key(EVIL) in text
    assert len(text.splitlines()) == 4                 # header, one row, blank, count line
    js = subprocess.run([sys.executable, "-m", "fsq", "flagged", "--json"], env=env,
                        capture_output=True, timeout=60)
    assert json.loads(js.stdout)[0]["key"] == EVIL     # scripts get the exact name


def test_file_rewritten_during_scan_is_an_error_not_a_failed_pass(tmp_path, tiny_model):
    """A flagged file rewritten between classification and the move: an error on that object
    (nothing removed, classified again next pass); the other images are quarantined and the
    scan exits 0 (exit 3 before)."""
    store = tmp_path / "store"
    keys = make_store(store, 4, seed=8, megapixels=(0.005, 0.01), formats=("jpeg",))
    hot = store / "hot" / "rewritten.jpg"
    hot.parent.mkdir()
    base = jpeg_bytes(64, 48, seed=3)
    hot.write_bytes(base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSQ_")}
    env.update({"PYTHONPATH": str(REPO), "FSQ_TESTONLY_WEAKEN_KDF": "1"})
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple\n")
    subprocess.run([sys.executable, "-m", "fsq", "init", "--passphrase-file", str(pw)],
                   env=env, check=True, capture_output=True, timeout=120)
    stop = threading.Event()

    def rewrite():  # a new version (atomic rename) every millisecond: each read differs
        n = 0
        tmp = tmp_path / "rewrite.tmp"   # outside the store, same file system
        while not stop.is_set():
            n += 1
            tmp.write_bytes(base + b"version %d" % n)
            os.replace(tmp, hot)
            time.sleep(0.001)

    t = threading.Thread(target=rewrite, daemon=True)
    t.start()
    try:
        p = scan(store, tiny_model, concepts_file(tmp_path, -1.0), "--json")
    finally:
        stop.set()
        t.join(10)
    assert p.returncode == 0, p.stderr.decode()
    s = json.loads(p.stdout)
    rows = objects()
    assert rows["hot/rewritten.jpg"][0] == "error", rows["hot/rewritten.jpg"]
    assert "changed" in rows["hot/rewritten.jpg"][1]
    assert s["errors"] == 1 and s["quarantined"] == 4 and s["quarantine_failed"] == 0
    assert all(rows[k][0] == "quarantined" for k in keys)
    assert hot.exists()                                  # never removed


def test_file_written_during_read_is_an_object_error(tmp_path, monkeypatch):
    """LocalSource.read sees size/mtime move during the read: ObjectChanged (retried next
    pass), never a mix of two versions returned as the file. The writer is made to strike
    between two chunks of the read, every time."""
    p = tmp_path / "grow.bin"
    p.write_bytes(os.urandom(3 * 1024 * 1024))
    real_read = os.read
    calls = []

    def read_then_append(fd, n):
        data = real_read(fd, n)
        calls.append(len(data))
        if len(calls) == 1:
            with open(p, "ab") as fh:        # another process appends meanwhile
                fh.write(b"appended")
        return data

    src = LocalSource(tmp_path)
    monkeypatch.setattr(os, "read", read_then_append)
    with pytest.raises(ObjectChanged, match="changed while it was being read"):
        src.read("grow.bin")
    monkeypatch.setattr(os, "read", real_read)
    assert src.read("grow.bin").endswith(b"appended")   # unchanged since: read as usual


def test_1100_level_tree_does_not_exhaust_file_descriptors(tmp_path, tiny_model):
    """A chain of 1,100 nested directories with only 256 fds allowed: the scan exits 0 (exit
    3 'Too many open files' before), classifies the images above the limit and records the
    first too-deep directory as skipped."""
    store = tmp_path / "store"
    (store / "aa" / "bb").mkdir(parents=True)
    (store / "aa" / "bb" / "shallow.jpg").write_bytes(jpeg_bytes())
    fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(1100):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if i == 10:
                with open(os.open("mid.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd),
                          "wb") as fh:
                    fh.write(jpeg_bytes(seed=7))
        with open(os.open("bottom.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd),
                  "wb") as fh:
            fh.write(jpeg_bytes(seed=9))
    finally:
        os.close(fd)
    try:
        p = scan(store, tiny_model, concepts_file(tmp_path, -1.0), "--dry-run", "--json",
                 nofile=256)
        assert p.returncode == 0, p.stderr.decode()
        s = json.loads(p.stdout)
        assert s["flagged"] == 2 and s["skipped"] == 1
        [deep] = [x for x in s["problems"] if x["status"] == "skipped"]
        assert deep["key"] == "/".join(["d"] * MAX_DEPTH)
        assert "nested deeper than" in deep["reason"]
        assert objects()[deep["key"]][0] == "skipped"
    finally:
        _remove_chain(store)


def _remove_chain(top: Path) -> None:
    """Remove the nested 'd' chain one level at a time (shutil.rmtree recurses per level and
    hits Python's recursion limit at this depth; so would pytest's tmp_path cleanup)."""
    hold = top.parent / "unnest"
    while (top / "d").exists():
        os.rename(top / "d", hold)
        for name in os.listdir(hold):
            if name != "d":
                os.unlink(hold / name)
        if (hold / "d").exists():
            os.rename(hold / "d", top / "d")
        os.rmdir(hold)
    shutil.rmtree(top)
