"""Linkage against real PostgreSQL: Lemmy 0.19 and 1.0 schemas x (pict-rs repo | pict-rs API).

The pict-rs API is the only fake (tests/fake_pictrs.py, the documented interface on loopback);
Lemmy and the pict-rs repo are real PostgreSQL databases seeded by tests/lemmy_seed.py.
"""

from __future__ import annotations

import socket

import psycopg
import pytest

from fsq.config import load_settings
from fsq.errors import ExternalError
from fsq.ledger.db import connect
from fsq.lemmy import pictrs_api
from fsq.lemmy.lemmy_db import LemmyDB, detect_schema
from fsq.lemmy.linkage import link_incident
from fsq.lemmy.pictrs_repo import PictrsRepo, decode_hash, encode_hash, identifier_candidates
from tests import lemmy_seed as S
from tests.fake_pictrs import FakePictrs

pytestmark = pytest.mark.postgres

API_KEY = "s3cret-api-key-for-tests"


@pytest.fixture
def state(tmp_path):
    conn = connect(tmp_path / "fsq.db")
    yield conn
    conn.close()


def make_settings(tmp_path, **kw):
    return load_settings({}, environ={}, cwd=tmp_path).replace(**kw)


@pytest.fixture(params=["0.19", "1.0"])
def lemmy(request, pg_new_db):
    url = pg_new_db()
    ids = S.seed_lemmy(url, request.param)
    return url, request.param, ids


@pytest.fixture
def pictrs_db(pg_new_db):
    url = pg_new_db()
    S.seed_pictrs(url)
    return url


@pytest.fixture
def fake_pictrs():
    with FakePictrs(API_KEY, {S.ID1: [S.ALIAS, S.ALIAS2, S.ALIAS3],
                              S.ID_OTHER: [S.OTHER]}) as fake:
        yield fake


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hit_set(link, ids):
    return S.hit_names(link.hits, ids)


# --- pure helpers ------------------------------------------------------------------------------

def test_hash_roundtrip_and_rejects():
    h = encode_hash(S.SHA, 123456789, 7)
    d = decode_hash(h)
    assert (d.sha256, d.size, d.format_byte) == (S.SHA, 123456789, 7)
    assert decode_hash("not base64!") is None
    assert decode_hash(encode_hash(S.SHA, 1)[:-4]) is None     # wrong length


def test_identifier_candidates():
    assert identifier_candidates("files/ab/cd.webp") == ["files/ab/cd.webp", "ab/cd.webp"]
    assert identifier_candidates("ab/cd.webp") == ["ab/cd.webp"]


@pytest.mark.parametrize("cols, version, table", [
    ({"local_image": {"pictrs_alias", "person_id", "published_at"}, "post": set(),
      "person": {"ap_id"}}, "1.0", "local_image"),
    ({"local_image": {"pictrs_alias", "local_user_id", "published"}, "post": set(),
      "person": {"actor_id"}}, "0.19.4", "local_image"),
    ({"image_upload": {"pictrs_alias", "local_user_id"}, "post": set(), "person": set()},
     "0.19.0", "image_upload"),
    ({"post": set(), "person": {"actor_id"}}, "0.18", None),
])
def test_detect_schema(cols, version, table):
    info = detect_schema(cols)
    assert (info.version, info.image_table) == (version, table)


def test_detect_schema_rejects_non_lemmy():
    with pytest.raises(ExternalError, match="no Lemmy tables"):
        detect_schema({"hashes": {"hash"}})


# --- both schema versions x both routes --------------------------------------------------------

