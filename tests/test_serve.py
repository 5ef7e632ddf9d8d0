"""`fsq serve` (issue 7): the real server on a loopback port, real HTTP, real SQLite and vault.

The test client plays pict-rs exactly as its external validation does: ``POST <url>`` with the
raw bytes as the body (no multipart) and ``Content-Type`` set to the media type; any 2xx
accepts. The model is the tiny random-weight CLIP; concept sets with every threshold at -1
(everything flags) or 2 (nothing flags) decide the verdicts, and hash lists mix the two.

Most servers run in-process (uvicorn in a thread, on a socket bound to port 0) so that open_clip
is imported once; the first test runs the real ``python -m fsq serve`` process, and the crash
test SIGKILLs one between two steps of the sealing journal.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from fsq.config import load_settings
from fsq.errors import ConfigError, UsageError
from fsq.ledger.db import connect
from fsq.quarantine.keys import load_private_key
from fsq.quarantine.move import UPLOAD_SOURCE
from fsq.quarantine.release import decrypt_entry
from fsq.quarantine.store_dir import DirStore
from fsq.secrets import Secret
from fsq.server.validate import bind_socket, create_app, make_server, open_validator
from tests.fixtures.images import REPO, jpeg_bytes, png_bytes
from tests.fixtures.model import concepts_file

PASS = "correct horse battery staple"
TOKEN = "tok-" + "Zq3x9Lm2Vb7Rk4Wn8Pd1" * 2          # 44 characters, URL-safe
CANARY = b"FSQ-SERVE-CANARY-7f2e91"


# --- helpers -----------------------------------------------------------------------------------

def post(port: int, path: str, body: bytes, *, ctype: str | None = "image/png",
         headers: dict[str, str] | None = None, chunked: bool = False,
         timeout: float = 30) -> tuple[int, bytes]:
    """One request the way pict-rs sends it: raw body, Content-Type, nothing else."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = dict(headers or {})
    if ctype:
        h["Content-Type"] = ctype
    try:
        if chunked:
            parts = [body[i:i + 8192] for i in range(0, len(body), 8192)]
            c.request("POST", path, body=iter(parts), headers=h, encode_chunked=True)
        else:
            c.request("POST", path, body=body, headers=h)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def get(port: int, path: str) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def metrics(port: int) -> dict[str, float]:
    """Parse the Prometheus text: 'name{labels}' -> value (every sample line must parse)."""
    status, text = get(port, "/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(autouse=True)
def _fsq_logs_reach_caplog(monkeypatch):
    # fsq's CLI logging setup stops propagation to the root logger, where caplog listens.
    monkeypatch.setattr(logging.getLogger("fsq"), "propagate", True)


@pytest.fixture
def keys(tmp_path, fsq):
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    r = fsq(["init", "--passphrase-file", str(pw)])
    assert r.exit_code == 0, r.output
    return pw


def settings_for(tiny_model, concepts, **over):
    cfg, ckpt = tiny_model
    base = {"model": str(cfg), "pretrained": str(ckpt), "concepts": str(concepts),
            "db": "fsq.db", "vault": "file://./quarantine"}
    base.update(over)
    return load_settings(base)


class Served:
    def __init__(self, port: int, validator) -> None:
        self.port = port
        self.validator = validator


@contextmanager
def serving(settings, classifier=None):
    """The real app under uvicorn in a thread, on 127.0.0.1:<free port>."""
    v = open_validator(settings, classifier=classifier)
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(create_app(v), v.opts, v.metrics)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert t.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield Served(sock.getsockname()[1], v)
    finally:
        server.should_exit = True
        t.join(60)
        sock.close()
        v.close()


class FailingClassifier:
    """The real classifier, but its model call raises (a stand-in for a broken model/OOM)."""

    def __init__(self, real) -> None:
        self.real = real
        self.model_id = real.model_id

    def preprocess(self, img):
        return self.real.preprocess(img)

    def classify_items(self, items):
        raise RuntimeError("CUDA out of memory (simulated)")


class SlowClassifier(FailingClassifier):
    def __init__(self, real, delay: float) -> None:
        super().__init__(real)
        self.delay = delay

    def classify_items(self, items):
        time.sleep(self.delay)
        return self.real.classify_items(items)


def db_rows(sql: str, args=()) -> list:
    conn = connect("fsq.db")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def vault_bytes(root="quarantine") -> list[bytes]:
    return [p.read_bytes() for p in Path(root).rglob("*") if p.is_file()]


# --- the real process --------------------------------------------------------------------------

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_proc(args, env_extra, port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSQ_")}
    env.update({"PYTHONPATH": str(REPO), "FSQ_TESTONLY_WEAKEN_KDF": "1", **env_extra})
    p = subprocess.Popen([sys.executable, "-m", "fsq", "serve", "--listen",
                          f"127.0.0.1:{port}", *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        if p.poll() is not None:
            raise AssertionError(f"fsq serve exited {p.returncode}: {p.stderr.read()}")
        try:
            if get(port, "/healthz")[0] == 200:
                return p
        except OSError:
            pass
        assert time.monotonic() < deadline, "fsq serve did not come up"
        time.sleep(0.2)


def test_process_rejects_flagged_upload_after_sealing_it(keys, tiny_model, tmp_path, fsq):
    """`python -m fsq serve`: flagged -> 406 with the evidence already sealed, incident and
    audit events; tokens by path or header, 401 otherwise; 413 over --max-body; the token is
    never printed; SIGTERM stops it cleanly and records the run."""
    cfg, ckpt = tiny_model
    port = _free_port()
    planted = jpeg_bytes(80, 60, seed=41, marker=CANARY)
    other = jpeg_bytes(70, 50, seed=42, marker=CANARY + b"-2")
    p = start_proc(["--model", str(cfg), "--pretrained", str(ckpt), "--concepts",
                    str(concepts_file(tmp_path, -1.0)), "--max-body", "20000"],
                   {"FSQ_SERVE_TOKEN": TOKEN}, port)
    try:
        status, body = post(port, f"/validate/{TOKEN}", planted, ctype="image/jpeg")
        assert status == 406 and json.loads(body) == {"msg": "rejected"}
        # The answer went out only after the seal was done: the journal says so already.
        entry = db_rows("SELECT * FROM vault_entries")
        assert [(e["state"], e["source"]) for e in entry] == [("done", UPLOAD_SOURCE)]

        assert post(port, "/validate", other, ctype="image/jpeg",
                    headers={"X-Fsq-Token": TOKEN})[0] == 406
        assert post(port, "/validate/not-the-token-at-all-xx", planted)[0] == 401
        assert post(port, "/validate", planted)[0] == 401
        assert post(port, "/validate", planted, headers={"X-Fsq-Token": TOKEN[:-1]})[0] == 401
        big = os.urandom(30000)
        assert post(port, f"/validate/{TOKEN}", big)[0] == 413               # Content-Length
        assert post(port, f"/validate/{TOKEN}", big, chunked=True)[0] == 413  # streamed
        m = metrics(port)
        assert m['fsq_serve_rejected_total{reason="unauthorized"}'] == 3
        assert m['fsq_serve_rejected_total{reason="too_large"}'] == 2
        assert m['fsq_serve_sealed_total'] == 2
        assert m['fsq_serve_model_loaded'] == 1
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert TOKEN not in err and TOKEN not in out
    assert "/validate/***" in err

    # Evidence: one incident (origin serve) per content, both quarantined, vault verifies.
    r = fsq(["incidents", "--json"])
    incidents = json.loads(r.stdout)
    assert sorted(i["sha256"] for i in incidents) == sorted([sha(planted), sha(other)])
    assert {(i["origin"], i["state"]) for i in incidents} == {("serve", "quarantined")}
    assert fsq(["audit", "verify"]).exit_code == 0
    assert fsq(["vault", "verify", "--json"]).exit_code == 0
    flagged = [json.loads(r["details"]) for r in
               db_rows("SELECT details FROM audit WHERE action='flagged' ORDER BY seq")]
    assert flagged[0]["content_type"] == "image/jpeg"
    assert flagged[0]["sniffed_type"] == "image/jpeg"
    assert flagged[0]["client"].startswith("127.0.0.1:") and flagged[0]["arrived_at"]
    assert flagged[0]["source"] == UPLOAD_SOURCE and flagged[0]["sha256"] == sha(planted)
    actions = [r["action"] for r in db_rows("SELECT action FROM audit ORDER BY seq")]
    assert actions.count("quarantined") == 2 and "incident.created" in actions
    run = db_rows("SELECT * FROM scan_runs WHERE mode='serve'")
    assert [x["status"] for x in run] == ["finished"]

    # No plaintext anywhere in the vault or the database; the sealed copy is byte-exact and
    # carries the arrival facts.
    for blob in vault_bytes() + [Path("fsq.db").read_bytes()]:
        assert CANARY not in blob
    e = db_rows("SELECT * FROM vault_entries WHERE sha256=?", (sha(planted),))[0]
    key = load_private_key("keys/vault.key", Secret(PASS))
    meta, content = decrypt_entry(DirStore("quarantine"), e, key)
    assert content == planted
    assert meta["content_type"] == "image/jpeg" and meta["client"].startswith("127.0.0.1:")
    assert meta["source"] == UPLOAD_SOURCE and meta["arrived_at"] == flagged[0]["arrived_at"]
    assert meta["verdict"]["method"] == "clip"


# --- in-process servers --------------------------------------------------------------------------

def test_accepted_upload_leaves_only_a_verdict(keys, tiny_model, tmp_path):
    st = settings_for(tiny_model, concepts_file(tmp_path, 2.0), serve_token=TOKEN)
    data = png_bytes(64, 48, seed=5)
    with serving(st) as s:
        assert post(s.port, f"/validate/{TOKEN}", data) == (200, b'{"msg":"ok"}')
        m = metrics(s.port)
    assert m['fsq_serve_verdicts_total{verdict="clean"}'] == 1
    assert m['fsq_serve_requests_total{outcome="accepted"}'] == 1
    objs = db_rows("SELECT * FROM objects")
    assert [(o["source"], o["status"], o["sha256"]) for o in objs] == \
        [(UPLOAD_SOURCE, "clean", sha(data))]
    assert objs[0]["key"].startswith("upload/") and objs[0]["key"].endswith(sha(data)[:16])
    v = db_rows("SELECT * FROM verdicts")
    assert [(x["outcome"], x["method"]) for x in v] == [("clean", "clip")]
    assert db_rows("SELECT * FROM incidents") == []
    assert db_rows("SELECT * FROM vault_entries") == []
    assert vault_bytes() == []
    assert not db_rows("SELECT * FROM audit WHERE action='flagged'")


def test_fifty_concurrent_uploads_answered_and_batched(keys, tiny_model, tmp_path):
    """50 uploads at once: the 10 on a hash list get 406 (sealed), the 40 others go through
    the model in shared batches and get 200."""
    images = [png_bytes(48 + i % 7, 40, seed=1000 + i) for i in range(50)]
    listed = set(range(0, 50, 5))
    hl = tmp_path / "known.txt"
    hl.write_text("".join(sha(images[i]) + "\n" for i in listed))
    st = settings_for(tiny_model, concepts_file(tmp_path, 2.0), serve_token=TOKEN,
                      hash_lists=(str(hl),), batch_size=8, serve_batch_wait_ms=20)
    with serving(st) as s:
        with ThreadPoolExecutor(50) as pool:
            futs = [pool.submit(post, s.port, f"/validate/{TOKEN}", img) for img in images]
            answers = [f.result() for f in futs]
        m = metrics(s.port)
    assert [a[0] for a in answers] == [406 if i in listed else 200 for i in range(50)]
    assert m['fsq_serve_verdicts_total{verdict="clean"}'] == 40
    assert m['fsq_serve_verdicts_total{verdict="flagged"}'] == 10
    assert m["fsq_serve_batch_size_sum"] == 50
    batches = m["fsq_serve_batches_total"]
    assert batches < 50 and m['fsq_serve_batch_size_bucket{le="1"}'] < batches
    assert m["fsq_serve_model_calls_total"] < 40
    assert m["fsq_serve_sealed_total"] == 10
    assert m["fsq_serve_request_duration_seconds_count"] == 50
    assert m["fsq_serve_queue_depth"] == 0
    inc = db_rows("SELECT sha256, state, origin FROM incidents")
    assert sorted(i["sha256"] for i in inc) == sorted(sha(images[i]) for i in listed)
    assert {(i["state"], i["origin"]) for i in inc} == {("quarantined", "serve")}
    assert len(db_rows("SELECT * FROM vault_entries WHERE state='done'")) == 10
    assert len(db_rows("SELECT * FROM objects WHERE source=?", (UPLOAD_SOURCE,))) == 50


@pytest.mark.parametrize("on_error,status", [("accept", 200), ("reject", 503)])
def test_classifier_error_follows_on_error(keys, tiny_model, tmp_path, caplog, on_error,
                                           status):
    from fsq.runtime import build_classifier
    st = settings_for(tiny_model, concepts_file(tmp_path, -1.0), serve_on_error=on_error)
    data = png_bytes(50, 50, seed=77)
    with caplog.at_level(logging.INFO, logger="fsq"):
        with serving(st, FailingClassifier(build_classifier(st))) as s:
            assert post(s.port, "/validate", data)[0] == status
            # Content decided without the model is unaffected by the broken classifier.
            assert post(s.port, "/validate", b"not an image", ctype="image/png")[0] == 200
            m = metrics(s.port)
    assert m['fsq_serve_verdicts_total{verdict="error"}'] == 1
    if on_error == "accept":
        assert m['fsq_serve_fail_open_total{reason="error"}'] == 1
        assert m['fsq_serve_rejected_total{reason="error"}'] == 0
        assert "FAIL-OPEN(error)" in caplog.text
    else:
        assert m['fsq_serve_fail_open_total{reason="error"}'] == 0
        assert m['fsq_serve_rejected_total{reason="error"}'] == 1
    assert "classifier failed" in caplog.text
    rows = db_rows("SELECT status, reason, verdict_id FROM objects WHERE sha256=?",
                   (sha(data),))
    assert [(r["status"], r["verdict_id"]) for r in rows] == [("error", None)]
    assert "RuntimeError" in rows[0]["reason"]
    assert db_rows("SELECT * FROM incidents") == []


def test_timeout_and_overload_fail_open_and_are_still_sealed(keys, tiny_model, tmp_path,
                                                              caplog):
    """A slow model, a queue of 1 and a 0.5 s timeout: every answer is the on-error policy
    (accept here, each one logged and counted as fail-open), and the uploads that did get
    checked late are flagged, sealed and reported as live in pict-rs."""
    from fsq.runtime import build_classifier
    st = settings_for(tiny_model, concepts_file(tmp_path, -1.0), serve_on_error="accept",
                      serve_timeout=0.5, serve_queue=1, batch_size=1, serve_batch_wait_ms=0)
    images = [png_bytes(40, 40, seed=300 + i) for i in range(6)]
    with caplog.at_level(logging.INFO, logger="fsq"):
        with serving(st, SlowClassifier(build_classifier(st), 1.0)) as s:
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda b: post(s.port, "/validate", b), images))
            m = metrics(s.port)
        # leaving the block waited for the worker to finish what it had queued
    assert [a[0] for a in answers] == [200] * 6
    fo = {r: m[f'fsq_serve_fail_open_total{{reason="{r}"}}'] for r in ("timeout", "overload")}
    assert fo["timeout"] >= 1 and fo["overload"] >= 1 and sum(fo.values()) == 6
    assert caplog.text.count("FAIL-OPEN(") == 6
    late = db_rows("SELECT sha256 FROM incidents WHERE state='quarantined'")
    assert len(late) == fo["timeout"]
    assert "flagged AFTER the on-error policy answered it" in caplog.text


def test_timeout_with_reject_is_503(keys, tiny_model, tmp_path):
    from fsq.runtime import build_classifier
    st = settings_for(tiny_model, concepts_file(tmp_path, 2.0), serve_timeout=0.3)
    with serving(st, SlowClassifier(build_classifier(st), 1.0)) as s:
        assert post(s.port, "/validate", png_bytes(seed=8))[0] == 503
        m = metrics(s.port)
    assert m['fsq_serve_rejected_total{reason="timeout"}'] == 1
    assert sum(v for k, v in m.items() if k.startswith("fsq_serve_fail_open_total")) == 0
    # checked anyway once the model finished: the verdict is on record
    assert [r["status"] for r in db_rows("SELECT status FROM objects")] == ["clean"]


@pytest.mark.parametrize("policy", ["skip", "flag"])
def test_undecodable_upload_follows_unreadable(keys, tiny_model, tmp_path, policy):
    st = settings_for(tiny_model, concepts_file(tmp_path, 2.0), unreadable=policy)
    junk = b"<html>not an image " + CANARY + b"</html>"
    video = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64
    with serving(st) as s:
        a = post(s.port, "/validate", junk, ctype="image/webp")
        b = post(s.port, "/validate", video, ctype="video/mp4")
        m = metrics(s.port)
    if policy == "skip":
        assert (a[0], b[0]) == (200, 200)
        assert m['fsq_serve_verdicts_total{verdict="unreadable"}'] == 2
        assert {r["status"] for r in db_rows("SELECT status FROM objects")} == {"unreadable"}
        assert db_rows("SELECT * FROM incidents") == []
    else:
        assert (a[0], b[0]) == (406, 406)
        assert m["fsq_serve_sealed_total"] == 2
        inc = db_rows("SELECT i.state, v.method FROM incidents i JOIN verdicts v "
                      "ON v.id = i.verdict_id")
        assert [tuple(r) for r in inc] == [("quarantined", "unreadable-policy")] * 2
        assert all(CANARY not in blob for blob in vault_bytes())
    assert m["fsq_serve_model_calls_total"] == 0


def test_allowlisted_content_is_accepted_without_the_model(keys, tiny_model, tmp_path):
    from fsq.ledger import state
    data = png_bytes(30, 30, seed=9)
    conn = connect("fsq.db")
    state.allowlist_add(conn, sha(data), "released earlier")
    conn.close()
    st = settings_for(tiny_model, concepts_file(tmp_path, -1.0))
    with serving(st) as s:
        assert post(s.port, "/validate", data)[0] == 200
        assert post(s.port, "/validate", png_bytes(30, 30, seed=10))[0] == 406
        m = metrics(s.port)
    assert m["fsq_serve_model_calls_total"] == 1
    methods = [r["method"] for r in db_rows("SELECT method FROM verdicts ORDER BY id")]
    assert methods == ["allowlist", "clip"]


def test_health_and_metrics_need_no_token_and_show_none(keys, tiny_model, tmp_path):
    st = settings_for(tiny_model, concepts_file(tmp_path, 2.0), serve_token=TOKEN)
    with serving(st) as s:
        status, body = get(s.port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert json.loads(body)["model_loaded"] is True
        status, text = get(s.port, "/metrics")
        assert status == 200 and TOKEN not in text
        assert "# TYPE fsq_serve_request_duration_seconds histogram" in text
        assert get(s.port, "/validate")[0] == 405
        assert post(s.port, f"/nothing/{TOKEN}", b"x")[0] == 404


def test_listen_without_token_only_on_loopback(fsq):
    r = fsq(["serve", "--listen", "0.0.0.0:14051"])
    assert r.exit_code == 2 and "without a token" in r.stderr
    short = "abc123"
    r = fsq(["serve", "--listen", "0.0.0.0:14051", "--token", short])
    assert r.exit_code == 2 and short not in r.output
    from fsq.server.validate import ServeOptions
    with pytest.raises(UsageError):
        ServeOptions.from_settings(load_settings({"serve_listen": "[::]:14051"}))
    with pytest.raises(ConfigError):
        ServeOptions.from_settings(load_settings({"serve_token": "has/slash" * 4}))
    ok = ServeOptions.from_settings(load_settings({"serve_listen": "[::1]:9"}))
    assert (ok.host, ok.port, ok.token) == ("::1", 9, None)
    assert TOKEN not in repr(ServeOptions.from_settings(load_settings({"serve_token": TOKEN})))


def test_sigkill_during_upload_seal_is_finished_at_next_start(keys, tiny_model, tmp_path):
    """SIGKILL after the sealed copy was verified (the step an upload's journal has instead of
    removing a source): pict-rs sees the connection drop and rejects; the next start finishes
    the entry. (Rolling back an unverified entry is the scanner's recovery code, tested in
    test_quarantine.py; one process start here costs ~10 s of imports.)"""
    point, final = "after-verified", "done"
    cfg, ckpt = tiny_model
    concepts = concepts_file(tmp_path, -1.0)
    port = _free_port()
    data = jpeg_bytes(60, 60, seed=55, marker=CANARY)
    p = start_proc(["--model", str(cfg), "--pretrained", str(ckpt), "--concepts",
                    str(concepts)], {"FSQ_TESTONLY_CRASH_AT": point}, port)
    try:
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            post(port, "/validate", data)
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    assert [r["state"] for r in db_rows("SELECT state FROM vault_entries")] != [final]
    with serving(settings_for(tiny_model, concepts)):
        pass
    assert [r["state"] for r in db_rows("SELECT state FROM vault_entries")] == [final]
    assert [i["state"] for i in db_rows("SELECT state FROM incidents")] == ["quarantined"]
    assert [r["action"] for r in db_rows("SELECT action FROM audit ORDER BY seq")][-4:-2] == \
        ["quarantined", "quarantine.recovered"]
    assert len(vault_bytes()) == 2 and all(CANARY not in blob for blob in vault_bytes())


def test_serve_without_vault_key_says_what_to_do(fsq, tiny_model, tmp_path):
    r = fsq(["serve", "--model", str(tiny_model[0]), "--pretrained", str(tiny_model[1])])
    assert r.exit_code == 2 and "vault public key" in r.stderr and "fsq init" in r.stderr
    assert not Path("fsq.db").exists()  # failed before touching anything
