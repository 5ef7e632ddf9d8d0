"""A hostile or broken peer (issue 18): every bad statement and every bad response is refused
with a recorded reason, nothing else changes, and the pull resumes from its cursor.

The peer is a stand-in HTTP server on loopback whose answers each test writes by hand, signed
with a real Ed25519 key; the receiving side is the real `fsq peers ...` CLI and state DB.
"""

from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fsq.exchange import dsse, publish, signing_key
from fsq.exchange.trust import PeerClaim, TrustPolicy, decide
from fsq.errors import ConfigError, IntegrityError, UsageError
from fsq.ledger.db import connect
from fsq.secrets import Secret
from fsq.timeutil import iso, utcnow

SHA = [f"{i:x}" * 64 for i in range(1, 8)]


class Peer:
    """Serves keys.json and whatever feed pages the test sets; records each `since` asked."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.pages: dict[int, bytes] = {}
        self.raw: bytes | None = None       # served for every feed request when set
        self.content_length = True
        self.asked: list[int] = []
        peer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a):
                pass

            def do_GET(self):
                u = urlsplit(self.path)
                if u.path == "/.well-known/fsq/keys.json":
                    body = json.dumps(publish.keys_document(peer.key.public_key(),
                                                            "https://peer.example")).encode()
                elif u.path == "/.well-known/fsq/attestations":
                    since = int(parse_qs(u.query).get("since", ["0"])[0])
                    peer.asked.append(since)
                    body = peer.raw if peer.raw is not None else peer.pages.get(
                        since, end(since))
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                if peer.content_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def restart(self) -> None:
        handler = self.server.RequestHandlerClass
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


def statement(sha, verdict="unsafe", *, time=None, supersedes=None, method="human"):
    return dsse.build_statement(sha256=sha, md5=None, verdict=verdict, method=method,
                                instance="https://peer.example", time=time or iso(),
                                supersedes=supersedes,
                                model={"id": "m", "scores": {}} if method == "model" else None)


def sid(env) -> str:
    return dsse.statement_id(base64.b64decode(env["payload"]))


def record(cursor: int, env) -> bytes:
    return json.dumps({"cursor": str(cursor), "dsse": env}).encode() + b"\n"


def end(cursor: int, more: bool = False) -> bytes:
    return json.dumps({"end": True, "cursor": str(cursor), "more": more}).encode() + b"\n"


def page(since: int, envs) -> bytes:
    return b"".join(record(since + i + 1, e) for i, e in enumerate(envs)) + end(
        since + len(envs))


@pytest.fixture
def peer():
    p = Peer(Ed25519PrivateKey.generate())
    yield p
    p.stop()


@pytest.fixture
def pinned(peer, fsq):
    r = fsq(["peers", "add", peer.url, "--key", dsse.keyid(peer.key)])
    assert r.exit_code == 0, r.output
    return peer


def snapshot():
    conn = connect("fsq.db")
    try:
        return (conn.execute("SELECT cursor FROM peers").fetchall()[0][0],
                [tuple(r) for r in conn.execute(
                    "SELECT statement_id, verdict, revoked_by FROM peer_statements ORDER BY id")])
    finally:
        conn.close()


def rejections(fsq):
    return json.loads(fsq(["peers", "rejections", "--json"]).stdout)


def pull(fsq, *extra):
    r = fsq(["peers", "pull", "--json", *extra])
    return r.exit_code, json.loads(r.stdout)


# --- statements that fail verification ---------------------------------------------------------

def _flip_payload(env):
    body = bytearray(base64.b64decode(env["payload"]))
    i = body.index(b'"unsafe"') + 2
    body[i] ^= 0x01                      # one flipped byte inside the signed payload
    return {**env, "payload": base64.b64encode(bytes(body)).decode()}


def _flip_sig(env):
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[7] ^= 0x80
    return {**env, "signatures": [{**env["signatures"][0],
                                   "sig": base64.b64encode(bytes(sig)).decode()}]}


def test_bad_statements_are_recorded_and_skipped_the_rest_is_used(pinned, fsq):
    k, other = pinned.key, Ed25519PrivateKey.generate()
    good1, good2 = dsse.sign(statement(SHA[0]), k), dsse.sign(statement(SHA[1], "safe"), k)
    forged = dsse.sign(statement(SHA[2]), other)                 # another key entirely
    lying = {**dsse.sign(statement(SHA[3]), other),              # claims the pinned key id
             "signatures": [{"keyid": dsse.keyid(k),
                             "sig": dsse.sign(statement(SHA[3]), other)["signatures"][0]["sig"]}]}
    future = dsse.sign(statement(SHA[4], time=iso(utcnow() + timedelta(days=1))), k)
    bad_subject = statement("ab" * 32)
    bad_subject["subject"][0]["digest"]["sha256"] = "AB" * 32     # not lowercase hex
    bad_subject["subject"][0]["name"] = "sha256:" + "AB" * 32
    extra_field = statement(SHA[6])
    extra_field["predicate"]["storage_key"] = "aa/bb/smuggled.png"
    expired = statement(SHA[6], time=iso(utcnow() - timedelta(days=2)))
    expired["predicate"]["expires"] = iso(utcnow() - timedelta(days=1))
    deep = {**good1, "payload": base64.b64encode(b"[" * 9000).decode()}
    deep = {**deep, "signatures": [{"keyid": dsse.keyid(k), "sig": base64.b64encode(k.sign(
        dsse.pae(dsse.PAYLOAD_TYPE, b"[" * 9000))).decode()}]}   # signed, but a JSON bomb
    envs = [good1, _flip_payload(dsse.sign(statement(SHA[2]), k)),
            _flip_sig(dsse.sign(statement(SHA[2]), k)), forged, lying, future,
            dsse.sign(bad_subject, k), dsse.sign(extra_field, k), dsse.sign(expired, k),
            "not an envelope", deep, good2]
    pinned.pages[0] = page(0, envs)
    code, out = pull(fsq)
    assert code == 4, out
    res = out["pulled"][0]
    assert (res["accepted"], res["rejected"]) == (2, len(envs) - 2)
    cursor, stored = snapshot()
    assert cursor == str(len(envs))
    assert {s[0] for s in stored} == {sid(good1), sid(good2)}
    reasons = [r["reason"] for r in rejections(fsq)]
    assert len(reasons) == len(envs) - 2
    for needle in ("bad signature", "not signed by the pinned key", "in the future",
                   "payload is not JSON",
                   "subject digest sha256", "unknown fields", "expired", "not a DSSE"):
        assert any(needle in r for r in reasons), (needle, reasons)
    assert sum("bad signature" in r for r in reasons) == 3   # payload, sig, lying key id


def test_replayed_statement_after_revocation_is_refused(pinned, fsq):
    k = pinned.key
    s1 = dsse.sign(statement(SHA[0], "safe", time=iso(utcnow() - timedelta(minutes=5))), k)
    s2 = dsse.sign(statement(SHA[0], "unknown", supersedes=sid(s1)), k)
    pinned.pages[0] = page(0, [s1, s2])
    assert pull(fsq)[0] == 0
    conn = connect("fsq.db")
    assert TrustPolicy(safe="peers")(conn, SHA[0]) is None       # revoked: no longer applies
    before = snapshot()
    pinned.pages[2] = page(2, [s1])                              # the old one, served again
    code, out = pull(fsq)
    assert code == 4 and out["pulled"][0]["rejected"] == 1
    assert "replay of a statement revoked" in rejections(fsq)[0]["reason"]
    assert snapshot()[1] == before[1] and snapshot()[0] == "3"
    assert TrustPolicy(safe="peers")(conn, SHA[0]) is None
    # An older statement about content the peer has spoken about since is a replay too.
    s3 = dsse.sign(statement(SHA[1], "unsafe"), k)
    older = dsse.sign(statement(SHA[1], "safe", time=iso(utcnow() - timedelta(hours=1))), k)
    pinned.pages[3] = page(3, [s3, older])
    assert pull(fsq)[0] == 4
    assert "older than the peer's current statement" in rejections(fsq)[0]["reason"]
    claim = TrustPolicy(safe="peers")(conn, SHA[1])
    assert claim.outcome == "flagged" and claim.details["review_only"]
    conn.close()


# --- responses that are refused whole ----------------------------------------------------------

def _bad_responses(k):
    good = dsse.sign(statement(SHA[3]), k)
    rec = record(1, good)
    return {
        "huge": (rec * 40 + end(40)),
        "huge-no-length": (rec * 40 + end(40), False),
        "too-many": (page(0, [dsse.sign(statement(SHA[i]), k) for i in range(3)])),
        "not-json": b"<html>502 Bad Gateway</html>\n",
        "truncated": rec,
        "empty": b"",
        "backwards": record(1, good) + record(1, good) + end(2),
        "after-end": end(1) + rec,
        "no-cursor": json.dumps({"dsse": good}).encode() + b"\n" + end(1),
        "nested": b"[" * 20000 + b"\n" + end(1),
    }


@pytest.mark.parametrize("case", ["huge", "huge-no-length", "too-many", "not-json",
                                  "truncated", "empty", "backwards", "after-end", "no-cursor",
                                  "nested"])
def test_bad_response_is_refused_recorded_and_pull_resumes(pinned, fsq, monkeypatch, case):
    monkeypatch.setenv("FSQ_PEERS_MAX_RESPONSE_BYTES", "8192")
    monkeypatch.setenv("FSQ_PEERS_MAX_STATEMENTS", "2")
    k = pinned.key
    first = dsse.sign(statement(SHA[0]), k)
    pinned.pages[0] = page(0, [first])
    assert pull(fsq)[0] == 0
    before = snapshot()
    body = _bad_responses(k)[case]
    if isinstance(body, tuple):
        body, pinned.content_length = body
    pinned.raw = body
    code, out = pull(fsq)
    assert code == 3, out
    assert out["failed"] and "resumes at cursor 1" in out["failed"][0]["error"]
    assert snapshot() == before                                  # nothing else changed
    rej = rejections(fsq)
    assert rej[0]["reason"].startswith("response refused") and rej[0]["cursor"] == "1"
    peers = json.loads(fsq(["peers", "list", "--json"]).stdout)
    assert peers[0]["last_error"]
    # The peer behaves again: the pull resumes at the stored cursor.
    pinned.raw, pinned.content_length = None, True
    later = dsse.sign(statement(SHA[1]), k)
    pinned.pages[1] = page(1, [later])
    assert pull(fsq)[0] == 0
    assert pinned.asked[-1] == 1 and snapshot()[0] == "2"
    assert json.loads(fsq(["peers", "list", "--json"]).stdout)[0]["last_error"] is None


def test_peer_down_is_recorded_exit_3_and_resumable(pinned, fsq):
    k = pinned.key
    pinned.pages[0] = page(0, [dsse.sign(statement(SHA[0]), k)])
    assert pull(fsq)[0] == 0
    before = snapshot()
    pinned.stop()
    code, out = pull(fsq)
    assert code == 3 and "cannot reach" in out["failed"][0]["error"]
    assert snapshot() == before
    assert "cannot reach" in json.loads(fsq(["peers", "list", "--json"]).stdout)[0][
        "last_error"]
    pinned.restart()
    pinned.pages[1] = page(1, [dsse.sign(statement(SHA[1]), k)])
    assert pull(fsq)[0] == 0 and pinned.asked[-1] == 1 and snapshot()[0] == "2"


def test_changed_key_is_refused_until_re_added(pinned, fsq):
    new = Ed25519PrivateKey.generate()
    old = pinned.key
    pinned.key = new                                             # the peer rotates its key
    pinned.pages[0] = page(0, [dsse.sign(statement(SHA[0]), new)])
    assert pull(fsq)[0] == 4
    assert "not signed by the pinned key" in rejections(fsq)[0]["reason"]
    r = fsq(["peers", "add", pinned.url, "--key", dsse.keyid(old)])  # old id: not published
    assert r.exit_code == 2 and "does not publish key" in r.stderr
    assert fsq(["peers", "add", pinned.url, "--key", dsse.keyid(new)]).exit_code == 0
    pinned.pages[1] = page(1, [dsse.sign(statement(SHA[1]), new)])
    assert pull(fsq)[0] == 0 and len(snapshot()[1]) == 1


def test_peer_url_and_key_id_are_checked(fsq, peer):
    r = fsq(["peers", "add", "ftp://x.example", "--key", "0" * 64])
    assert r.exit_code == 2 and "http(s)" in r.stderr
    r = fsq(["peers", "add", peer.url, "--key", "abc"])
    assert r.exit_code == 2 and "64 hex" in r.stderr
    r = fsq(["peers", "add", "http://127.0.0.1:1", "--key", "0" * 64])
    assert r.exit_code == 3 and "cannot reach" in r.stderr


# --- pure parts --------------------------------------------------------------------------------

def test_pae_matches_the_dsse_spec():
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def _c(url, verdict, method="human"):
    return PeerClaim(url, "k" * 64, "s" * 64, verdict, method, iso())


@pytest.mark.parametrize("claims,safe,unsafe,local,want", [
    ([], "peers", "review", False, None),
    ([_c("a", "safe")], "off", "review", False, None),
    ([_c("a", "safe")], "peers", "review", False, ("clean", None)),
    ([_c("a", "safe", "model")], "peers", "review", False, None),     # model never skips ours
    ([_c("a", "safe")], "peers", "review", True, None),               # local human wins
    ([_c("a", "unsafe")], "off", "review", False, ("flagged", True)),
    ([_c("a", "unsafe")], "peers", "quarantine", False, ("flagged", False)),
    ([_c("a", "unsafe", "model")], "peers", "quarantine", False, ("flagged", True)),
    ([_c("a", "unsafe")], "peers", "off", False, None),
    ([_c("a", "safe"), _c("b", "unsafe")], "peers", "review", False, ("flagged", True)),
    ([_c("a", "unsafe")], "peers", "review", True, None),
])
def test_trust_rule_table(claims, safe, unsafe, local, want):
    v = decide(claims, safe=safe, unsafe=unsafe, local_human=local)
    if want is None:
        assert v is None
        return
    assert v.outcome == want[0] and v.method == "attestation"
    if want[1] is not None:
        assert v.details["review_only"] is want[1]


def test_local_confirmation_beats_a_peer_safe_statement(pinned, fsq):
    pinned.pages[0] = page(0, [dsse.sign(statement(SHA[0], "safe"), pinned.key)])
    assert pull(fsq)[0] == 0
    conn = connect("fsq.db")
    policy = TrustPolicy(safe="peers")
    assert policy(conn, SHA[0]).outcome == "clean"
    conn.execute("INSERT INTO incidents (sha256, state, created_at, reported_at) VALUES "
                 "(?, 'reported', ?, ?)", (SHA[0], iso(), iso()))
    assert policy(conn, SHA[0]) is None
    conn.close()


def test_signing_key_file_passphrase_and_tamper(tmp_path):
    path = tmp_path / "attest.key"
    kid = signing_key.generate(path, Secret("right"))
    assert dsse.keyid(signing_key.load_public(path)) == kid
    key = signing_key.load_private(path, Secret("right"))
    assert dsse.keyid(key) == kid and b"right" not in path.read_bytes()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="wrong passphrase"):
        signing_key.load_private(path, Secret("wrong"))
    with pytest.raises(UsageError, match="never overwrites"):
        signing_key.generate(path, Secret("x"))
    doc = json.loads(path.read_text())
    other = Ed25519PrivateKey.generate()
    doc["public_key"] = dsse.b64(dsse.raw_public(other))
    doc["keyid"] = dsse.keyid(other)
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError):
        signing_key.load_private(path, Secret("right"))



def test_daemon_pulls_before_each_pass_and_survives_a_down_peer(pinned, tiny_model, tmp_path):
    """`fsq scan --daemon` pulls peers first (the statement is used in that very pass); a peer
    going down later is recorded and scanning goes on."""
    import hashlib
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.fixtures.images import REPO, png_bytes
    from tests.fixtures.model import concepts_file
    store = tmp_path / "store"
    store.mkdir()
    data = png_bytes(seed=5)
    (store / "a.png").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    pinned.pages[0] = page(0, [dsse.sign(statement(sha, "safe"), pinned.key)])
    cfg, ckpt = tiny_model
    env = dict(os.environ, PYTHONPATH=str(REPO), FSQ_SOURCE=f"file://{store}",
               FSQ_MODEL=str(cfg), FSQ_PRETRAINED=str(ckpt),
               FSQ_CONCEPTS=str(concepts_file(tmp_path, -1.0)), FSQ_INTERVAL="1",
               FSQ_TRUST_SAFE="peers", FSQ_PEERS_TIMEOUT="2")
    proc = subprocess.Popen([sys.executable, "-m", "fsq", "scan", "--daemon", "--dry-run",
                             "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    conn = connect("fsq.db")

    def runs() -> int:
        return conn.execute("SELECT COUNT(*) FROM scan_runs WHERE status='finished'"
                            ).fetchone()[0]
    try:
        deadline = time.time() + 90
        while runs() < 1:
            assert time.time() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.2)
        row = conn.execute("SELECT v.method, v.outcome FROM objects o JOIN verdicts v ON "
                           "v.id=o.verdict_id WHERE o.key='a.png'").fetchone()
        assert tuple(row) == ("attestation", "clean")
        pinned.stop()
        n = runs()
        while runs() < n + 2:
            assert time.time() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.2)
        err = conn.execute("SELECT last_error FROM peers").fetchone()[0]
        assert err and "cannot reach" in err
        proc.send_signal(signal.SIGTERM)
        out, errtext = proc.communicate(timeout=60)
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, errtext
    assert "peer pull failed" in errtext
    pinned.restart()  # so the fixture's stop() has a server to stop


def test_restart_pull_refetches_without_false_alarms(pinned, fsq):
    k = pinned.key
    s1 = dsse.sign(statement(SHA[0], "safe", time=iso(utcnow() - timedelta(minutes=5))), k)
    s2 = dsse.sign(statement(SHA[0], "unknown", supersedes=sid(s1)), k)
    pinned.pages[0] = page(0, [s1, s2])
    assert pull(fsq)[0] == 0
    before = snapshot()
    code, out = pull(fsq, "--restart")
    assert code == 0 and out["pulled"][0]["duplicate"] == 2
    assert snapshot() == before and rejections(fsq) == []


def test_import_verifies_like_a_pull(pinned, fsq, tmp_path):
    k = pinned.key
    header = json.dumps({"fsq_export": 1, "keys": publish.keys_document(
        k.public_key(), "https://peer.example")}).encode() + b"\n"
    good = dsse.sign(statement(SHA[0]), k)
    f = tmp_path / "x.jsonl"
    f.write_bytes(header + page(0, [good, _flip_payload(dsse.sign(statement(SHA[1]), k))])
                  + b"garbage\n")
    r = fsq(["attest", "import", str(f), "--json"])
    assert r.exit_code == 4
    res = json.loads(r.stdout)
    assert (res["accepted"], res["rejected"]) == (1, 2)
    assert {"bad signature" in x["reason"] or "not a statement record" in x["reason"]
            for x in rejections(fsq)} == {True}
    # An export signed by a key nobody pinned is refused outright.
    other = tmp_path / "y.jsonl"
    other.write_bytes(json.dumps({"fsq_export": 1, "keys": publish.keys_document(
        Ed25519PrivateKey.generate().public_key(), None)}).encode() + b"\n")
    r = fsq(["attest", "import", str(other)])
    assert r.exit_code == 2 and "no peer has pinned" in r.stderr
