"""Review console core, without HTTP: previews (size, blur, grey, strips), decisions through the
lifecycle adapter, sessions (one-time token, idle lock, CSRF), export, report view fields."""

from __future__ import annotations

import io
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from fsq.errors import UsageError
from fsq.ledger import audit, state
from fsq.ledger.db import connect
from fsq.quarantine.keys import load_private_key
from fsq.reports.model import build_model
from fsq.review import decisions, previews
from fsq.review.decisions import Lifecycle, decide
from fsq.review.export import export_incident
from fsq.review.session import Sessions
from fsq.secrets import Secret
from tests.review_fixtures import (PASS, VaultSources, quarantined,  # noqa: F401
                                   settings, sha, sharp_jpeg)


def laplacian_var(im: Image.Image) -> float:
    a = np.asarray(im.convert("L"), dtype=np.float64)
    lap = (a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4 * a[1:-1, 1:-1])
    return float(lap.var())


def png(p) -> Image.Image:
    im = Image.open(io.BytesIO(p.png))
    im.load()
    return im


# --- previews (pure) -------------------------------------------------------------------------

def test_level0_is_small_grey_and_demonstrably_blurred():
    data = sharp_jpeg(600, 400, 1)
    p0 = previews.render_preview(data, 0)
    im = png(p0)
    assert im.format == "PNG" and max(im.size) <= 128 and im.mode == "L"
    assert p0.blurred is True
    # the same picture at the same size, un-blurred, for comparison
    ref = Image.open(io.BytesIO(data)).convert("L")
    ref.thumbnail((128, 128))
    assert ref.size == im.size
    v_ref, v0 = laplacian_var(ref), laplacian_var(im)
    assert v_ref > 500, v_ref                  # the original is sharp
    assert v0 < v_ref / 50, (v0, v_ref)        # the preview is not
    # each step up reveals more: larger, sharper, then colour, then full size
    p1, p2, p3 = (previews.render_preview(data, n) for n in (1, 2, 3))
    assert max(png(p1).size) <= 256 and png(p1).mode == "L" and not p1.blurred
    assert png(p2).mode == "RGB" and max(png(p2).size) <= 512
    assert png(p3).size == (600, 400)
    assert laplacian_var(png(p3)) > laplacian_var(png(p1)) > v0


def test_blur_and_grey_off_make_level0_a_view_of_the_file():
    data = sharp_jpeg(300, 200, 2)
    p = previews.render_preview(data, 0, blur=False, grayscale=False)
    assert p.blurred is False and png(p).mode == "RGB"
    assert previews.is_blurred_view(0, blur=False) is False


def test_animation_is_a_strip_of_sampled_frames():
    from tests.fixtures.images import animated_gif
    data = animated_gif(frames=6, seed=3)
    p = previews.render_preview(data, 0)
    im = png(p)
    assert p.frames == 4 and im.width > 3 * im.height   # four 40x30 frames side by side
    assert max(im.size) <= 128                          # the whole strip within 128 px
    assert png(previews.render_preview(data, 3)).size == (4 * 40 + 3 * 4, 30)


def test_video_is_a_strip_of_sampled_frames(tmp_path):
    pytest.importorskip("av")
    from tests.test_media_video import make_video
    data = make_video(tmp_path / "v.mp4", seconds=6, size=(64, 48))
    p = previews.render_preview(data, 0)
    im = png(p)
    assert p.frames == 4 and p.media_type == "video/mp4"   # spread over the six seconds
    assert max(im.size) <= 128 and im.width > 3 * im.height


def test_undecodable_bytes_have_no_preview():
    from fsq.media import Unreadable
    with pytest.raises(Unreadable):
        previews.render_preview(b"\x1a\x45\xdf\xa3 webm-ish bytes", 0)
    with pytest.raises(ValueError):
        previews.effective(4)


# --- with a real quarantine ------------------------------------------------------------------

