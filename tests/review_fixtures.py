"""Shared setup of the review-console tests: a real quarantine made the way an admin makes it.

``fsq init`` (weak test KDF), a generated pict-rs store (sharp-edged JPEGs carrying a canary in
a comment, one animated GIF), ``fsq scan --dry-run`` with an all-flag concept set and the tiny
CLIP, then ``fsq apply``. Every file ends up sealed in ./quarantine with one incident each.

``console``: the real app under uvicorn in a thread on 127.0.0.1:<free port>, with the private
key loaded the way ``fsq review`` loads it; ``.login_url`` is the printed one-time link.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from fsq.config import load_settings
from fsq.ledger.db import connect
from fsq.quarantine.keys import load_private_key
from fsq.secrets import Secret
from tests.fixtures.images import animated_gif
from tests.fixtures.model import concepts_file

PASS = "correct horse battery staple"
CANARY = b"FSQ-REVIEW-CANARY-51c0ffee"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sharp_jpeg(w: int, h: int, seed: int) -> bytes:
    """A high-detail picture (checkerboard and shapes): blur is measurable on it."""
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    for y in range(0, h, 6):
        for x in range(0, w, 6):
            if (x // 6 + y // 6 + seed) % 2:
                d.rectangle([x, y, x + 5, y + 5], fill=(20 + seed * 30 % 200, 10, 40))
    d.ellipse([w // 4, h // 4, w // 2, h // 2], fill=(200, 40 + seed, 40))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, comment=CANARY + bytes([65 + seed]))
    return buf.getvalue()


@dataclass
class Quarantine:
    store: Path
    originals: dict[str, bytes]       # storage key -> bytes
    passfile: Path
    env: dict[str, str]
    by_sha: dict[str, str] = field(default_factory=dict)   # sha256 -> key

    def incident_of(self, key: str) -> int:
        conn = connect("fsq.db")
        try:
            return conn.execute("SELECT id FROM incidents WHERE sha256=?",
                                (sha(self.originals[key]),)).fetchone()[0]
        finally:
            conn.close()


@pytest.fixture
def quarantined(tmp_path, tiny_model, fsq) -> Quarantine:
    store = tmp_path / "pictrs" / "files"
    originals = {}
    for i in range(3):
        key = f"0{i}/a{i}/img{i}.jpeg"
        originals[key] = sharp_jpeg(300 + 20 * i, 220, i)
    originals["09/anim/anim.gif"] = animated_gif(frames=5, seed=7)
    for key, data in originals.items():
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        (store / key).write_bytes(data)
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    pw.chmod(0o600)
    r = fsq(["init", "--passphrase-file", str(pw)])
    assert r.exit_code == 0, r.output
    cfg, ckpt = tiny_model
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg), "FSQ_PRETRAINED": str(ckpt),
           "FSQ_CONCEPTS": str(concepts_file(tmp_path, -1.0))}
    r = fsq(["scan", "--all", "--dry-run", "--json"], env=env)
    assert r.exit_code == 0, r.output
    r = fsq(["apply"], env=env)
    assert r.exit_code == 0, r.output
    assert not any((store / k).exists() for k in originals)
    return Quarantine(store, originals, pw, env, {sha(v): k for k, v in originals.items()})


def settings(**over):
    base = {"db": "fsq.db", "vault": "file://./quarantine"}
    base.update(over)
    # port 0 (a free port) is not a valid setting value; tests bind it directly
    return load_settings({k: str(v) for k, v in base.items()}).replace(
        review_listen="127.0.0.1:0")


class VaultSources:
    def __init__(self, s) -> None:
        from fsq.quarantine.store import open_vault
        from fsq.sources.base import open_source
        self._open_vault, self._open_source, self.s = open_vault, open_source, s
        self.v: dict = {}
        self.src: dict = {}

    def vault(self, url):
        if url not in self.v:
            self.v[url] = self._open_vault(url, self.s)
        return self.v[url]

    def source(self, url):
        if url not in self.src:
            self.src[url] = self._open_source(url, self.s)
        return self.src[url]


@dataclass
class Console:
    port: int
    login_url: str
    running: object
    announced: list[str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def console(q: Quarantine, *, reviewer: str = "alice", **over):
    """The real console app under uvicorn in a thread."""
    from fsq.review.decisions import Lifecycle
    from fsq.review.server import build
    s = settings(**over)
    conn = connect("fsq.db")
    key = load_private_key("keys/vault.key", Secret(PASS))
    vs = VaultSources(s)
    announced: list[str] = []
    running = build(conn, s, lifecycle=Lifecycle(key, vs.vault, vs.source), reviewer=reviewer,
                    announce=announced.append, export_root=Path("exports"))
    url = running.url(running.console.sessions.new_login_token())
    t = threading.Thread(target=running.server.run, kwargs={"sockets": [running.sock]},
                         daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not running.server.started:
        assert t.is_alive() and time.monotonic() < deadline, "console did not start"
        time.sleep(0.02)
    try:
        yield Console(running.port, url, running, announced)
    finally:
        running.server.should_exit = True
        t.join(30)
        running.sock.close()
        running.close()
        conn.close()


def audit_rows(action: str | None = None) -> list:
    conn = connect("fsq.db")
    try:
        if action:
            return conn.execute("SELECT * FROM audit WHERE action=? ORDER BY seq",
                                (action,)).fetchall()
        return conn.execute("SELECT * FROM audit ORDER BY seq").fetchall()
    finally:
        conn.close()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


@pytest.fixture
def browser(tmp_path):
    """A real Chromium (Debian's) driven by Playwright, its profile in the test's tmp dir."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not found at /usr/bin/chromium; apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, timeout=60_000)
        try:
            yield ctx
        finally:
            ctx.close()