@pytest.mark.parametrize("route", ["repo", "api"])
def test_linkage_routes(route, lemmy, pictrs_db, fake_pictrs, state, tmp_path):
    url, version, ids = lemmy
    kw = {"lemmy_database_url": url, "instance_url": S.INSTANCE_URL}
    if route == "repo":
        kw["pictrs_database_url"] = pictrs_db
    else:
        kw.update(pictrs_url=fake_pictrs.url, pictrs_api_key=API_KEY)
    link = link_incident(state, S.SHA, [S.ID1], make_settings(tmp_path, **kw))

    assert link.lemmy_schema == ("1.0" if version == "1.0" else "0.19.4")
    used = set(link.sources_used)
    assert "lemmy-db" in used
    assert ("pictrs-repo" if route == "repo" else "pictrs-api") in used
    assert not link.sources_unavailable
    assert set(link.aliases[S.ID1]) == {S.ALIAS, S.ALIAS2, S.ALIAS3}

    expected = S.EXPECTED_COMMON | (S.EXPECTED_REPO_ONLY if route == "repo" else set())
    got = hit_set(link, ids)
    assert {h for h in got if h[0] != "custom_emoji"} == expected
    assert any(h.kind == "custom_emoji" for h in link.hits)
    assert not got & S.NEVER
    assert link.orphan is False

    # uploader, instance and IPs
    up = {u.alias: u for u in link.uploads}
    assert set(up) == {S.ALIAS, S.ALIAS2}
    u = up[S.ALIAS]
    assert u.person.name == "uploader" and u.person.local is True
    assert u.person.instance_domain == S.HOST
    assert u.email == "uploader@mail.example"
    assert {lg.ip for lg in u.logins} == set(S.UPLOADER_IPS)
    assert all(lg.user_agent == S.UA for lg in u.logins)
    assert up[S.ALIAS2].server_made and up[S.ALIAS2].person is None
    assert up[S.ALIAS2].local_user_id is None and not up[S.ALIAS2].logins
    if version == "1.0":
        # 1.0 records the thumbnail under the post's creator: the poster of the link
        assert up[S.ALIAS2].thumbnail_for_post_id == ids["post_link"]
        assert up[S.ALIAS2].link_poster.name == "bystander"
    assert S.BYSTANDER_IP not in repr(link.to_dict())
    assert "jwt-secret" not in repr(link.to_dict())           # login tokens are never read

    # creators, communities, flags
    hits = {(h.kind, h.id): h for h in link.hits}
    post = hits[("post", ids["post_upload"])]
    assert post.title.startswith(S.XSS_TITLE)                  # raw here; escaped by the report
    assert post.creator.name == "uploader"
    assert post.community.name == "pics" and post.community.instance_domain == S.HOST
    assert post.fields == ["url"]
    assert post.ap_id == f"https://{S.HOST}/post/1"
    assert post.published.startswith("2026-03-01T10:05")
    link_post = hits[("post", ids["post_link"])]
    assert link_post.fields == ["thumbnail_url"] and link_post.removed is True
    com = hits[("comment", ids["comment_nested"])]
    assert com.creator.name == "remote_guy" and com.creator.local is False
    # banned here: 0.19 person.banned, 1.0 an unexpired instance_actions ban
    assert com.creator.banned is True
    assert link_post.creator.name == "bystander" and link_post.creator.banned is False
    assert com.creator.instance_domain == S.REMOTE
    assert com.community.name == "pics"                        # via the post
    assert com.extra["post_id"] == ids["post_other"]
    pm = hits[("private_message", ids["pm"])]
    assert pm.extra["recipient"].name == "bystander"
    rep = hits[("post_report", ids["post_report"])]
    assert rep.creator.name == "reporter" and rep.extra["post_id"] == ids["post_upload"]
    if route == "repo":
        prox = hits[("comment", ids["comment_proxy"])]
        assert prox.proxied_urls == [S.REMOTE_URL] and prox.deleted is True


def test_api_route_caches_identifier_map(lemmy, fake_pictrs, state, tmp_path):
    url, version, ids = lemmy
    settings = make_settings(tmp_path, lemmy_database_url=url, pictrs_url=fake_pictrs.url,
                             pictrs_api_key=API_KEY, instance_url=S.INSTANCE_URL)
    link_incident(state, S.SHA, [S.ID1], settings)
    asked = fake_pictrs.count("/internal/identifier")
    assert asked == 3                                           # every local_image alias once
    rows = state.execute("SELECT identifier, alias, via FROM identifier_aliases").fetchall()
    assert {(r[0], r[1]) for r in rows} >= {(S.ID1, S.ALIAS), (S.ID1, S.ALIAS2),
                                           (S.ID_OTHER, S.OTHER), (S.ID1, S.ALIAS3)}
    assert {r[2] for r in rows} == {"pictrs-api"}
    # second report: nothing new to ask, aliases come from the cache
    link = link_incident(state, S.SHA, [S.ID1], settings)
    assert fake_pictrs.count("/internal/identifier") == asked
    assert link.state("cache").status == "used"
    assert set(link.all_aliases) == {S.ALIAS, S.ALIAS2, S.ALIAS3}


def test_api_wrong_key_is_reported_without_the_key(lemmy, fake_pictrs, state, tmp_path):
    url, _, _ = lemmy
    link = link_incident(state, S.SHA, [S.ID1], make_settings(
        tmp_path, lemmy_database_url=url, pictrs_url=fake_pictrs.url,
        pictrs_api_key="wrong-key-123"))
    st = link.state("pictrs-api")
    assert st.status == "unavailable" and "401" in st.detail
    assert "wrong-key-123" not in repr(link.to_dict())
    assert link.orphan is None                                  # cannot tell
    assert "lemmy-db" in link.sources_used