@pytest.fixture
def ctx(quarantined):  # noqa: F811
    s = settings()
    conn = connect("fsq.db")
    key = load_private_key("keys/vault.key", Secret(PASS))
    vs = VaultSources(s)
    yield quarantined, conn, Lifecycle(key, vs.vault, vs.source), s
    conn.close()


def test_serve_preview_audits_each_view(ctx):
    q, conn, life, _ = ctx
    iid = q.incident_of("00/a0/img0.jpeg")
    row = conn.execute("SELECT * FROM incidents WHERE id=?", (iid,)).fetchone()
    for level in (0, 1):
        previews.serve_preview(conn, row, level, private_key=life.private_key,
                               vault_for=life.vault_for, reviewer="alice")
    views = previews.views(conn, iid)
    assert [(v["level"], v["blurred"], v["reviewer"]) for v in views] == \
        [(0, True, "alice"), (1, False, "alice")]
    ct = build_model(conn, iid, settings(), link=False)["cybertip"]["file"]
    assert ct["fileViewedByEsp"] is True
    assert [e["level"] for e in ct["fileViewedByEsp_events"]] == [1]
    assert [(v["level"], v["blurred"]) for v in ct["views"]] == [(0, True), (1, False)]


def test_blurred_view_alone_is_not_file_viewed_by_esp(ctx):
    q, conn, life, _ = ctx
    iid = q.incident_of("01/a1/img1.jpeg")
    row = conn.execute("SELECT * FROM incidents WHERE id=?", (iid,)).fetchone()
    previews.serve_preview(conn, row, 0, private_key=life.private_key,
                           vault_for=life.vault_for, reviewer="bob")
    ct = build_model(conn, iid, settings(), link=False)["cybertip"]["file"]
    assert ct["fileViewedByEsp"] is False and len(ct["views"]) == 1


def test_decisions_go_through_the_lifecycle_and_are_audited(ctx, monkeypatch):
    q, conn, life, _ = ctx
    a, b, c, d = (q.incident_of(k) for k in q.originals)
    hooks = []
    monkeypatch.setattr(decisions, "on_confirmed", lambda cn, i: hooks.append(("c", i)))
    monkeypatch.setattr(decisions, "on_false_positive", lambda cn, i: hooks.append(("f", i)))
    with pytest.raises(UsageError):
        decide(conn, a, "confirm", reason="  ", reviewer="alice")
    with pytest.raises(UsageError):
        decide(conn, a, "bogus", reason="x", reviewer="alice")
    assert decide(conn, a, "confirm", reason="apparent CSAM", reviewer="alice")[
        "review_state"] == "to_report"
    r = decide(conn, b, "keep", reason="gore, not CSAM", reviewer="alice")
    hold = conn.execute("SELECT * FROM holds WHERE id=?", (r["hold"],)).fetchone()
    assert hold["kind"] == "voluntary" and hold["created_by"] == "alice"
    decide(conn, c, "escalate", reason="unsure", reviewer="alice")
    key = next(k for k in q.originals if q.incident_of(k) == d)
    r = decide(conn, d, "false_positive", reason="comic strip", reviewer="alice",
               lifecycle=life)
    assert r["restored"] == [key]
    assert sha((q.store / key).read_bytes()) == sha(q.originals[key])
    assert state.is_allowlisted(conn, sha(q.originals[key]))
    got = {r["id"]: (r["review_state"], r["state"], r["reviewed_by"]) for r in
           conn.execute("SELECT * FROM incidents")}
    assert got[a] == ("to_report", "quarantined", "alice")
    assert got[b][0] == "kept" and got[c][0] == "escalated"
    assert got[d] == ("false_positive", "released", "alice")
    assert hooks == [("c", a), ("f", d)]
    ev = [json.loads(e["details"]) for e in audit.events(conn, action_prefix="review.decided")]
    assert [(e["decision"], e["reviewer"]) for e in ev] == [
        ("confirm", "alice"), ("keep", "alice"), ("escalate", "alice"),
        ("false_positive", "alice")]
    # a released incident has nothing left to decide; mark reported needs a reference
    with pytest.raises(UsageError):
        decide(conn, d, "confirm", reason="x", reviewer="alice")
    with pytest.raises(UsageError):
        decide(conn, a, "mark_reported", reason="sent", reviewer="alice")
    r = decide(conn, a, "mark_reported", reason="sent", reviewer="alice",
               reference="CT-123")
    assert conn.execute("SELECT state, review_state FROM incidents WHERE id=?",
                        (a,)).fetchone()[:] == ("reported", "reported")
    assert audit.verify(conn).ok


