"""The console over real HTTP (uvicorn on a loopback port): login, cookie, CSRF, Host/Origin,
preview ceilings, 404 without decryption, security headers, JSON twins, bulk confirmation."""

from __future__ import annotations

import json
import time

import pytest
import requests

from fsq.ledger.db import connect
from fsq.review import previews
from tests.fixtures.model import concepts_file
from tests.review_fixtures import audit_rows, console, quarantined, sharp_jpeg  # noqa: F401

JSON = {"Accept": "application/json"}
HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def check_headers(r: requests.Response) -> None:
    for k, v in HEADERS.items():
        assert r.headers.get(k) == v, (r.url, k, r.headers.get(k))
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp


def logged_in(c) -> requests.Session:
    s = requests.Session()
    r = s.get(c.login_url, allow_redirects=False)
    assert r.status_code == 303, r.text
    check_headers(r)
    return s


def _meta_csrf(html: str) -> str:
    import re
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def review_state(iid: int) -> tuple[str, str]:
    conn = connect("fsq.db")
    try:
        return tuple(conn.execute("SELECT review_state, state FROM incidents WHERE id=?",
                                  (iid,)).fetchone())
    finally:
        conn.close()


def test_login_link_works_once_and_sets_a_strict_cookie(quarantined):  # noqa: F811
    with console(quarantined) as c:
        r = requests.get(c.login_url, allow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        again = requests.get(c.login_url, allow_redirects=False)
        assert again.status_code == 401 and "set-cookie" not in again.headers
        assert requests.get(c.base + "/login?token=guess", allow_redirects=False
                            ).status_code == 401


def test_without_the_cookie_every_page_is_401(quarantined):  # noqa: F811
    iid = quarantined.incident_of("00/a0/img0.jpeg")
    with console(quarantined) as c:
        for path in ("/", f"/incident/{iid}", f"/incident/{iid}/preview?level=0",
                     "/?state=all&page=2"):
            for h in ({}, JSON):
                r = requests.get(c.base + path, headers=h, allow_redirects=False)
                assert r.status_code == 401, (path, r.status_code)
                check_headers(r)
        r = requests.get(c.base + "/", headers=JSON)
        assert "error" in r.json()
        r = requests.post(c.base + f"/incident/{iid}/decide",
                          data={"decision": "confirm", "reason": "x"})
        assert r.status_code == 401
        # a forged cookie is no cookie
        r = requests.get(c.base + "/", cookies={"fsq_review": "forged"})
        assert r.status_code == 401
        # styles and script are public (they hold nothing)
        r = requests.get(c.base + "/static/review.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        check_headers(r)
        assert requests.get(c.base + "/static/../fsq.db").status_code == 404
    assert not audit_rows("evidence.viewed")


def test_post_without_or_with_wrong_csrf_is_403_and_changes_nothing(quarantined):  # noqa: F811
    iid = quarantined.incident_of("00/a0/img0.jpeg")
    with console(quarantined) as c:
        s = logged_in(c)
        before = len(audit_rows())
        for data in ({"decision": "confirm", "reason": "x"},
                     {"decision": "confirm", "reason": "x", "csrf": "wrong"},
                     {"decision": "confirm", "reason": "x", "csrf": ""}):
            r = s.post(c.base + f"/incident/{iid}/decide", data=data, allow_redirects=False)
            assert r.status_code == 403, r.text
            check_headers(r)
        r = s.post(c.base + f"/incident/{iid}/reveal", allow_redirects=False)
        assert r.status_code == 403
        r = s.post(c.base + "/bulk", data={"id": [iid], "decision": "confirm", "reason": "x",
                                           "confirm": "yes", "count": "1"})
        assert r.status_code == 403
        r = s.post(c.base + f"/incident/{iid}/decide", headers={**JSON, "X-CSRF-Token": "no"},
                   json={"decision": "confirm", "reason": "x"})
        assert r.status_code == 403
        assert review_state(iid) == ("needs_review", "quarantined")
        assert len(audit_rows()) == before
        token = _meta_csrf(s.get(c.base + "/").text)
        r = s.post(c.base + f"/incident/{iid}/decide", headers=JSON,
                   data={"decision": "confirm", "reason": "apparent", "csrf": token})
        assert r.status_code == 200 and r.json()["review_state"] == "to_report"
        assert review_state(iid) == ("to_report", "quarantined")


@pytest.mark.parametrize("headers", [
    {"Host": "evil.example"},
    {"Host": "192.168.1.20:{port}"},
    {"Host": "127.0.0.1.nip.io:{port}"},
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site"},
])
def test_foreign_host_or_origin_is_refused(quarantined, headers):  # noqa: F811
    iid = quarantined.incident_of("00/a0/img0.jpeg")
    with console(quarantined) as c:
        s = logged_in(c)
        token = _meta_csrf(s.get(c.base + "/").text)
        h = {k: v.format(port=c.port) for k, v in headers.items()}
        # the cookie goes along explicitly (requests drops it when Host is overridden), so the
        # refusal is the Host/Origin check's, not a missing login
        h["Cookie"] = f"fsq_review={s.cookies['fsq_review']}"
        for method, path, data in (("GET", "/", None), ("GET", f"/incident/{iid}", None),
                                   ("POST", f"/incident/{iid}/decide",
                                    {"decision": "confirm", "reason": "x", "csrf": token})):
            r = s.request(method, c.base + path, headers=h, data=data, allow_redirects=False)
            assert r.status_code == 403, (h, path, r.status_code)
            check_headers(r)
        # the same requests from the console's own origin work
        cookie = h["Cookie"]
        for host in (f"localhost:{c.port}", f"127.0.0.1:{c.port}"):
            r = requests.get(c.base + "/", headers={"Origin": f"http://{host}", "Host": host,
                                                    "Cookie": cookie})
            assert r.status_code == 200, host
    assert review_state(iid) == ("needs_review", "quarantined")


def test_unknown_incident_is_404_without_decrypting(quarantined, monkeypatch):  # noqa: F811
    calls = []
    real = previews.decrypt_entry
    monkeypatch.setattr(previews, "decrypt_entry", lambda *a, **k: calls.append(a) or real(*a,
                                                                                        **k))
    with console(quarantined) as c:
        s = logged_in(c)
        before = len(audit_rows())
        for path in ("/incident/9999/preview?level=0", "/incident/9999", "/incident/0/preview"):
            r = s.get(c.base + path)
            assert r.status_code == 404, (path, r.status_code)
            check_headers(r)
        assert s.get(c.base + "/incident/9999", headers=JSON).json()["status"] == 404
        assert calls == [] and len(audit_rows()) == before
        # a known one decrypts once per preview served
        iid = quarantined.incident_of("00/a0/img0.jpeg")
        r = s.get(c.base + f"/incident/{iid}/preview?level=0")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        check_headers(r)
        assert len(calls) == 1


def test_preview_steps_up_one_level_per_click(quarantined):  # noqa: F811
    iid = quarantined.incident_of("01/a1/img1.jpeg")
    with console(quarantined) as c:
        s = logged_in(c)
        token = _meta_csrf(s.get(c.base + "/").text)
        assert s.get(c.base + f"/incident/{iid}/preview?level=1").status_code == 403
        assert s.get(c.base + f"/incident/{iid}/preview?level=x").status_code == 400
        r = s.post(c.base + f"/incident/{iid}/reveal", data={"csrf": token}, headers=JSON)
        assert r.json() == {"incident": iid, "level": 1}
        assert s.get(c.base + f"/incident/{iid}/preview?level=1").status_code == 200
        assert s.get(c.base + f"/incident/{iid}/preview?level=3").status_code == 403
        page = s.get(c.base + f"/incident/{iid}", headers=JSON).json()
        assert page["preview"]["level"] == 1 and page["preview"]["blurred"] is False
        for _ in range(5):
            s.post(c.base + f"/incident/{iid}/reveal", data={"csrf": token})
        assert s.get(c.base + f"/incident/{iid}", headers=JSON).json()["preview"]["level"] == 3
    views = [json.loads(r["details"]) for r in audit_rows("evidence.viewed")]
    assert [(v["level"], v["blurred"], v["reviewer"]) for v in views] == [(1, False, "alice")]


def test_json_twins_and_pagination(quarantined):  # noqa: F811
    with console(quarantined) as c:
        s = logged_in(c)
        q = s.get(c.base + "/?per_page=3", headers=JSON).json()
        assert q["counts"]["needs_review"] == 4 and len(q["incidents"]) == 3 and q["has_next"]
        q2 = s.get(c.base + "/?per_page=3&page=2", headers=JSON).json()
        ids = [i["id"] for i in q["incidents"] + q2["incidents"]]
        assert sorted(ids) == sorted(quarantined.incident_of(k) for k in quarantined.originals)
        assert not q2["has_next"] and q2["has_prev"]
        gifs = s.get(c.base + "/?media_type=image/gif", headers=JSON).json()["incidents"]
        assert [i["id"] for i in gifs] == [quarantined.incident_of("09/anim/anim.gif")]
        assert s.get(c.base + "/?origin=upload", headers=JSON).json()["incidents"] == []
        assert s.get(c.base + "/?state=nonsense", headers=JSON).status_code == 400
        inc = s.get(c.base + f"/incident/{ids[0]}", headers=JSON).json()
        assert inc["report"]["incident"]["sha256"] and inc["preview"]["level"] == 0
        assert inc["report"]["storage"][0]["key"] in quarantined.originals


def test_bulk_decision_needs_a_confirmation_with_the_count(quarantined):  # noqa: F811
    ids = [quarantined.incident_of(k) for k in list(quarantined.originals)[:3]]
    with console(quarantined) as c:
        s = logged_in(c)
        token = _meta_csrf(s.get(c.base + "/").text)
        form = {"csrf": token, "id": [str(i) for i in ids], "decision": "escalate",
                "reason": "second opinion"}
        r = s.post(c.base + "/bulk", data=form)
        assert r.status_code == 200 and 'id="confirm-count">3<' in r.text
        assert all(review_state(i)[0] == "needs_review" for i in ids)
        # a confirmation for a different count is not one
        r = s.post(c.base + "/bulk", data={**form, "confirm": "yes", "count": "2"},
                   headers=JSON)
        assert r.json()["confirm_required"] is True
        r = s.post(c.base + "/bulk", data={**form, "confirm": "yes", "count": "3"},
                   headers=JSON)
        assert len(r.json()["done"]) == 3
        assert all(review_state(i)[0] == "escalated" for i in ids)


def test_export_button(quarantined, tmp_path):  # noqa: F811
    key = "02/a2/img2.jpeg"
    iid = quarantined.incident_of(key)
    with console(quarantined) as c:
        s = logged_in(c)
        token = _meta_csrf(s.get(c.base + "/").text)
        r = s.post(c.base + f"/incident/{iid}/export", headers=JSON,
                   data={"csrf": token, "out": str(tmp_path / "pkg")})
        assert r.status_code == 200, r.text
        man = r.json()
        assert man["exported_by"] == "alice" and man["directory"] == str(tmp_path / "pkg")
        r = s.post(c.base + f"/incident/{iid}/export", headers=JSON,
                   data={"csrf": token, "out": str(tmp_path / "pkg")})
        assert r.status_code == 400 and "not empty" in r.json()["error"]
    assert len(audit_rows("evidence.exported")) == 1


def test_non_loopback_listen_is_refused(quarantined, fsq):  # noqa: F811
    r = fsq(["review", "--listen", "0.0.0.0:8750"])
    assert r.exit_code == 2 and "--allow-remote" in r.stderr and "TLS" in r.stderr
    r = fsq(["review", "--listen", "lemmy.example:8750"])
    assert r.exit_code == 2


def test_a_decode_bomb_in_the_vault_costs_a_worker_its_budget_not_the_console(
        tmp_path, tiny_model, fsq):  # noqa: F811
    """Sealed evidence is hostile input too. A CPU bomb quarantined as unreadable
    (FSQ_UNREADABLE=flag) is previewed through the decode pool: the worker is killed at
    FSQ_DECODE_SECONDS, the page says there is no preview (422, the decryption audited as not
    rendered), and the console goes on answering (before: decoded in the console's own
    process, for as long as the bomb took, holding the console's lock)."""
    from tests.fixtures.hostile import gif_frame_bomb
    from tests.review_fixtures import PASS, Quarantine, sha
    store = tmp_path / "pictrs" / "files"
    originals = {"00/b0/bomb.gif": gif_frame_bomb(), "01/b1/ok.jpeg": sharp_jpeg(200, 150, 1)}
    for key, data in originals.items():
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        (store / key).write_bytes(data)
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    pw.chmod(0o600)
    assert fsq(["init", "--passphrase-file", str(pw)]).exit_code == 0
    cfg, ckpt = tiny_model
    budget = {"FSQ_DECODE_SECONDS": "1", "FSQ_DECODE_PIXELS": str(10 ** 13)}
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg), "FSQ_PRETRAINED": str(ckpt),
           "FSQ_CONCEPTS": str(concepts_file(tmp_path, -1.0)), "FSQ_UNREADABLE": "flag",
           **budget}
    r = fsq(["scan", "--all", "--dry-run", "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert fsq(["apply"], env=env).exit_code == 0
    q = Quarantine(store, originals, pw, env, {sha(v): k for k, v in originals.items()})
    bomb, ok = q.incident_of("00/b0/bomb.gif"), q.incident_of("01/b1/ok.jpeg")
    with console(q, decode_seconds=1, decode_pixels=10 ** 13) as c:
        s = logged_in(c)
        t0 = time.monotonic()
        r = s.get(c.base + f"/incident/{bomb}/preview?level=0")
        took = time.monotonic() - t0
        assert r.status_code == 422 and "budget" in r.text, (r.status_code, r.text[:300])
        assert took < 1 + 3.5, took       # the budget, its wall-clock grace, the kill
        assert c.running.pool.stats["budget_cpu"] == 1
        assert s.get(c.base + "/", headers=JSON).status_code == 200
        r = s.get(c.base + f"/incident/{ok}/preview?level=0")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert c.running.pool.stats["started"] == 2     # a fresh worker after the kill
    views = [json.loads(r["details"]) for r in audit_rows("evidence.viewed")]
    assert [(v["incident"], v["rendered"]) for v in views] == [(bomb, False), (ok, True)]
