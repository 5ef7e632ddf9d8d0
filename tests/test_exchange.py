"""Shared verdicts between two real fsq instances on loopback (issue 18 acceptance).

Instance A and instance B each have their own working directory, state DB, vault and keys and
run as separate `python -m fsq` processes; A's `fsq attest serve` is a real HTTP server. A
scans its store with a concept set that flags everything, releases one image (a false
positive -> safe) and marks the other reported (confirmed -> unsafe), then publishes. B pins
A's key, pulls, and scans a store holding both: the safe one is clean by `attestation` without
the model, the unsafe one waits for review (or is quarantined under the quarantine policy).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fsq.ledger.db import connect
from tests.fixtures.images import REPO, jpeg_bytes, png_bytes, run_proc
from tests.fixtures.model import concepts_file

SAFE_KEY = "aa/bb/LOCALKEY-cartoon-strip.png"
BAD_KEY = "aa/cc/LOCALKEY-confirmed.jpg"
RELEASE_REASON = "LEMMYTEXT comic by @alice@lemmy.example in !memes"
REPORT_REF = "REPORTREF CyberTipline 987654"
INSTANCE_A = "https://a.example"


def _free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Instance:
    """One fsq instance: a directory of its own, run as separate processes."""

    def __init__(self, root: Path, tiny_model, concepts: Path, env: dict[str, str]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "pw").write_text("vault passphrase A\n")
        (root / "apw").write_text("signing passphrase A\n")
        os.chmod(root / "pw", 0o600)
        os.chmod(root / "apw", 0o600)
        cfg, ckpt = tiny_model
        self.model = ["--model", str(cfg), "--pretrained", str(ckpt), "--concepts",
                      str(concepts)]
        self.env = {"HOME": str(root), "XDG_CACHE_HOME": str(root / "cache"), **env}

    def run(self, *args: str, ok: bool = True, env: dict[str, str] | None = None):
        p = run_proc(list(args), env={**self.env, **(env or {})}, cwd=str(self.root),
                     timeout=180)
        if ok:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    def json(self, *args: str, env: dict[str, str] | None = None):
        return json.loads(self.run(*args, "--json", env=env).stdout)

    def db(self):
        return connect(self.root / "fsq.db")


def _store(root: Path, safe: bytes, bad: bytes) -> Path:
    for key, data in ((SAFE_KEY, safe), (BAD_KEY, bad)):
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@pytest.fixture(scope="module")
def instance_a(tmp_path_factory, tiny_model):
    """A: scanned, one release (safe), one mark-reported (unsafe), published, serving."""
    base = tmp_path_factory.mktemp("fed")
    concepts = concepts_file(base, -1.0)  # flags every readable image
    safe, bad = png_bytes(80, 60, seed=181), jpeg_bytes(72, 40, seed=182)
    a = Instance(base / "A", tiny_model, concepts,
                 {"FSQ_TESTONLY_WEAKEN_KDF": "1", "FSQ_INSTANCE_URL": INSTANCE_A})
    store = _store(base / "A-store", safe, bad)
    a.run("init", "--passphrase-file", "pw", "--attest-key", "--attest-passphrase-file", "apw")
    s = a.json("scan", "--all", "--source", f"file://{store}", *a.model)
    assert s["quarantined"] == 2
    inc = {r["sha256"]: r["id"] for r in a.json("incidents")}
    import hashlib
    sha_safe, sha_bad = (hashlib.sha256(b).hexdigest() for b in (safe, bad))
    a.run("release", str(inc[sha_safe]), "--reason", RELEASE_REASON, "--passphrase-file", "pw")
    a.run("incident", "mark-reported", str(inc[sha_bad]), "--reference", REPORT_REF)
    pub = a.json("attest", "publish", "--passphrase-file", "apw")
    assert sorted(p["verdict"] for p in pub["published"]) == ["safe", "unsafe"]
    # Publishing again signs nothing new (decisions are consumed once).
    assert a.json("attest", "publish", "--passphrase-file", "apw")["published"] == []
    keyid = a.run("attest", "key").stdout.strip()
    port = _free_port()
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO), **a.env})
    proc = subprocess.Popen([sys.executable, "-m", "fsq", "attest", "serve", "--listen",
                             f"127.0.0.1:{port}"], cwd=a.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2).read()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
    try:
        yield {"a": a, "url": url, "keyid": keyid, "safe": safe, "bad": bad,
               "sha_safe": sha_safe, "sha_bad": sha_bad, "concepts": concepts, "base": base}
    finally:
        proc.terminate()
        proc.wait(20)


def _b(info, tiny_model, name: str, **env: str) -> Instance:
    b = Instance(info["base"] / name, tiny_model, info["concepts"],
                 {"FSQ_TESTONLY_WEAKEN_KDF": "1", **env})
    b.run("init", "--passphrase-file", "pw")
    return b


def _verdicts(inst: Instance) -> dict[str, dict]:
    conn = inst.db()
    try:
        rows = conn.execute("SELECT o.key, o.status, v.method, v.outcome, v.reason, v.details "
                            "FROM objects o JOIN verdicts v ON v.id=o.verdict_id").fetchall()
        return {r["key"]: {**dict(r), "details": json.loads(r["details"])} for r in rows}
    finally:
        conn.close()


def test_quarantine_policy_and_offline_export_import(instance_a, tiny_model, tmp_path):
    info = instance_a
    export = tmp_path / "a.jsonl"
    info["a"].run("attest", "export", str(export))
    c = _b(info, tiny_model, "C", FSQ_TRUST_SAFE="peers", FSQ_TRUST_UNSAFE="quarantine")
    # Offline: the key comes from the export file, still checked against the given key id.
    wrong = "0" * 64
    p = c.run("peers", "add", INSTANCE_A, "--key", wrong, "--keys-file", str(export), ok=False)
    assert p.returncode == 2 and "does not publish key" in p.stderr
    c.run("peers", "add", INSTANCE_A, "--key", info["keyid"], "--keys-file", str(export))
    imp = c.json("attest", "import", str(export))
    assert imp["accepted"] >= 2 and imp["rejected"] == 0
    store = _store(info["base"] / "C-store", info["safe"], info["bad"])
    s = c.json("scan", "--all", "--source", f"file://{store}", *c.model)
    assert s["classified"] == 0 and s["quarantined"] == 1
    v = _verdicts(c)
    assert v[BAD_KEY]["status"] == "quarantined" and v[BAD_KEY]["details"]["peer"] == INSTANCE_A
    assert not (store / BAD_KEY).exists()
    assert (store / SAFE_KEY).exists()
    # Importing the same file again changes nothing.
    again = c.json("attest", "import", str(export))
    assert again["accepted"] == 0 and again["rejected"] == 0


def test_b_trusts_a_safe_skips_model_unsafe_waits_for_review(instance_a, tiny_model):
    info = instance_a
    b = _b(info, tiny_model, "B", FSQ_TRUST_SAFE="peers")
    added = b.json("peers", "add", info["url"], "--key", info["keyid"])
    assert added["keyid"] == info["keyid"]
    pulled = b.json("peers", "pull")
    assert pulled["failed"] == [] and pulled["pulled"][0]["accepted"] == 2
    store = _store(info["base"] / "B-store", info["safe"], info["bad"])
    s = b.json("scan", "--all", "--source", f"file://{store}", *b.model)
    # The model saw neither file: one is clean by attestation, the other flagged for review.
    assert s["classified"] == 0 and s["clean"] == 1 and s["flagged"] == 1
    assert s["quarantined"] == 0
    v = _verdicts(b)
    assert v[SAFE_KEY]["method"] == "attestation" and v[SAFE_KEY]["outcome"] == "clean"
    assert v[SAFE_KEY]["details"]["peer"] == info["url"] and info["url"] in v[SAFE_KEY]["reason"]
    assert v[BAD_KEY]["method"] == "attestation" and v[BAD_KEY]["outcome"] == "flagged"
    assert v[BAD_KEY]["status"] == "review" and v[BAD_KEY]["details"]["priority"] == "high"
    assert v[BAD_KEY]["details"]["peer"] == info["url"]
    # Queued for review = an incident nobody has acted on; still in the store, vault empty.
    assert (store / BAD_KEY).exists()
    assert [i["state"] for i in b.json("incidents")] == ["flagged"]
    assert not any(p.is_file() for p in (b.root / "quarantine").rglob("*"))
    # `fsq apply` does not sweep it into the vault either (a person decides).
    assert b.json("apply", "--source", f"file://{store}")["quarantined"] == 0

    # A revokes its safe statement: after the next pull B no longer applies it and the
    # object is looked at again (by the model, which flags everything here).
    info["a"].run("attest", "revoke", info["sha_safe"], "--passphrase-file", "apw")
    assert b.json("peers", "pull")["pulled"][0]["accepted"] == 1
    assert _verdicts(b)[SAFE_KEY]["status"] == "pending"  # looked at again next pass
    s2 = b.json("scan", "--all", "--dry-run", "--source", f"file://{store}", *b.model)
    assert s2["classified"] == 1 and s2["flagged"] == 1
    assert _verdicts(b)[SAFE_KEY]["method"] == "clip"


# --- what leaks: nothing but digests, verdicts and times ---------------------------------------

_ALLOWED = [re.compile(p) for p in (
    r"[0-9a-f]{64}", r"[0-9a-f]{32}", r"sha256:[0-9a-f]{64}", r"safe|unsafe|unknown",
    r"human|model", r"https://in-toto\.io/Statement/v1",
    r"https://fsq\.dev/attestation/verdict/v1", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z",
    re.escape(INSTANCE_A),
    r"_type|subject|name|digest|sha256|md5|predicateType|predicate|verdict|method|instance"
    r"|time|expires|supersedes")]


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_published_output_holds_no_keys_aliases_lemmy_text_or_bytes(instance_a, tmp_path):
    info = instance_a
    feed = urllib.request.urlopen(info["url"] + "/.well-known/fsq/attestations?since=0").read()
    keys = urllib.request.urlopen(info["url"] + "/.well-known/fsq/keys.json").read()
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(info["url"] + "/.well-known/fsq/attestations?since=x")
    assert ei.value.code == 400
    export = tmp_path / "e.jsonl"
    info["a"].run("attest", "export", str(export))
    texts = [feed, keys, export.read_bytes()]
    decoded = []
    for blob in texts:
        for line in blob.splitlines():
            obj = json.loads(line)
            for env in [obj.get("dsse")] if obj.get("dsse") else []:
                payload = base64.b64decode(env["payload"])
                decoded.append(payload)
                st = json.loads(payload)
                assert set(st["predicate"]) <= {"verdict", "method", "instance", "time",
                                                "expires", "supersedes", "model"}
                assert st["subject"][0]["name"] == "sha256:" + st["subject"][0]["digest"][
                    "sha256"]
                for s in _strings(st):
                    assert any(p.fullmatch(s) for p in _ALLOWED), f"unexpected text {s!r}"
    assert len(decoded) >= 4  # the feed and the export, each with A's statements
    everything = b"\n".join(texts + decoded)
    for needle in (b"LOCALKEY", b"LEMMYTEXT", b"REPORTREF", b"alice", b"cartoon", b"aa/bb",
                   b"file://", b"quarantine", b"vault", b"@"):
        assert needle not in everything, needle
    for img in (info["safe"], info["bad"]):
        for chunk in (img[:16], img[100:132], base64.b64encode(img[:48])):
            assert chunk not in everything
    conn = info["a"].db()
    actors = {r[0] for r in conn.execute("SELECT DISTINCT actor FROM audit")}
    conn.close()
    for actor in actors:
        assert actor.encode() not in everything  # no reviewer or host names either
