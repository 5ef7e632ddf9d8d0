"""Incident reports: content, escaping of hostile Lemmy text, file modes, audit, degraded linkage.

The state DB is a real fsq SQLite database with rows inserted here; Lemmy and the pict-rs repo
are real PostgreSQL databases (tests/lemmy_seed.py); the pict-rs API is the loopback fake.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from html.parser import HTMLParser

import pytest

from fsq.config import load_settings
from fsq.errors import UsageError
from fsq.ledger import audit
from fsq.ledger.db import connect
from fsq.reports import render
from fsq.reports.model import build_model
from fsq.timeutil import iso
from tests import lemmy_seed as S
from tests.fake_pictrs import FakePictrs

API_KEY = "report-test-api-key"
SOURCE = "file:///srv/lemmy/volumes/pictrs/files"

DETAILS = {
    "scores": {"child": 0.311, "explicit": 0.295, "cartoon": 0.12, "landscape": 0.05},
    "adjusted": {"child": 0.321, "explicit": 0.305, "cartoon": 0.12, "landscape": 0.05},
    "fired": [
        {"text": "child", "group": "age", "raw": 0.311, "adjusted": 0.321, "threshold": 0.27,
         "critical": True, "level": "high"},
        {"text": "explicit", "group": "lewd", "raw": 0.295, "adjusted": 0.305,
         "threshold": 0.28, "critical": False, "level": "medium"},
    ],
    "adjustments": {"severity": 0.0, "photo_bonus": 0.01},
    "underage_count": 1, "lewd_fired": True,
}


# --- helpers ------------------------------------------------------------------------------------

@pytest.fixture
def state(tmp_path):
    conn = connect(tmp_path / "fsq.db")
    yield conn
    conn.close()


def make_settings(tmp_path, **kw):
    kw.setdefault("reports_dir", str(tmp_path / "reports"))
    return load_settings({}, environ={}, cwd=tmp_path).replace(**kw)


def make_incident(conn, *, keys=(S.ID1,), details=DETAILS, viewed=False, method="clip",
                  sha=S.SHA, reported=True) -> int:
    now = iso()
    vid = conn.execute(
        "INSERT INTO verdicts (sha256, created_at, outcome, reason, method, model_id, "
        "concepts_digest, severity, rule_version, media_type, width, height, frames, details) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (sha, now, "flagged", "underage + explicit", method, "ViT-L-14/openai",
         "c0ffee" * 10 + "abcd", "balanced", "rule-3", "image/jpeg", 640, 480, 1,
         json.dumps(details))).lastrowid
    iid = conn.execute(
        "INSERT INTO incidents (sha256, md5, size, media_type, width, height, state, verdict_id,"
        " created_at, quarantined_at, reported_at, report_reference) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (sha, S.MD5, S.SIZE, "image/jpeg", 640, 480, "reported" if reported else "quarantined",
         vid, "2026-03-02T09:00:00.000000Z", "2026-03-02T09:05:00.000000Z",
         "2026-03-03T12:00:00.000000Z" if reported else None,
         "CT-12345678" if reported else None)).lastrowid
    audit.append(conn, "incident.created", f"incident:{iid}", {"sha256": sha})
    audit.append(conn, "flagged", f"incident:{iid}", {"key": keys[0], "verdict_id": vid})
    for n, key in enumerate(keys):
        oid = conn.execute(
            "INSERT INTO objects (source, key, size, sha256, md5, status, verdict_id, "
            "first_seen, last_seen) VALUES (?,?,?,?,?,?,?,?,?)",
            (SOURCE, key, S.SIZE, sha, S.MD5, "quarantined", vid,
             "2026-03-02T08:59:00.000000Z", "2026-03-02T09:00:00.000000Z")).lastrowid
        entry = f"ve{n}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        conn.execute(
            "INSERT INTO vault_entries (id, incident_id, source, key, object_id, sha256, size, "
            "blob_sha256, vault, state, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (entry, iid, SOURCE, key, oid, sha, S.SIZE, "b" * 64,
             "s3://user:VaultSecret@vault-bucket/q", "done", now, now))
        audit.append(conn, "quarantined", f"incident:{iid}", {"entry": entry, "key": key})
    conn.execute("INSERT INTO holds (incident_id, kind, reason, created_at, created_by) "
                 "VALUES (?,?,?,?,?)", (iid, "law-enforcement", "preservation request PR-9",
                                        now, "admin@host"))
    if viewed:
        audit.append(conn, "evidence.decrypted", f"incident:{iid}",
                     {"entries": ["x"], "purpose": "review"})
    return iid


class TagCollector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "header", "nav", "a",
                "section", "h1", "h2", "h3", "p", "div", "span", "table", "tr", "th", "td",
                "code", "b", "br", "ul", "li", "footer", "colgroup", "col"}


def assert_inert(html: str) -> None:
    """No script, no event handler, no external reference, no image, anywhere."""
    assert "<script" not in html.lower()
    p = TagCollector()
    p.feed(html)
    for tag, attrs in p.tags:
        assert tag in ALLOWED_TAGS, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name not in ("src", "srcset", "action", "formaction", "background", "poster")
            if name == "href":
                assert value.startswith("#"), value
        if tag == "meta" and attrs.get("http-equiv", "").lower() == "refresh":
            raise AssertionError("meta refresh")
    assert "url(" not in html and "@import" not in html and "data:" not in html
    for ch in ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
               "\u2069"):
        assert ch not in html
    assert S.CONTENT.decode() not in html


# --- the full report ----------------------------------------------------------------------------

@pytest.fixture
def fake_pictrs():
    with FakePictrs(API_KEY, {S.ID1: [S.ALIAS, S.ALIAS2, S.ALIAS3],
                              S.ID_OTHER: [S.OTHER]}) as fake:
        yield fake


@pytest.mark.postgres
@pytest.mark.parametrize("route", ["repo", "api"])
@pytest.mark.parametrize("version", ["0.19", "1.0"])
def test_full_report(version, route, pg_new_db, fake_pictrs, state, tmp_path):
    lemmy_url = pg_new_db()
    ids = S.seed_lemmy(lemmy_url, version)
    kw = {"lemmy_database_url": lemmy_url, "instance_url": S.INSTANCE_URL}
    if route == "repo":
        kw["pictrs_database_url"] = pg_new_db()
        S.seed_pictrs(kw["pictrs_database_url"])
    else:
        kw.update(pictrs_url=fake_pictrs.url, pictrs_api_key=API_KEY)
    settings = make_settings(tmp_path, **kw)
    iid = make_incident(state)
    before = audit.head(state)

    res = render.generate_report(state, iid, settings)
    html = res.path.read_text(encoding="utf-8")

    # file, modes, audit
    assert res.path == tmp_path / "reports" / f"{iid}.html"
    assert stat.S_IMODE(os.stat(res.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(res.path.parent).st_mode) == 0o700
    assert [p.name for p in res.path.parent.iterdir()] == [f"{iid}.html"]   # no temp left
    ev = list(audit.events(state, subject=f"incident:{iid}"))[-1]
    assert ev["action"] == "report.generated"
    det = json.loads(ev["details"])
    assert det["sha256"] == hashlib.sha256(html.encode()).hexdigest() == res.sha256
    assert det["file"] == f"{iid}.html"
    assert "lemmy-db" in det["linkage_sources"]
    assert audit.head(state) != before and audit.verify(state).ok

    # summary + evidence + classifier
    for text in (S.SHA, S.MD5, "640 × 480", "image/jpeg", S.ID1, "ve0-", "ViT-L-14/openai",
                 "rule-3", "balanced", "child", "0.3210", "0.2700", "CT-12345678",
                 "law-enforcement", "preservation request PR-9", "2027-03-03 12:00:00 UTC"):
        assert text in html, text
    assert "VaultSecret" not in html and "user:***@vault-bucket" in html

    # linkage: the right posts, comments, uploader, instance and IPs
    expected = S.EXPECTED_COMMON | (S.EXPECTED_REPO_ONLY if route == "repo" else set())
    hits = S.hit_names(res.model["linkage"]["hits"], ids)
    assert {h for h in hits if h[0] != "custom_emoji"} == expected
    for kind, name in expected:
        if kind in ("post", "comment"):
            assert re.search(rf"{kind}/\d+", html)
    assert f"https://{S.HOST}/post/1" in html and f"https://{S.HOST}/post/2" in html
    assert f"https://{S.REMOTE}/comment/1" in html
    assert f"https://{S.HOST}/post/3" not in html                    # unrelated post
    assert f"https://{S.REMOTE}/post/4" not in html                  # other instance's alias
    assert (f"https://{S.REMOTE}/comment/2" in html) == (route == "repo")
    for ip in S.UPLOADER_IPS:
        assert ip in html
    assert S.BYSTANDER_IP not in html
    assert "uploader@mail.example" in html
    assert f"https://{S.HOST}/u/uploader" in html
    assert S.REMOTE in html and "remote" in html
    assert "a thumbnail the server made" in html
    assert f"Lemmy schema detected: <b>{'1.0' if version == '1.0' else '0.19.4'}</b>" in html
    assert "Orphan" not in html and "Linkage is incomplete" not in html
    # CyberTipline pre-fill
    ct = res.model["cybertip"]
    assert ct["file"]["originalFileHash"] == S.MD5
    assert ct["file"]["uploadedToEspTimestamp"].startswith("2026-03-01T10:00")
    assert S.image_url(S.ALIAS, version) in ct["file"]["locationOfFile"]
    assert ct["personOrUserReported"]["screenName"] == "uploader"
    assert {e["ipAddress"] for e in ct["ipCaptureEvents"]} == set(S.UPLOADER_IPS)
    assert ct["file"]["fileViewedByEsp"] is False

    # hostile text: escaped, inert, neutralised, truncated
    assert_inert(html)
    assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html           # comment excerpt
    assert ("&lt;a href=&#34;https://evil.example/x&#34;" in html) == (route == "repo")
    assert "[U+202E]gnp.exe" in html and "[U+2066]isolate[U+2069]" in html
    title_len = len(S.XSS_TITLE + S.RLO + "gnp.exe " + S.LONG)
    # cut to 300 shown characters; the visible [U+202E] marker counts as its 8 characters
    assert f"[truncated: {title_len + 7 - 300} more characters]" in html
    assert "L" * 1001 not in html


@pytest.mark.postgres
def test_report_marks_viewed_and_hash_match(pg_new_db, state, tmp_path):
    iid = make_incident(state, viewed=True, method="hash-list",
                        details={"hash_list": "/etc/fsq/known.txt", "matched": S.MD5})
    res = render.generate_report(state, iid, make_settings(tmp_path))
    html = res.path.read_text()
    assert res.model["cybertip"]["file"]["fileViewedByEsp"] is True
    assert "evidence.decrypted" in html and "(review)" in html
    assert "Known-hash match" in html and "/etc/fsq/known.txt" in html
    assert "Fired concepts" not in html


@pytest.mark.postgres
def test_orphan_is_said_to_be_an_orphan(pg_new_db, state, tmp_path):
    from fsq.lemmy import pictrs_api
    lemmy = pg_new_db()
    S.seed_lemmy(lemmy, "1.0")
    pictrs_api.cache_put(state, [("or/phan.png", "0f0f0f0f-1111-4222-8333-444455556666.png")],
                         "test")
    iid = make_incident(state, keys=("or/phan.png",), sha="cd" * 32)
    res = render.generate_report(state, iid, make_settings(
        tmp_path, lemmy_database_url=lemmy, instance_url=S.INSTANCE_URL))
    html = res.path.read_text()
    assert "<b>Orphan:</b> no Lemmy post, comment" in html
    assert "<b>Orphan.</b>" in html
    assert res.model["cybertip"]["file"]["locationOfFile"] == [
        f"{S.INSTANCE_URL}/api/v4/image/0f0f0f0f-1111-4222-8333-444455556666.png"]


def test_no_linkage_still_renders(state, tmp_path):
    iid = make_incident(state, reported=False)
    res = render.generate_report(state, iid, make_settings(tmp_path))
    html = res.path.read_text()
    assert "Linkage is incomplete" in html
    assert html.count("not-configured") >= 3
    assert "FSQ_LEMMY_DATABASE_URL is not set" in html
    assert "the Lemmy database was not consulted" in html
    assert "not reported yet" in html and "2027-03-02 09:05:00 UTC" in html  # from quarantine
    assert "no pict-rs source configured" in html
    assert not res.linkage.any_configured
    assert_inert(html)


def test_unreachable_database_renders_with_reason(state, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(
        tmp_path, lemmy_database_url=f"postgresql://lemmy:TopSecretPw@127.0.0.1:{port}/lemmy",
        pictrs_database_url=f"postgresql://pictrs:OtherSecretPw@127.0.0.1:{port}/pictrs")
    iid = make_incident(state)
    res = render.generate_report(state, iid, settings)
    html = res.path.read_text()
    assert "unavailable" in html and "unreachable" in html
    assert "TopSecretPw" not in html and "OtherSecretPw" not in html
    # No connection string at all, masked or not: the setting is named instead (issue 12).
    assert "postgresql://" not in html and "FSQ_LEMMY_DATABASE_URL" in html
    ev = json.loads(list(audit.events(state, subject=f"incident:{iid}"))[-1]["details"])
    assert set(ev["linkage_unavailable"]) == {"pictrs-repo", "lemmy-db"}
    assert "TopSecretPw" not in json.dumps(res.model, default=str)


def test_broken_chain_is_shown(state, tmp_path):
    iid = make_incident(state)
    state.execute("DROP TRIGGER audit_no_update")
    state.execute("UPDATE audit SET details = '{\"sha256\":\"forged\"}' WHERE seq = 1")
    html = render.generate_report(state, iid, make_settings(tmp_path)).path.read_text()
    assert "Audit chain broken" in html and "row 1 was altered" in html


def test_overwrite_and_directory_mode(state, tmp_path):
    out = tmp_path / "reports"
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)
    iid = make_incident(state)
    settings = make_settings(tmp_path)
    p1 = render.generate_report(state, iid, settings).path
    p2 = render.render_incident(state, iid, settings)
    assert p1 == p2 and stat.S_IMODE(os.stat(out).st_mode) == 0o700
    assert len([e for e in audit.events(state, subject=f"incident:{iid}")
                if e["action"] == "report.generated"]) == 2


def test_user_template_override(state, tmp_path):
    iid = make_incident(state)
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "incident.html").write_text(
        "<!doctype html><title>custom {{ r.incident.id }}</title>{{ r.incident.sha256 }}")
    res = render.generate_report(state, iid, make_settings(tmp_path, templates_dir=str(tdir)))
    assert res.path.read_text() == f"<!doctype html><title>custom {iid}</title>{S.SHA}"
    # StrictUndefined: a typo in a template is an error, not an empty string
    (tmp_path / "tpl2").mkdir()
    (tmp_path / "tpl2" / "incident.html").write_text("{{ r.incident.no_such_field }}")
    with pytest.raises(UsageError, match="no_such_field"):
        render.generate_report(state, iid, make_settings(tmp_path,
                                                         templates_dir=str(tmp_path / "tpl2")))
    # an override may include the shipped CSS partial
    (tmp_path / "tpl3").mkdir()
    (tmp_path / "tpl3" / "incident.html").write_text("<style>{% include '_style.css' %}</style>")
    assert "unicode-bidi" in render.generate_report(
        state, iid, make_settings(tmp_path, templates_dir=str(tmp_path / "tpl3"))
    ).path.read_text()


def test_missing_template_dir_is_config_error(state, tmp_path):
    iid = make_incident(state)
    with pytest.raises(UsageError, match="FSQ_TEMPLATES_DIR"):
        render.generate_report(state, iid, make_settings(tmp_path,
                                                         templates_dir=str(tmp_path / "nope")))


def test_tolerates_sparse_verdict_details(state, tmp_path):
    iid = make_incident(state, details={"fired": [{"text": "x"}, "junk"], "scores": [
        {"text": "a", "score": 0.5}, {"concept": "b", "raw": 0.4}, "junk"]})
    state.execute("INSERT INTO verdicts (sha256, created_at, outcome, method, details) "
                  "VALUES (?,?,?,?,?)", (S.SHA, iso(), "flagged", "clip", "{not json"))
    model = build_model(state, iid, make_settings(tmp_path), link=False)
    c = model["classifier"]
    assert [f["text"] for f in c["fired"]] == ["x"]
    assert [s["text"] for s in c["top_scores"]] == ["a", "b"]
    assert len(model["other_verdicts"]) == 1
    html = render.render_html(model)
    assert "Fired concepts" in html


@pytest.mark.parametrize("raw, expected", [
    ("plain", "plain"),
    (b"bad \xff bytes", "bad \ufffd bytes"),
    ("surrogate \udcff here", "surrogate \ufffd here"),
    ("rlo \u202e x \u2066 y \u200f", "rlo [U+202E] x [U+2066] y [U+200F]"),
    ("bell \x07 nul \x00 tab\tnl\n", "bell [U+0007] nul [U+0000] tab\tnl\n"),
    ("c1 \x85", "c1 [U+0085]"),
])
def test_clean_text(raw, expected):
    assert render.clean_text(raw) == expected


def test_clip_keeps_count():
    once = render.clean_text("y" * 1500)
    assert render._clip(once, 100) == "y" * 100 + " … [truncated: 1400 more characters]"
    assert render._clip("short", 100) == "short"


def test_clean_text_truncates():
    out = render.clean_text("x" * 1500)
    assert out.startswith("x" * 1000) and out.endswith("[truncated: 500 more characters]")
    assert render.clean_text("x" * 1500, None) == "x" * 1500


def test_sanitize_tree_cleans_keys_and_nested_values():
    tree = {"a\u202e": [{"b": "\u202e"}, ("c\x00",)], "n": 1, "none": None}
    assert render.sanitize_tree(tree) == {"a[U+202E]": [{"b": "[U+202E]"}, ["c[U+0000]"]],
                                          "n": 1, "none": None}


# --- the command --------------------------------------------------------------------------------

@pytest.fixture
def cli_state(_isolated_env):
    work = _isolated_env
    conn = connect(work / "fsq.db")
    yield work, conn
    conn.close()


def test_cli_report_warns_without_linkage(fsq, cli_state):
    work, conn = cli_state
    iid = make_incident(conn)
    r = fsq(["report", str(iid)])
    assert r.exit_code == 0, r.output
    assert f"incident {iid}: " in r.stdout
    assert "warning: incident 1: linkage incomplete" in r.stderr
    path = work / "reports" / f"{iid}.html"
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    r = fsq(["report", str(iid), "--require-linkage"])
    assert r.exit_code == 3 and "--require-linkage" in r.stderr
    assert path.is_file()
    actions = [e["action"] for e in audit.events(conn, subject=f"incident:{iid}")]
    assert actions.count("report.generated") == 2


def test_cli_report_all_json(fsq, cli_state, tmp_path):
    work, conn = cli_state
    a = make_incident(conn)
    b = make_incident(conn, sha="ef" * 32, keys=("other/b.png",))
    conn.execute("UPDATE incidents SET state='released' WHERE id=?", (b,))
    c = make_incident(conn, sha="12" * 32, keys=("other/c.png",), reported=False)
    out = tmp_path / "out"
    r = fsq(["report", "--all", "--json", "--out", str(out)],
            env={"FSQ_LEMMY_DATABASE_URL": "postgresql://u:PwInEnv@127.0.0.1:1/x"})
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [x["incident"] for x in doc["reports"]] == [a, c]
    assert sorted(p.name for p in out.iterdir()) == [f"{a}.html", f"{c}.html"]
    first = doc["reports"][0]
    assert first["linkage_complete"] is False and first["linkage_problems"]
    assert first["sha256"] == hashlib.sha256((out / f"{a}.html").read_bytes()).hexdigest()
    assert first["report"]["incident"]["sha256"] == S.SHA
    assert "PwInEnv" not in r.stdout + r.stderr
    assert "PwInEnv" not in (out / f"{a}.html").read_text()


def test_cli_report_usage_errors(fsq, cli_state):
    work, conn = cli_state
    make_incident(conn)
    assert fsq(["report"]).exit_code == 2
    assert fsq(["report", "1", "--all"]).exit_code == 2
    r = fsq(["report", "99"])
    assert r.exit_code == 2 and "no incident 99" in r.stderr
    r = fsq(["report", "1"], env={"FSQ_DB": str(work / "missing.db")})
    assert r.exit_code == 2


@pytest.mark.postgres
def test_cli_report_complete_linkage_exits_0(fsq, cli_state, pg_new_db):
    work, conn = cli_state
    lemmy = pg_new_db()
    S.seed_lemmy(lemmy, "0.19")
    repo = pg_new_db()
    S.seed_pictrs(repo)
    iid = make_incident(conn)
    r = fsq(["report", str(iid), "--require-linkage"],
            env={"FSQ_LEMMY_DATABASE_URL": lemmy, "FSQ_PICTRS_DATABASE_URL": repo,
                 "FSQ_INSTANCE_URL": S.INSTANCE_URL})
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr
    html = (work / "reports" / f"{iid}.html").read_text()
    assert "203.0.113.7" in html