def test_api_client_errors(fake_pictrs):
    api = pictrs_api.PictrsApi(fake_pictrs.url, API_KEY)
    assert api.identifier(S.ALIAS) == S.ID1
    assert api.identifier("nope.png") is None
    assert api.aliases(S.OTHER) == [S.OTHER]
    assert API_KEY not in repr(api)
    assert api.purge(S.OTHER) == [S.OTHER]
    assert api.identifier(S.OTHER) is None                      # purged
    bad = pictrs_api.PictrsApi(fake_pictrs.url, "bad")
    with pytest.raises(ExternalError, match="401") as ei:
        bad.identifier(S.ALIAS)
    assert "bad" not in ei.value.message.replace("rejected", "")
    with pytest.raises(ExternalError, match="unreachable"):
        pictrs_api.PictrsApi(f"http://127.0.0.1:{closed_port()}", API_KEY).identifier("a")
    # a pict-rs without internal endpoints: 404 with no JSON body
    noapi = pictrs_api.PictrsApi(fake_pictrs.url + "/nothing", API_KEY)
    with pytest.raises(ExternalError, match="PICTRS__SERVER__API_KEY"):
        noapi.identifier("a")


def test_api_route_needs_lemmy(fake_pictrs, state, tmp_path):
    link = link_incident(state, S.SHA, [S.ID1], make_settings(
        tmp_path, pictrs_url=fake_pictrs.url, pictrs_api_key=API_KEY))
    assert link.state("pictrs-api").status == "unavailable"
    assert "local_image" in link.state("pictrs-api").detail
    assert link.state("lemmy-db").status == "not-configured"
    assert fake_pictrs.requests == []


# --- pict-rs repo details ---------------------------------------------------------------------

def test_repo_lookup_roles(pictrs_db):
    with PictrsRepo(pictrs_db) as repo:
        orig = repo.lookup("files/" + S.ID1)
        assert orig.role == "original" and orig.identifier == S.ID1
        assert orig.sha256_check(S.SHA) == "match"
        assert orig.sha256_check("0" * 64) == "mismatch"
        assert orig.decoded.size == S.SIZE
        assert [v["variant"] for v in orig.variants] == ["thumbnail/256/webp"]
        assert orig.proxies[0]["url"] == S.REMOTE_URL
        assert orig.details["width"] == 640
        var = repo.lookup(S.ID_VAR)
        assert var.role == "variant" and var.variant == "thumbnail/256/webp"
        assert set(var.aliases) == {S.ALIAS, S.ALIAS2, S.ALIAS3}
        assert var.sha256_check(S.SHA) == "not-comparable"
        assert repo.lookup("no/such/file.png") is None


def test_repo_motion_and_migrated(pictrs_db):
    with psycopg.connect(pictrs_db, autocommit=True) as c:
        c.execute("UPDATE hashes SET motion_identifier = 'motion/still.png' WHERE identifier=%s",
                  (S.ID1,))
        c.execute("INSERT INTO store_migrations VALUES ('old/place.jpeg', %s)", (S.ID_OTHER,))
    with PictrsRepo(pictrs_db) as repo:
        m = repo.lookup("motion/still.png")
        assert m.role == "motion" and S.ALIAS in m.aliases
        old = repo.lookup("old/place.jpeg")
        assert old.migrated_from == "old/place.jpeg" and old.aliases == [S.OTHER]


def test_repo_unknown_file_is_orphan(pictrs_db, state, tmp_path):
    link = link_incident(state, S.SHA, ["zz/unknown.png"],
                         make_settings(tmp_path, pictrs_database_url=pictrs_db))
    assert link.orphan is True and "no record" in link.orphan_reason
    assert "pictrs-repo" in link.sources_used


def test_repo_sha_mismatch_noted(pictrs_db, state, tmp_path):
    link = link_incident(state, "ab" * 32, [S.ID1],
                         make_settings(tmp_path, pictrs_database_url=pictrs_db))
    assert any("not the incident's" in n for n in link.notes)


def test_repo_wrong_database(pg_new_db, state, tmp_path):
    url = pg_new_db()
    link = link_incident(state, S.SHA, [S.ID1], make_settings(tmp_path, pictrs_database_url=url))
    st = link.state("pictrs-repo")
    assert st.status == "unavailable" and "table is missing" in st.detail


# --- Lemmy details ------------------------------------------------------------------------------

def test_lemmy_connection_is_read_only(lemmy):
    url, _, _ = lemmy
    with LemmyDB(url) as db:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            db.conn.execute("DELETE FROM post")
        db.conn.rollback()
    with psycopg.connect(url) as c:
        assert c.execute("SELECT count(*) FROM post").fetchone()[0] == 4


