"""Progress and log lines of `fsq scan` (real CLI, not a terminal): the model load is
announced, no ETA is invented from a partial listing, a second full pass estimates from the
first, and daemon summaries carry a UTC timestamp."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from fsq.cli.common import Progress
from fsq.pipeline import Summary
from tests.fixtures.images import REPO, jpeg_bytes
from tests.fixtures.model import concepts_file


class _Stream:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_no_eta_from_a_partial_listing_and_an_estimate_with_a_previous_pass():
    s = Summary(listed=50, scanned=10)
    p = Progress("scan", stream=_Stream())
    p.t0 -= 10
    p.last -= 10
    p(s, None)
    assert "ETA" not in p.stream.text and "10 done, 50 listed so far" in p.stream.text
    q = Progress("scan", stream=_Stream(), expected=1000)
    q.t0 -= 10  # 1 object/s
    q.last -= 10
    q(s, None)
    assert "10/~1000 (1%" in q.stream.text and "ETA ~16m30s" in q.stream.text
    q(Summary(listed=1000, scanned=1000), 1000)
    assert q.stream.text.endswith("\n") and "scan: 1000/1000, 0 flagged" in q.stream.text


def test_model_load_announced_and_daemon_lines_timestamped(tmp_path, tiny_model, fsq_proc):
    store = tmp_path / "store"
    (store / "aa").mkdir(parents=True)
    (store / "aa" / "x.jpeg").write_bytes(jpeg_bytes(40, 30, seed=1))
    cfg, ckpt = tiny_model
    args = ["--source", f"file://{store}", "--model", str(cfg), "--pretrained", str(ckpt),
            "--concepts", str(concepts_file(tmp_path, 2.0)), "--dry-run"]
    r = fsq_proc(["scan", "--all", *args])
    assert r.returncode == 0, r.stderr
    assert "loading the CLIP model" in r.stderr and re.search(r"model \S+ loaded in", r.stderr)
    from fsq.ledger.db import connect
    from fsq.ledger.state import last_listed
    c = connect("fsq.db")
    assert last_listed(c, f"file://{store}") == 1  # the next full pass's estimate
    c.close()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-m", "fsq", "scan", "--daemon", "--interval", "1",
                          *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline and len(lines) < 2:
            line = p.stdout.readline()
            if line.strip().endswith("(dry run)") or " run " in line:
                lines.append(line)
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    assert len(lines) >= 2, lines
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ run \d+: finished", line), line
