"""The review console in a real Chromium (Debian's, driven by Playwright), against the real
`python -m fsq review` process on loopback: log in with the printed URL, the queue, the blurred
preview and each step up (audited), keyboard decisions (confirm, false positive), bulk with a
confirmation, export, idle lock; no evidence plaintext anywhere on disk afterwards; hostile
Lemmy text shown inert."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from fsq.ledger.db import connect
from tests.fixtures.images import REPO
from tests.review_fixtures import (CANARY, audit_rows, browser, console,  # noqa: F401
                                   quarantined, sha)

pytestmark = pytest.mark.browser


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    def __init__(self, p: subprocess.Popen) -> None:
        self.p = p
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line)

    def next_url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.p.poll() is None, self.p.stderr.read()
                continue
            m = re.search(r"(http://127\.0\.0\.1:\d+/login\?token=\S+)", line)
            if m:
                return m.group(1)
        raise AssertionError("no login URL printed")


@contextmanager
def review_proc(q, tmpdir: Path, **env_extra):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSQ_")}
    env.update({"PYTHONPATH": str(REPO), "FSQ_TESTONLY_WEAKEN_KDF": "1",
                "TMPDIR": str(tmpdir), **env_extra})
    p = subprocess.Popen([sys.executable, "-m", "fsq", "review", "--listen",
                          f"127.0.0.1:{port}", "--reviewer", "alice", "--passphrase-file",
                          str(q.passfile)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    proc = Proc(p)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


IMG_LOADED = ("() => { const i = document.getElementById('preview-img'); "
              "return i && i.complete && i.naturalWidth > 0; }")


def views() -> list[dict]:
    return [json.loads(r["details"]) for r in audit_rows("evidence.viewed")]


def incident_row(iid: int):
    conn = connect("fsq.db")
    try:
        return conn.execute("SELECT * FROM incidents WHERE id=?", (iid,)).fetchone()
    finally:
        conn.close()


def _other_pytest_session(d: Path, session: Path | None) -> bool:
    """``d`` is inside another pytest session's base temp dir (``pytest-of-USER/pytest-N``)."""
    parts = d.parts
    for i, part in enumerate(parts[:-1]):
        if part.startswith("pytest-of-") and parts[i + 1].startswith("pytest-"):
            return session is not None and not d.is_relative_to(session)
    return False