def test_lemmy_0_19_0_image_upload(pg_new_db, state, tmp_path):
    url = pg_new_db()
    ids = S.seed_lemmy(url, "0.19")
    with psycopg.connect(url, autocommit=True) as c:          # the 0.19.0-0.19.3 shape
        c.execute("DELETE FROM local_image WHERE local_user_id IS NULL")
        c.execute("ALTER TABLE local_image RENAME TO image_upload")
        c.execute("ALTER TABLE image_upload ALTER COLUMN local_user_id SET NOT NULL")
    pictrs_api.cache_put(state, [(S.ID1, S.ALIAS)], "test")
    link = link_incident(state, S.SHA, [S.ID1], make_settings(
        tmp_path, lemmy_database_url=url, instance_url=S.INSTANCE_URL))
    assert link.lemmy_schema == "0.19.0"
    assert [u.person.name for u in link.uploads] == ["uploader"]
    assert {lg.ip for lg in link.uploads[0].logins} == set(S.UPLOADER_IPS)
    assert ("post", "post_upload") in hit_set(link, ids)


def test_lemmy_instance_host_from_database(lemmy, state, tmp_path):
    url, _, ids = lemmy
    pictrs_api.cache_put(state, [(S.ID1, S.ALIAS)], "test")
    link = link_incident(state, S.SHA, [S.ID1], make_settings(tmp_path, lemmy_database_url=url))
    assert link.instance_host == S.HOST
    assert ("post", "post_otherhost") not in hit_set(link, ids)
    assert any("taken from the Lemmy database" in n for n in link.notes)


def test_lemmy_unreachable_hides_password(state, tmp_path):
    url = f"postgresql://lemmy_ro:Hunter2Secret@127.0.0.1:{closed_port()}/lemmy"
    link = link_incident(state, S.SHA, [S.ID1], make_settings(tmp_path, lemmy_database_url=url))
    st = link.state("lemmy-db")
    assert st.status == "unavailable" and "unreachable" in st.detail
    assert "Hunter2Secret" not in repr(link.to_dict())
    assert "postgresql://" not in st.detail and "FSQ_LEMMY_DATABASE_URL" in st.detail
    assert link.orphan is None


def test_lemmy_wrong_password_hides_it(pg_server, lemmy, state, tmp_path):
    url, _, _ = lemmy
    bad = url.replace(f":{pg_server.password}@", ":WrongPassw0rd@")
    link = link_incident(state, S.SHA, [S.ID1], make_settings(tmp_path, lemmy_database_url=bad))
    st = link.state("lemmy-db")
    assert st.status == "unavailable" and "password authentication failed" in st.detail
    assert "WrongPassw0rd" not in repr(link.to_dict())
    assert pg_server.password not in repr(link.to_dict())


def test_orphan_when_nothing_references(lemmy, state, tmp_path):
    url, _, _ = lemmy
    pictrs_api.cache_put(state, [("or/phan.png", "0f0f0f0f-1111-4222-8333-444455556666.png")],
                         "test")
    link = link_incident(state, "cd" * 32, ["or/phan.png"],
                         make_settings(tmp_path, lemmy_database_url=url))
    assert link.orphan is True and "references its aliases" in link.orphan_reason
    assert link.hits == [] and link.uploads == []


def test_no_linkage_configured(state, tmp_path):
    link = link_incident(state, S.SHA, [S.ID1], make_settings(tmp_path))
    assert link.sources_used == [] and link.sources_unavailable == []
    assert {s.name: s.status for s in link.sources} == {
        "cache": "not-needed", "pictrs-repo": "not-configured", "pictrs-api": "not-configured",
        "lemmy-db": "not-configured"}
    assert link.orphan is None and not link.any_configured


def test_invalid_utf8_from_sql_ascii_database(pg_new_db, state, tmp_path):
    url = pg_new_db("SQL_ASCII")
    ids = S.seed_lemmy(url, "0.19")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE person SET display_name = convert_from(%s::bytea, 'SQL_ASCII') "
                  "WHERE name = 'uploader'", (b"bad \xff\xfe bytes",))
    pictrs_api.cache_put(state, [(S.ID1, S.ALIAS)], "test")
    link = link_incident(state, S.SHA, [S.ID1], make_settings(
        tmp_path, lemmy_database_url=url, instance_url=S.INSTANCE_URL))
    u = link.uploads[0]
    assert u.person.display_name == "bad \ufffd\ufffd bytes"
    assert ("post", "post_upload") in hit_set(link, ids)


def test_aliases_cached_under_the_storage_key(pictrs_db, state, tmp_path):
    """`fsq purge` finds aliases by vault entry key, which may carry a files/ prefix."""
    link_incident(state, S.SHA, ["files/" + S.ID1],
                  make_settings(tmp_path, pictrs_database_url=pictrs_db))
    got = pictrs_api.cache_get(state, ["files/" + S.ID1, S.ID1])
    assert set(got["files/" + S.ID1]) == set(got[S.ID1]) == {S.ALIAS, S.ALIAS2, S.ALIAS3}
