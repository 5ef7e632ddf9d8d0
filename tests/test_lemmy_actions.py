"""`fsq lemmy ...` and `fsq uploader`: evidence sealed before any Lemmy call, exact API shapes.

Real parts: the Lemmy database (PostgreSQL, 0.19 and 1.0 schemas, tests/lemmy_seed.py), the
pict-rs 0.5 repo (PostgreSQL), a pict-rs filesystem store, the fsq vault (directory; S3 via moto
behind a switchable forwarder for the outage test), the fsq CLI. The only stand-in is Lemmy's
HTTP API (tests/fake_lemmy.py, written from the documented 0.19 and 1.0 shapes, on loopback).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import uuid
from pathlib import Path

import psycopg
import pytest

from fsq.config import load_settings
from fsq.errors import ExternalError
from fsq.ledger.db import connect
from fsq.lemmy.api import api_for_version, build_call
from fsq.lemmy.actions import execute_action, parse_expires, plan_action
from fsq.lemmy.pictrs_repo import encode_hash
from fsq.quarantine.keys import load_private_key
from fsq.quarantine.release import decrypt_entry
from fsq.quarantine.store_dir import DirStore
from fsq.secrets import Secret
from tests import fake_lemmy as FL
from tests import lemmy_seed as S
from tests.fixtures.images import png_bytes

PASS = "lemmy-test-vault-passphrase"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- pure: the documented request shapes ----------------------------------------------------

@pytest.mark.parametrize("api, action, kw, path, body", [
    ("v3", "remove-post", {}, "/api/v3/post/remove",
     {"post_id": 7, "removed": True, "reason": "r"}),
    ("v4", "remove-comment", {}, "/api/v4/comment/remove",
     {"comment_id": 7, "removed": True, "reason": "r"}),
    ("v3", "ban", {"remove_data": True, "expires": 1900000000}, "/api/v3/user/ban",
     {"person_id": 7, "ban": True, "remove_data": True, "reason": "r", "expires": 1900000000}),
    ("v4", "ban", {"remove_data": True, "expires": 1900000000}, "/api/v4/admin/ban",
     {"person_id": 7, "ban": True, "remove_or_restore_data": True, "reason": "r",
      "expires_at": 1900000000}),
    ("v3", "community-ban", {"community_id": 3}, "/api/v3/community/ban_user",
     {"community_id": 3, "person_id": 7, "ban": True, "remove_data": False, "reason": "r"}),
    ("v4", "community-ban", {"community_id": 3}, "/api/v4/community/ban_user",
     {"community_id": 3, "person_id": 7, "ban": True, "remove_or_restore_data": False,
      "reason": "r"}),
    ("v3", "purge-post", {}, "/api/v3/admin/purge/post", {"post_id": 7, "reason": "r"}),
    ("v4", "purge-comment", {}, "/api/v4/admin/purge/comment",
     {"comment_id": 7, "reason": "r"}),
    ("v4", "purge-person", {}, "/api/v4/admin/purge/person", {"person_id": 7, "reason": "r"}),
])
def test_build_call_shapes(api, action, kw, path, body):
    call = build_call(api, action, 7, reason="r", **kw)
    assert (call.method, call.path, call.body) == ("POST", path, body)
    assert "Bearer ***" in call.line()


@pytest.mark.parametrize("version, api", [("0.19.5", "v3"), ("0.19.11", "v3"),
                                          ("1.0.0", "v4"), ("1.0.0-beta.3", "v4")])
def test_api_for_version(version, api):
    assert api_for_version(version) == api


def test_old_lemmy_refused_and_expires_checked():
    from fsq.errors import UsageError
    with pytest.raises(UsageError, match="not supported"):
        api_for_version("0.18.5")
    with pytest.raises(UsageError, match="in the past"):
        parse_expires("2001-01-01")
    assert parse_expires("2099-01-01") == 4070908800
    with pytest.raises(UsageError, match="not a date"):
        parse_expires("next tuesday")


# --- the real setup --------------------------------------------------------------------------

EXTRA = 3          # more uploads of the uploader, beyond the flagged file


def _uuid7_identifier(n: int) -> str:
    h = f"0193{n:04x}" + uuid.uuid4().hex[:24]
    return "/".join(h[i:i + 2] for i in range(0, 20, 2)) + "/" + h[20:32] + ".png"


class World:
    """Lemmy DB + pict-rs repo + store + vault keys + a Lemmy API stand-in, for one version."""

    def __init__(self, version, pg_new_db, fsq, tmp_path, lemmy_url, *, vault=None,
                 extra_env=None):
        self.version = version
        self.lemmy_db = pg_new_db()
        self.ids = S.seed_lemmy(self.lemmy_db, version)
        self.pictrs_db = pg_new_db()
        S.seed_pictrs(self.pictrs_db)
        self.store = tmp_path / "pictrs" / "files"
        self.files: dict[str, bytes] = {}        # identifier -> bytes
        self._put(S.ID1, S.CONTENT)
        self._put(S.ID_OTHER, b"other")
        self.uploads = {S.ALIAS: S.ID1}          # the uploader's aliases -> identifier
        for n in range(EXTRA):
            alias, ident = f"{uuid.uuid4()}.png", _uuid7_identifier(n)
            self._add_upload(alias, ident, png_bytes(32 + n, 24, seed=50 + n))
        pw = tmp_path / "pass.txt"
        pw.write_text(PASS + "\n")
        self.pw = pw
        r = fsq(["init", "--passphrase-file", str(pw)])
        assert r.exit_code == 0, r.output
        self.env = {"FSQ_LEMMY_DATABASE_URL": self.lemmy_db,
                    "FSQ_PICTRS_DATABASE_URL": self.pictrs_db,
                    "FSQ_INSTANCE_URL": S.INSTANCE_URL, "FSQ_SOURCE": f"file://{self.store}",
                    "FSQ_LEMMY_URL": lemmy_url, "FSQ_LEMMY_JWT": FL.JWT, **(extra_env or {})}
        if vault:
            self.env["FSQ_VAULT"] = vault

    def _put(self, ident: str, data: bytes) -> None:
        p = self.store / ident
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.files[ident] = data

    def _add_upload(self, alias: str, ident: str, data: bytes) -> None:
        self._put(ident, data)
        self.uploads[alias] = ident
        h = encode_hash(hashlib.sha256(data).hexdigest(), len(data), 2)
        with psycopg.connect(self.pictrs_db, autocommit=True) as c:
            c.execute("INSERT INTO hashes (hash, identifier, created_at) VALUES (%s, %s, now())",
                      (h, ident))
            c.execute("INSERT INTO aliases (alias, hash, token) VALUES (%s, %s, 'tok')",
                      (alias, h))
        with psycopg.connect(self.lemmy_db, autocommit=True) as c:
            if self.version == "1.0":
                c.execute("INSERT INTO local_image (pictrs_alias, person_id, published_at) "
                          "VALUES (%s, %s, now())", (alias, self.ids["uploader"]))
            else:
                c.execute("INSERT INTO local_image (pictrs_alias, local_user_id, "
                          "pictrs_delete_token, published) VALUES (%s, %s, 'tok', now())",
                          (alias, self.ids["lu_uploader"]))

    def settings(self):
        return load_settings({}, environ=self.env, cwd=Path.cwd())

    def delete_uploads(self, path, body) -> None:
        """What Lemmy does on a ban with data removal / a person purge: the files go."""
        if path.endswith(("/user/ban", "/admin/ban", "/purge/person")):
            for ident in self.uploads.values():
                (self.store / ident).unlink(missing_ok=True)


def make_incident(conn, sha=S.SHA, vault_key=None) -> int:
    cur = conn.execute("INSERT INTO incidents (sha256, md5, size, media_type, state, created_at)"
                       " VALUES (?,?,?,?,?,?)",
                       (sha, S.MD5, S.SIZE, "image/jpeg", "quarantined",
                        "2026-03-02T09:00:00.000000Z"))
    iid = cur.lastrowid
    if vault_key:
        conn.execute("INSERT INTO vault_entries (id, incident_id, source, key, sha256, size, "
                     "blob_sha256, vault, state, created_at, updated_at) "
                     "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                     ("ve-trigger", iid, "file:///srv/pictrs", vault_key, sha, S.SIZE, "b" * 64,
                      "file://./quarantine", "done", "2026-03-02T09:05:00Z",
                      "2026-03-02T09:05:00Z"))
    conn.commit()
    return int(iid)


def audit_rows(conn):
    return [(r["seq"], r["action"], json.loads(r["details"]))
            for r in conn.execute("SELECT * FROM audit ORDER BY seq")]


@pytest.fixture(params=["0.19", "1.0"])
def version(request):
    return request.param


@pytest.fixture
def world(version, pg_new_db, fsq, tmp_path):
    lemmy_version = "1.0.0" if version == "1.0" else "0.19.5"
    w = None

    def on_action(path, body):
        w.delete_uploads(path, body)

    with FL.FakeLemmy(lemmy_version, on_action=on_action) as fake:
        w = World(version, pg_new_db, fsq, tmp_path, fake.url)
        w.fake = fake
        yield w


def assert_no_secret(*texts):
    for t in texts:
        assert FL.JWT not in t and FL.PASSWORD not in t


# --- ban --remove-data: every upload sealed first, then the call ------------------------------

@pytest.mark.postgres
def test_ban_remove_data_seals_every_upload_then_calls(world, fsq):
    w = world
    conn = connect("fsq.db")
    iid = make_incident(conn)
    before = len(audit_rows(conn))

    # dry run: lists the same files, no call, no seal, no audit row
    r = fsq(["lemmy", "ban", "uploader", "--remove-data", "--incident", str(iid),
             "--reason", "CSAM uploader", "--dry-run", "--json"], env=w.env)
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["plan"]
    assert {f["alias"] for f in plan["files"]} == set(w.uploads)
    assert {f["identifier"] for f in plan["files"]} == set(w.uploads.values())
    assert all(f["status"] == "to-seal" for f in plan["files"])
    assert plan["call"]["path"] == ("/api/v4/admin/ban" if w.version == "1.0"
                                    else "/api/v3/user/ban")
    assert w.fake.actions() == []
    assert conn.execute("SELECT COUNT(*) FROM vault_entries").fetchone()[0] == 0
    assert len(audit_rows(conn)) == before
    assert_no_secret(r.output)
    r = fsq(["lemmy", "ban", "uploader", "--remove-data", "--reason", "x", "--dry-run"],
            env=w.env)
    assert r.exit_code == 0 and "to-seal" in r.stdout and "Bearer ***" in r.stdout

    # the real thing
    r = fsq(["lemmy", "ban", "uploader", "--remove-data", "--incident", str(iid),
             "--reason", "CSAM uploader"], env=w.env)
    assert r.exit_code == 0, r.output
    assert_no_secret(r.output)
    calls = w.fake.actions()
    assert len(calls) == 1
    body = calls[0]["body"]
    pid = w.ids["uploader"]
    if w.version == "1.0":
        assert calls[0]["path"] == "/api/v4/admin/ban"
        assert body == {"person_id": pid, "ban": True, "remove_or_restore_data": True,
                        "reason": "CSAM uploader"}
    else:
        assert calls[0]["path"] == "/api/v3/user/ban"
        assert body == {"person_id": pid, "ban": True, "remove_data": True,
                        "reason": "CSAM uploader"}
    assert calls[0]["authorization"] == f"Bearer {FL.JWT}"
    assert calls[0]["content_type"] == "application/json"

    # Lemmy deleted the files; every one is a vault entry whose content is the stored file
    assert not any((w.store / i).exists() for i in w.uploads.values())
    key = load_private_key("keys/vault.key", Secret(PASS))
    vault = DirStore("quarantine")
    entries = conn.execute("SELECT * FROM vault_entries WHERE state='done'").fetchall()
    assert {e["key"] for e in entries} == set(w.uploads.values())
    for e in entries:
        meta, content = decrypt_entry(vault, e, key)
        assert hashlib.sha256(content).hexdigest() == e["sha256"] == \
            hashlib.sha256(w.files[e["key"]]).hexdigest()
        assert meta["origin"] == "lemmy-action" and meta["alias"] in w.uploads
        assert {lg["ip"] for p in meta["linkage"]["people"] for lg in p["logins"]} == \
            set(S.UPLOADER_IPS)
        inc = conn.execute("SELECT * FROM incidents WHERE id=?", (e["incident_id"],)).fetchone()
        assert inc["state"] == "quarantined"
        if inc["id"] != iid:   # the flagged file itself joins its own incident
            assert inc["origin"] == "lemmy-action" and inc["linked_incident_id"] == iid

    # audit: seals, then the snapshot, then the action; the chain is intact
    rows = audit_rows(conn)[before:]
    acts = [a for _, a, _ in rows]
    assert acts[0] == "lemmy.action.started"
    seals = [s for s, a, _ in rows if a == "quarantined"]
    snap = next(s for s, a, _ in rows if a == "lemmy.evidence.snapshot")
    done = next((s, d) for s, a, d in rows if a == "lemmy.action.done")
    assert len(seals) == len(w.uploads) and max(seals) < snap < done[0]
    assert done[1]["status"] == 200 and done[1]["lemmy_ids"] == {"person_id": pid,
                                                                "banned": True}
    assert done[1]["request"]["body"] == body
    assert "lemmy.action.failed" not in acts
    from fsq.ledger import audit
    assert audit.verify(conn).ok
    all_audit = " ".join(r["details"] for r in conn.execute("SELECT details FROM audit"))
    assert_no_secret(all_audit)

    # the snapshot kept the uploader and the login IPs Lemmy's purge would cascade away
    a = conn.execute("SELECT * FROM lemmy_actions").fetchone()
    assert a["state"] == "done" and a["http_status"] == 200
    snapd = json.loads(a["snapshot"])
    assert hashlib.sha256(a["snapshot"].encode()).hexdigest() == a["snapshot_sha256"]
    ips = {lg["ip"] for p in snapd["people"] for lg in p["logins"]}
    assert ips == set(S.UPLOADER_IPS)
    assert_no_secret(json.dumps({k: a[k] for k in a.keys()}))

    # a sealed incident reports fine: no verdict, its copy, the action that made it
    from fsq.reports import render
    other = next(e["incident_id"] for e in entries if e["incident_id"] != iid)
    res = render.generate_report(conn, other, w.settings().replace(reports_dir="reports"))
    html = res.path.read_text()
    assert "lemmy-action" in html and "copy:lemmy-action" in html

    # a rerun finds everything in the vault and seals nothing twice
    r = fsq(["lemmy", "ban", "uploader", "--remove-data", "--reason", "again", "--dry-run",
             "--json"], env=w.env)
    assert r.exit_code == 0, r.output
    assert {f["status"] for f in json.loads(r.stdout)["plan"]["files"]} == {"in-vault"}

    # uploader view: uploads, IPs, the incidents the seal opened, the action
    r = fsq(["uploader", "uploader", "--json"], env=w.env)
    assert r.exit_code == 0, r.output
    view = json.loads(r.stdout)
    assert {u["alias"] for u in view["uploads"]} == set(w.uploads)
    assert {lg["ip"] for lg in view["logins"]} == set(S.UPLOADER_IPS)
    assert {i["id"] for i in view["incidents"]} == {e["incident_id"] for e in entries}
    assert [x["action"] for x in view["actions"]] == ["ban"]
    assert any("--remove-data" in s["command"] for s in view["suggested"])
    r = fsq(["uploader", f"https://{S.HOST}/u/uploader", "--json"], env=w.env)
    assert r.exit_code == 0 and json.loads(r.stdout)["person"]["id"] == pid
    r = fsq(["uploader", "nobody-here"], env=w.env)
    assert r.exit_code == 2 and "no Lemmy person" in r.stderr  # a missing id: usage (2)
    r = fsq(["uploader", str(pid)], env=w.env)
    assert r.exit_code == 0 and S.UPLOADER_IPS[0] in r.stdout and "<script>" not in r.stdout


# --- purge post: url image, thumbnail, body images; an evidence file already in the vault -----

@pytest.mark.postgres
def test_purge_post_seals_url_thumbnail_and_skips_vaulted(world, fsq):
    w = world
    conn = connect("fsq.db")
    # the flagged file (ID1) is already sealed: only the others need sealing
    iid = make_incident(conn, vault_key=S.ID1)
    with psycopg.connect(w.lemmy_db, autocommit=True) as c:
        extra = next(a for a in w.uploads if a != S.ALIAS)
        c.execute("UPDATE post SET body = %s WHERE id = %s",
                  (f"look ![x]({S.image_url(extra, w.version)})", w.ids["post_upload"]))
    pid = w.ids["post_upload"]
    r = fsq(["lemmy", "purge", "post", str(pid), "--incident", str(iid), "--reason", "CSAM",
             "--json"], env=w.env)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    files = {f["alias"]: f for f in out["plan"]["files"]}
    assert set(files) == {S.ALIAS, extra}
    assert files[S.ALIAS]["status"] == "in-vault" and files[S.ALIAS]["entry_id"] == "ve-trigger"
    assert files[extra]["status"] == "sealed" and files[extra]["why"] == "image in post body"
    api = "v4" if w.version == "1.0" else "v3"
    assert [(c["path"], c["body"]) for c in w.fake.actions()] == [
        (f"/api/{api}/admin/purge/post", {"post_id": pid, "reason": "CSAM"})]
    assert out["action"]["response"] == {"success": True}
    # reports about the post are in the snapshot
    snap = json.loads(conn.execute("SELECT snapshot FROM lemmy_actions").fetchone()[0])
    assert [rp["id"] for rp in snap["reports"]] == [w.ids["post_report"]]

    # the report's follow-up section: the action taken and command lines for the rest
    from fsq.reports import render
    settings = w.settings().replace(reports_dir="reports")
    res = render.generate_report(conn, iid, settings)
    html = res.path.read_text()
    fu = res.model["follow_up"]
    assert [(a["action"], a["state"]) for a in fu["taken"]] == [("purge-post", "done")]
    assert fu["taken"][0]["snapshot_sha256"] in html
    cmds = [s["command"] for s in fu["suggested"]]
    assert f"fsq lemmy purge post {pid} --incident {iid} --reason 'fsq incident {iid}'" in cmds
    assert f"fsq lemmy ban {w.ids['uploader']} --remove-data --incident {iid} " \
           f"--reason 'fsq incident {iid}'" in cmds
    assert f"fsq lemmy remove comment {w.ids['comment_nested']} --incident {iid}" in html
    assert "purge-post" in html and 'id="follow-up"' in html
    # no Lemmy text in a command line (names, titles are untrusted)
    assert all(re.fullmatch(r"fsq [a-z0-9 '-]+", c) for c in cmds), cmds


# --- remove: nothing destroyed, nothing sealed ------------------------------------------------

@pytest.mark.postgres
def test_remove_comment_seals_nothing(world, fsq):
    w = world
    cid = w.ids["comment_clean"]
    r = fsq(["lemmy", "remove", "comment", str(cid), "--reason", "spam"], env=w.env)
    assert r.exit_code == 0, r.output
    api = "v4" if w.version == "1.0" else "v3"
    assert [(c["path"], c["body"]) for c in w.fake.actions()] == [
        (f"/api/{api}/comment/remove", {"comment_id": cid, "removed": True, "reason": "spam"})]
    conn = connect("fsq.db")
    assert conn.execute("SELECT COUNT(*) FROM vault_entries").fetchone()[0] == 0
    assert conn.execute("SELECT state FROM lemmy_actions").fetchone()[0] == "done"


# --- credentials ------------------------------------------------------------------------------

@pytest.mark.postgres
def test_wrong_jwt_is_exit_2_and_nothing_sealed(world, fsq):
    w = world
    env = {**w.env, "FSQ_LEMMY_JWT": "wrong-token-value-123"}
    r = fsq(["lemmy", "ban", "uploader", "--remove-data", "--reason", "x"], env=env)
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("fsq: error")]
    assert len(err) == 1 and "FSQ_LEMMY_JWT" in err[0]
    assert "wrong-token-value-123" not in r.output
    conn = connect("fsq.db")
    assert not conn.execute("SELECT 1 FROM audit WHERE action='lemmy.action.done'").fetchall()
    if w.version == "0.19":
        # 0.19: the token is tested (GET /site my_user) before anything is sealed or sent
        assert w.fake.actions() == []
        assert conn.execute("SELECT COUNT(*) FROM vault_entries").fetchone()[0] == 0
    else:
        # 1.0 has no such check in /site: the evidence is sealed, the call is refused and
        # recorded as failed (not_logged_in)
        assert len(w.fake.actions()) == 1
        row = conn.execute("SELECT * FROM lemmy_actions").fetchone()
        assert row["state"] == "failed" and "not_logged_in" in row["error"]
    all_audit = " ".join(r["details"] for r in conn.execute("SELECT details FROM audit"))
    assert "wrong-token-value-123" not in all_audit


@pytest.mark.postgres
def test_login_with_password_and_wrong_password(world, fsq):
    w = world
    env = {k: v for k, v in w.env.items() if k != "FSQ_LEMMY_JWT"}
    bad = {**env, "FSQ_LEMMY_USERNAME": FL.USER, "FSQ_LEMMY_PASSWORD": "nope-wrong-pass"}
    r = fsq(["lemmy", "remove", "post", str(w.ids["post_upload"]), "--reason", "x"], env=bad)
    assert r.exit_code == 2 and "incorrect_login" in r.stderr
    assert "nope-wrong-pass" not in r.output and w.fake.actions() == []
    good = {**env, "FSQ_LEMMY_USERNAME": FL.USER, "FSQ_LEMMY_PASSWORD": FL.PASSWORD}
    r = fsq(["lemmy", "remove", "post", str(w.ids["post_upload"]), "--reason", "x", "--json"],
            env=good)
    assert r.exit_code == 0, r.output
    assert_no_secret(r.output)
    login = [c for c in w.fake.calls if "login" in c["path"]]
    assert login[-1]["path"] == ("/api/v4/account/auth/login" if w.version == "1.0"
                                 else "/api/v3/user/login")
    assert login[-1]["body"] == {"username_or_email": FL.USER, "password": FL.PASSWORD}
    assert w.fake.actions()[0]["authorization"] == f"Bearer {FL.JWT}"
    conn = connect("fsq.db")
    rows = " ".join(str(tuple(r)) for r in conn.execute("SELECT * FROM lemmy_actions"))
    assert_no_secret(rows)


# --- failures ---------------------------------------------------------------------------------

@pytest.mark.postgres
def test_server_down_is_exit_3_and_nothing_done(world, fsq):
    w = world
    env = {**w.env, "FSQ_LEMMY_URL": f"http://127.0.0.1:{closed_port()}"}
    r = fsq(["lemmy", "purge", "person", "uploader", "--reason", "x"], env=env)
    assert r.exit_code == 3, r.output
    assert "unreachable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    conn = connect("fsq.db")
    assert conn.execute("SELECT COUNT(*) FROM vault_entries").fetchone()[0] == 0
    assert not conn.execute("SELECT 1 FROM lemmy_actions WHERE state='done'").fetchall()
    assert not conn.execute("SELECT 1 FROM audit WHERE action LIKE 'lemmy.action.done'"
                            ).fetchall()


@pytest.mark.postgres
def test_failed_call_recorded_as_failed_with_server_message(world, fsq):
    w = world
    w.fake.fail_next = (400, {"error": "couldnt_update_post", "message": "db \x1b[31mboom"})
    r = fsq(["lemmy", "remove", "post", str(w.ids["post_upload"]), "--reason", "x"], env=w.env)
    assert r.exit_code == 3, r.output
    assert "couldnt_update_post" in r.stderr and "\x1b" not in r.stderr
    conn = connect("fsq.db")
    row = conn.execute("SELECT * FROM lemmy_actions").fetchone()
    assert row["state"] == "failed" and row["http_status"] == 400
    acts = [a for _, a, _ in audit_rows(conn)]
    assert "lemmy.action.failed" in acts and "lemmy.action.done" not in acts


@pytest.mark.postgres
def test_destructive_action_needs_the_lemmy_database(world, fsq):
    env = {k: v for k, v in world.env.items() if k != "FSQ_LEMMY_DATABASE_URL"}
    r = fsq(["lemmy", "purge", "post", "1", "--reason", "x"], env=env)
    assert r.exit_code == 2 and "FSQ_LEMMY_DATABASE_URL" in r.stderr
    env = {k: v for k, v in world.env.items() if k != "FSQ_LEMMY_URL"}
    r = fsq(["lemmy", "remove", "post", "1", "--reason", "x"], env=env)
    assert r.exit_code == 2 and "FSQ_LEMMY_URL" in r.stderr
    env = {k: v for k, v in world.env.items() if k != "FSQ_SOURCE"}
    r = fsq(["lemmy", "purge", "person", "uploader", "--reason", "x"], env=env)
    assert r.exit_code == 2 and "FSQ_SOURCE" in r.stderr
    r = fsq(["lemmy", "purge", "post", "1", "--reason", "  "], env=world.env)
    assert r.exit_code == 2 and "--reason" in r.stderr
    assert world.fake.actions() == []
    conn = connect("fsq.db")
    assert conn.execute("SELECT COUNT(*) FROM lemmy_actions").fetchone()[0] == 0


@pytest.mark.postgres
@pytest.mark.parametrize("version", ["0.19"])
def test_vault_down_midway_no_call_then_rerun_completes(version, pg_new_db, fsq, tmp_path,
                                                        s3_process, monkeypatch):
    """One file cannot be sealed (the vault's store goes down after the first seal): no Lemmy
    call is made; when the store is back, a rerun seals the rest and calls once."""
    bucket = s3_process.make_bucket()
    for k, v in s3_process.env.items():
        monkeypatch.setenv(k, v)
    with FL.FakeLemmy("0.19.5") as fake:
        w = World(version, pg_new_db, fsq, tmp_path, fake.url, vault=f"s3://{bucket}/q",
                  extra_env=s3_process.env)
        settings = w.settings()
        conn = connect("fsq.db")
        seen = []

        def progress(f, n, total):
            seen.append(f.alias)
            if n == 1:
                s3_process.stop()

        plan = plan_action(conn, settings, "ban", "uploader", reason="CSAM", remove_data=True)
        assert len(plan.files) == 1 + EXTRA
        with pytest.raises(ExternalError, match="nothing was sent to Lemmy"):
            execute_action(conn, settings, plan, progress=progress)
        assert fake.actions() == []
        assert len(seen) == 1
        row = conn.execute("SELECT * FROM lemmy_actions").fetchone()
        assert row["state"] == "failed"
        acts = [a for _, a, _ in audit_rows(conn)]
        assert "lemmy.action.failed" in acts and "lemmy.action.done" not in acts

        s3_process.start()
        r = fsq(["lemmy", "ban", "uploader", "--remove-data", "--reason", "CSAM", "--json"],
                env=w.env)
        assert r.exit_code == 0, r.output
        assert len(fake.actions()) == 1
        st = {f["status"] for f in json.loads(r.stdout)["plan"]["files"]}
        assert st <= {"sealed", "in-vault"}
        done = conn.execute("SELECT key FROM vault_entries WHERE state='done'").fetchall()
        assert {d[0] for d in done} == set(w.uploads.values())
        assert not conn.execute("SELECT 1 FROM vault_entries WHERE state IN "
                                "('sealing','stored','verified')").fetchall()


@pytest.mark.postgres
def test_community_ban_exact_fields(world, fsq):
    w = world
    r = fsq(["lemmy", "ban", "remote_guy@remote.example", "--community", "pics", "--expires",
             "2099-01-01", "--reason", "spam"], env=w.env)
    assert r.exit_code == 0, r.output
    (call,) = w.fake.actions()
    assert call["path"] == ("/api/v4/community/ban_user" if w.version == "1.0"
                            else "/api/v3/community/ban_user")
    data, exp = (("remove_or_restore_data", "expires_at") if w.version == "1.0"
                 else ("remove_data", "expires"))
    assert call["body"] == {"community_id": w.ids["community"], "person_id": w.ids["remote_guy"],
                            "ban": True, data: False, "reason": "spam", exp: 4070908800}


@pytest.mark.postgres
def test_hostile_alias_in_lemmy_db_blocks_the_action(world, fsq):
    """Someone with write access to Lemmy's database plants an alias that is a path: fsq never
    reads outside the store, and the destructive call is not made."""
    w = world
    with psycopg.connect(w.lemmy_db, autocommit=True) as c:
        if w.version == "1.0":
            c.execute("INSERT INTO local_image (pictrs_alias, person_id) VALUES (%s, %s)",
                      ("../../../etc/passwd", w.ids["uploader"]))
        else:
            c.execute("INSERT INTO local_image (pictrs_alias, local_user_id, "
                      "pictrs_delete_token) VALUES (%s, %s, 't')",
                      ("../../../etc/passwd", w.ids["lu_uploader"]))
    r = fsq(["lemmy", "ban", "uploader", "--remove-data", "--reason", "x", "--dry-run"],
            env=w.env)
    assert r.exit_code == 0 and "BLOCKED" in r.stdout
    r = fsq(["lemmy", "ban", "uploader", "--remove-data", "--reason", "x"], env=w.env)
    assert r.exit_code == 3, r.output
    assert "nothing was sent to Lemmy" in r.stderr
    assert w.fake.actions() == []