def plaintext_on_disk(roots, originals: dict[str, bytes], skip: tuple[Path, ...],
                      since: float, session: Path | None = None) -> list[str]:
    """Files under ``roots`` holding evidence bytes (canary, a slice, or a matching sha256).

    The slices come from the middle of each file (entropy-coded picture data, unique to it),
    not its header (quantisation tables every quality-95 JPEG shares). Other pytest sessions'
    directories are skipped: a run beside this one writes generated images of its own."""
    shas = {sha(v) for v in originals.values()}
    slices = [v[len(v) // 2:len(v) // 2 + 64] for v in originals.values()]
    bad = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            if any(Path(dirpath).is_relative_to(s) for s in skip):
                continue
            if _other_pytest_session(Path(dirpath), session):
                continue
            for name in files:
                p = Path(dirpath) / name
                try:
                    st = p.lstat()
                    if not p.is_file() or st.st_size > 64 * 1024 * 1024 or st.st_mtime < since:
                        continue
                    data = p.read_bytes()
                except OSError:
                    continue
                if CANARY in data or sha(data) in shas or any(s in data for s in slices):
                    bad.append(str(p))
    return bad


def test_review_flow_in_chromium(quarantined, browser, tmp_path,  # noqa: F811
                                 tmp_path_factory):
    q = quarantined
    started = time.time() - 1
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    ids = {k: q.incident_of(k) for k in q.originals}
    img0, img1, img2 = ids["00/a0/img0.jpeg"], ids["01/a1/img1.jpeg"], ids["02/a2/img2.jpeg"]
    previews_seen: list[bytes] = []
    with review_proc(q, tmpdir) as (proc, base):
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("response", lambda r: previews_seen.append(r.body())
                if "/preview" in r.url and r.status == 200 else None)
        page.goto(proc.next_url())
        # the queue lists every flagged incident
        assert page.url == base + "/"
        listed = {int(x) for x in page.eval_on_selector_all(
            "input.pick", "els => els.map(e => e.value)")}
        assert listed == set(ids.values())
        assert page.inner_text("#tab-needs_review .count") == "4"
        # keyboard on the queue: j selects a row, Enter opens it
        page.keyboard.press("j")
        assert page.locator("tr.row.selected").count() == 1

        # an incident page: the blurred preview
        page.click(f"a.open[href^='/incident/{img0}?']")
        page.wait_for_function(IMG_LOADED)
        size = page.eval_on_selector("#preview-img", "i => [i.complete, i.naturalWidth, "
                                                     "i.naturalHeight]")
        assert size[0] and 0 < max(size[1:]) <= 128, size
        assert page.inner_text("#sha256") == sha(q.originals["00/a0/img0.jpeg"])
        assert [(v["incident"], v["level"], v["blurred"], v["reviewer"]) for v in views()] == \
            [(img0, 0, True, "alice")]
        # stepping up reveals more, one level per click, each step audited
        widths = [size[1]]
        for level in (1, 2, 3):
            page.click("#reveal")
            page.wait_for_selector(f"#preview-img[data-level='{level}']")
            page.wait_for_function(IMG_LOADED)
            widths.append(page.eval_on_selector("#preview-img", "i => i.naturalWidth"))
            assert len(views()) == level + 1 and views()[-1]["level"] == level
            assert views()[-1]["blurred"] is False
        assert widths == sorted(widths) and widths[-1] == 300    # full size at level 3
        assert page.locator("#reveal").count() == 0
        assert page.inner_text("#unblurred-count b") == "3"
        assert page.inner_text("#viewed-by-esp") == "yes"

        # export button: the package for the report
        out = tmp_path / "cybertip-pkg"
        page.fill("#export-out", str(out))
        page.click("#btn-export")
        assert "exported to" in page.inner_text("#message")
        man = json.loads((out / "manifest.json").read_text())
        assert sha((out / f"{man['sha256']}.jpg").read_bytes()) == man["sha256"] == \
            sha(q.originals["00/a0/img0.jpeg"])
        report = (out / "report.html").read_text()
        assert "Previews seen in the review console" in report and "level 3" in report
        page.go_back()

        # "confirm" with the keyboard: c, a reason, Enter -> "to report"
        page.goto(f"{base}/incident/{img0}?state=needs_review")
        page.keyboard.press("c")
        page.keyboard.type("apparent CSAM, reviewed")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert incident_row(img0)["review_state"] == "to_report"
        page.goto(base + "/?state=to_report")
        assert {int(x) for x in page.eval_on_selector_all(
            "input.pick", "els => els.map(e => e.value)")} == {img0}

        # j / k move between incidents
        page.goto(f"{base}/incident/{img1}?state=needs_review")
        page.wait_for_function(IMG_LOADED)
        here = page.url
        there, back = ("j", "k") if page.locator("#next").count() else ("k", "j")
        target = page.get_attribute("#next" if there == "j" else "#prev", "href")
        with page.expect_navigation():
            page.keyboard.press(there)
        assert page.url == base + target
        page.wait_for_function(IMG_LOADED)
        with page.expect_navigation():
            page.keyboard.press(back)
        assert page.url == here

        # "false positive" with the keyboard: restored with its sha256 and allowlisted
        page.goto(f"{base}/incident/{img1}?state=needs_review")
        page.keyboard.press("f")
        page.keyboard.type("geometric test pattern, not abuse")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        restored = q.store / "01/a1/img1.jpeg"
        assert restored.exists() and sha(restored.read_bytes()) == sha(q.originals[
            "01/a1/img1.jpeg"])
        row = incident_row(img1)
        assert row["state"] == "released" and row["review_state"] == "false_positive"
        conn = connect("fsq.db")
        assert conn.execute("SELECT 1 FROM allowlist WHERE sha256=?", (row["sha256"],)
                            ).fetchone()
        conn.close()

        # bulk: select the rest, escalate, confirm the count
        page.goto(base + "/?state=needs_review")
        for box in page.query_selector_all("input.pick"):
            box.check()
        page.select_option("#bulk-decision", "escalate")
        page.fill("#bulk-reason", "second reviewer please")
        page.click("#bulk-submit")
        assert page.inner_text("#confirm-count") == "2"
        assert incident_row(img2)["review_state"] == "needs_review"   # not yet
        page.click("#confirm-yes")
        assert page.inner_text("#bulk-result").startswith("2 done")
        assert incident_row(img2)["review_state"] == "escalated"
        assert not errors, errors

    # the audit log has every view and decision, and is intact; SIGTERM stopped the console
    assert proc.p.returncode == 0, proc.p.stderr.read()[-2000:]
    assert len(audit_rows("review.started")) == len(audit_rows("review.stopped")) == 1
    conn = connect("fsq.db")
    from fsq.ledger import audit
    assert audit.verify(conn).ok
    conn.close()
    decided = [json.loads(r["details"]) for r in audit_rows("review.decided")]
    assert [d["decision"] for d in decided] == ["confirm", "false_positive", "escalate",
                                                "escalate"]
    assert all(d["reviewer"] == "alice" for d in decided)
    assert len(audit_rows("evidence.exported")) == 1
    assert previews_seen and len(views()) >= 4
    # no evidence plaintext on disk: working dir, temp dir, browser profile (the restored
    # false positive in the store and the package the user exported are meant to be there)
    import tempfile
    bad = plaintext_on_disk([tmp_path, Path(tempfile.gettempdir())], q.originals,
                            skip=(q.store, out), since=started,
                            session=tmp_path_factory.getbasetemp())
    assert bad == []
    # (the detector does find plaintext: the exported package and the restored file)
    assert plaintext_on_disk([out, q.store], q.originals, skip=(), since=started)
    # and the browser kept no copy of the previews (Cache-Control: no-store)
    profile = tmp_path / "chromium-profile"
    for p in profile.rglob("*"):
        if p.is_file() and p.stat().st_size < 64 * 1024 * 1024:
            data = p.read_bytes()
            assert not any(len(pv) > 200 and pv[100:200] in data for pv in previews_seen), p


def test_idle_session_locks_and_a_new_link_is_printed(quarantined, browser, tmp_path):  # noqa: F811
    with review_proc(quarantined, tmp_path, FSQ_REVIEW_IDLE_MINUTES="0.05") as (proc, base):
        page = browser.new_page()
        page.goto(proc.next_url())
        assert page.url == base + "/"
        time.sleep(4.5)          # idle time is 3 s (the page's own timer reloads it too)
        r = page.goto(base + "/")
        assert r.status == 401 and page.inner_text("#message-title") == "Locked"
        r = page.goto(base + "/incident/1")
        assert r.status == 401 and page.inner_text("#message-title") == "Locked"
        page.goto(proc.next_url(timeout=10))              # the new one-time link works
        assert page.url == base + "/"
        assert page.locator("input.pick").count() == 4


@pytest.mark.postgres
def test_hostile_lemmy_text_is_escaped_in_the_console(pg_new_db, browser, tmp_path):
    """Lemmy rows with markup, event handlers and bidi overrides (tests/lemmy_seed.py) reach
    the incident page as inert text: no dialog, no injected element, the text visible."""
    from tests import lemmy_seed as S
    from tests.test_report import make_incident
    url = pg_new_db()
    S.seed_lemmy(url, "1.0")
    repo = pg_new_db()
    S.seed_pictrs(repo)
    conn = connect("fsq.db")
    iid = make_incident(conn)
    conn.close()
    from fsq.quarantine.keys import generate_keypair
    from fsq.secrets import Secret
    from tests.review_fixtures import PASS
    generate_keypair("keys/vault.pub", "keys/vault.key", Secret(PASS))
    with console(None, lemmy_database_url=url, pictrs_database_url=repo,
                 instance_url=S.INSTANCE_URL) as c:
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(c.login_url)
        page.goto(f"{c.base}/incident/{iid}")
        titles = page.inner_text("#hits")
        assert "<img src=x onerror=alert(1)>" in titles and "<script>" in titles
        assert "[U+202E]" in titles and S.RLO not in page.content()
        assert page.locator("#hits img, #hits script, #hits a[href^='https']").count() == 0
        assert page.eval_on_selector_all("script", "s => s.map(x => x.src)") == \
            [f"{c.base}/static/review.js"]
        assert S.HOSTILE_NAME in page.inner_text("#uploader")
        page.goto(f"{c.base}/?state=all")
        assert dialogs == []


def test_a_page_on_another_local_port_gets_nothing(quarantined, browser, tmp_path):  # noqa: F811
    """Cookies are not isolated by port, and another port of 127.0.0.1 is "same-site": a
    hostile local web page (here on another loopback port) loads a preview as an image, posts
    a decision with a forged form and fetches the JSON queue, all in the reviewer's logged-in
    browser. Each is refused; nothing is viewed or changed."""
    import http.server
    iid = quarantined.incident_of("00/a0/img0.jpeg")
    with console(quarantined) as c:
        evil = (f'<html><body><img id="i" src="{c.base}/incident/{iid}/preview?level=0">'
                f'<form id="f" method="post" action="{c.base}/incident/{iid}/decide">'
                '<input name="decision" value="false_positive"><input name="reason" '
                'value="pwned"><input name="csrf" value="guess"></form>'
                '<script src="/evil.js"></script></body></html>')
        js = (f'fetch("{c.base}/?state=all", {{credentials: "include"}})'
              '.then(r => r.text()).then(t => { document.title = "LEAK " + t.length; })'
              '.catch(e => { document.title = "blocked"; });'
              'setTimeout(() => document.getElementById("f").submit(), 1500);')

        class Evil(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = (js if self.path == "/evil.js" else evil).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/javascript" if self.path == "/evil.js"
                                 else "text/html")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            page = browser.new_page()
            page.goto(c.login_url)                       # the reviewer is logged in
            assert page.url == c.base + "/"
            bad = browser.new_page()
            statuses = []
            bad.on("response", lambda r: statuses.append((r.url, r.status))
                   if r.url.startswith(c.base) else None)
            bad.goto(f"http://127.0.0.1:{srv.server_address[1]}/")
            bad.wait_for_function("() => document.title !== ''", timeout=10_000)
            assert bad.title() == "blocked"                  # the fetch got no answer to read
            assert bad.eval_on_selector("#i", "i => i.naturalWidth") == 0
            bad.wait_for_url(f"{c.base}/incident/{iid}/decide", timeout=10_000)  # forged post
            assert "refused" in bad.inner_text("body")
            # whatever reached the console was refused (the image and the fetch may also be
            # blocked in the browser first: CORP same-origin, CORS)
            assert statuses and all(s == 403 for _, s in statuses), statuses
        finally:
            srv.shutdown()
    assert audit_rows("evidence.viewed") == [] and audit_rows("review.decided") == []
    assert incident_row(iid)["state"] == "quarantined"