def test_bulk_one_failure_does_not_stop_the_rest(ctx):
    q, conn, life, _ = ctx
    ids = [q.incident_of(k) for k in q.originals]
    res = decisions.decide_many(conn, ids + [9999], "escalate", reason="second look",
                                reviewer="alice")
    assert len(res["done"]) == 4 and res["failed"][0]["incident"] == 9999


# --- sessions --------------------------------------------------------------------------------

def test_login_token_works_once_and_idle_sessions_lock():
    now = [100.0]
    announced = []
    s = Sessions(60, clock=lambda: now[0], announce=announced.append)
    token = s.new_login_token()
    assert s.login("wrong") is None
    sid, sess = s.login(token)
    assert s.login(token) is None                     # one-time
    assert s.lookup(sid)[0] is sess and s.lookup("nope") == (None, False)
    assert Sessions.csrf_ok(sess, sess.csrf) and not Sessions.csrf_ok(sess, None) \
        and not Sessions.csrf_ok(sess, sess.csrf + "x")
    now[0] += 59
    assert s.lookup(sid)[0] is sess                  # activity restarts the idle clock
    now[0] += 61
    assert s.lookup(sid) == (None, True)             # locked
    assert s.lookup(sid) == (None, True)             # stays locked, announced once
    assert len(announced) == 1 and s.login(announced[0]) is not None


# --- export ----------------------------------------------------------------------------------

def test_export_package_verifies(ctx, tmp_path):
    q, conn, life, s = ctx
    key = "02/a2/img2.jpeg"
    iid = q.incident_of(key)
    row = conn.execute("SELECT * FROM incidents WHERE id=?", (iid,)).fetchone()
    previews.serve_preview(conn, row, 0, private_key=life.private_key,
                           vault_for=life.vault_for, reviewer="alice")
    out = tmp_path / "export-1"
    m = export_incident(conn, row, out, private_key=life.private_key,
                        vault_for=life.vault_for, settings=s, by="alice")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    files = sorted(p.name for p in out.iterdir())
    evidence = f"{row['sha256']}.jpg"
    assert files == sorted(["audit.json", "manifest.json", "report.html", evidence])
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert sha((out / evidence).read_bytes()) == row["sha256"] == sha(q.originals[key])
    man = json.loads((out / "manifest.json").read_text())
    assert man["sha256"] == row["sha256"] and man["md5"] == row["md5"]
    assert man["size"] == len(q.originals[key]) and man["media_type"] == "image/jpeg"
    assert [k["key"] for k in man["storage_keys"]] == [key]
    assert man["views"][0]["level"] == 0 and man["file_viewed_by_esp"] is False
    assert man["files"][evidence]["sha256"] == row["sha256"]
    ex = json.loads((out / "audit.json").read_text())
    assert ex["chain_verified"] and ex["chain_head"] == audit.head(conn)
    assert "evidence.exported" in [r["action"] for r in ex["rows"]]
    assert "evidence.viewed" in (out / "report.html").read_text()
    exported = list(audit.events(conn, action_prefix="evidence.exported"))
    assert len(exported) == 1 and json.loads(exported[0]["details"])["out"] == str(out)
    # refuses a non-empty directory, writes nothing there
    with pytest.raises(UsageError):
        export_incident(conn, row, out, private_key=life.private_key,
                        vault_for=life.vault_for, settings=s, by="alice")
    (tmp_path / "empty").mkdir(mode=0o755)
    export_incident(conn, row, tmp_path / "empty", private_key=life.private_key,
                    vault_for=life.vault_for, settings=s, by="alice")
    assert stat.S_IMODE((tmp_path / "empty").stat().st_mode) == 0o700


def test_export_cli(quarantined, fsq, tmp_path):  # noqa: F811
    key = "00/a0/img0.jpeg"
    iid = quarantined.incident_of(key)
    out = tmp_path / "cybertip"
    r = fsq(["export", str(iid), "--out", str(out), "--passphrase-file",
             str(quarantined.passfile), "--json"])
    assert r.exit_code == 0, r.output
    man = json.loads(r.stdout)
    assert sha((out / f"{man['sha256']}.jpg").read_bytes()) == sha(quarantined.originals[key])
    r = fsq(["export", str(iid), "--out", str(out), "--passphrase-file",
             str(quarantined.passfile)])
    assert r.exit_code == 2 and "not empty" in r.stderr
    r = fsq(["export", "9999", "--out", str(tmp_path / "x"), "--passphrase-file",
             str(quarantined.passfile)])
    assert r.exit_code == 2 and not (tmp_path / "x").exists()  # a missing id: usage (2)
    assert fsq(["audit", "verify"]).exit_code == 0
    assert os.listdir(out)


def test_migration_3_upgrades_an_existing_database(tmp_path):
    import sqlite3
    from fsq.ledger.schema import MIGRATIONS
    from fsq.ledger.db import _split_sql
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    for stmt in _split_sql(MIGRATIONS[0][2]):
        raw.execute(stmt)
    raw.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT "
                "NULL, applied_at TEXT NOT NULL)")
    raw.execute("INSERT INTO schema_migrations VALUES (1, 'initial schema', 'x')")
    for i, st in enumerate(("quarantined", "released", "reported", "cleared"), 1):
        raw.execute("INSERT INTO incidents (sha256, state, created_at) VALUES (?,?,?)",
                    (f"{i:064x}", st, "2026-01-01T00:00:00Z"))
    raw.commit()
    raw.close()
    conn = connect(path)
    got = [tuple(r) for r in conn.execute("SELECT state, review_state FROM incidents "
                                          "ORDER BY id")]
    assert got == [("quarantined", "needs_review"), ("released", "false_positive"),
                   ("reported", "reported"), ("cleared", "cleared")]
    conn.close()


def test_unreadable_evidence_has_no_preview_but_the_decryption_is_logged(tmp_path, fsq,
                                                                          tiny_model):
    from tests.fixtures.images import bomb_png, jpeg_bytes
    from tests.fixtures.model import concepts_file
    store = tmp_path / "store"
    store.mkdir()
    (store / "trunc.jpg").write_bytes(jpeg_bytes(200, 150)[:300])
    (store / "bomb.png").write_bytes(bomb_png())
    pw = tmp_path / "pw"
    pw.write_text(PASS)
    pw.chmod(0o600)
    assert fsq(["init", "--passphrase-file", str(pw)]).exit_code == 0
    cfg, ckpt = tiny_model
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg), "FSQ_PRETRAINED": str(ckpt),
           "FSQ_CONCEPTS": str(concepts_file(tmp_path, -1.0)), "FSQ_UNREADABLE": "flag"}
    r = fsq(["scan", "--all", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout)["quarantined"] == 2, r.output
    conn = connect("fsq.db")
    s = settings()
    vs = VaultSources(s)
    key = load_private_key("keys/vault.key", Secret(PASS))
    for row in conn.execute("SELECT * FROM incidents").fetchall():
        with pytest.raises(previews.PreviewUnavailable):
            previews.serve_preview(conn, row, 0, private_key=key, vault_for=vs.vault,
                                   reviewer="alice")
        (v,) = previews.views(conn, row["id"])
        assert v["rendered"] is False
        assert build_model(conn, row["id"], s, link=False)["cybertip"]["file"][
            "fileViewedByEsp"] is False
    conn.close()
