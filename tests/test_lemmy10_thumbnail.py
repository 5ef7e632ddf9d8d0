"""Lemmy 1.0 records a thumbnail it made from a link under the *post's creator*
(`local_image.person_id`) with `thumbnail_for_post_id` set. fsq must report such a file as
server-made, show the post's creator as the poster of the link, and never name them as the
uploader (nor put their IPs in the CyberTipline draft). Real CLI, real PostgreSQL with the 1.0
test schema, the pict-rs API stand-in."""

from __future__ import annotations

import json

import pytest

from fsq.ledger.db import connect
from tests import lemmy_seed as S
from tests.fake_pictrs import FakePictrs
from tests.test_report import make_incident

API_KEY = "thumb-test-api-key"
THUMB_KEY = "th/made-by-the-server.webp"


@pytest.mark.postgres
def test_server_made_thumbnail_on_1_0_names_the_link_poster_not_an_uploader(pg_new_db,
                                                                            fsq_proc):
    lemmy = pg_new_db()
    ids = S.seed_lemmy(lemmy, "1.0")
    conn = connect("fsq.db")
    iid = make_incident(conn, keys=(THUMB_KEY,))
    conn.close()
    with FakePictrs(API_KEY, {THUMB_KEY: [S.ALIAS2]}) as fake:
        r = fsq_proc(["report", str(iid), "--json"],
                     env={"FSQ_LEMMY_DATABASE_URL": lemmy, "FSQ_PICTRS_URL": fake.url,
                          "FSQ_PICTRS_API_KEY": API_KEY, "FSQ_INSTANCE_URL": S.INSTANCE_URL})
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["reports"][0]
    model = rep["report"]
    (up,) = model["linkage"]["uploads"]
    assert up["alias"] == S.ALIAS2 and up["server_made"] is True
    assert up["person"] is None and up["local_user_id"] is None and up["logins"] == []
    assert up["thumbnail_for_post_id"] == ids["post_link"]
    assert up["link_poster"]["name"] == "bystander"
    # the CyberTipline draft names no uploader and carries none of the poster's IPs
    ct = model["cybertip"]
    assert ct["personOrUserReported"] is None and ct["ipCaptureEvents"] == []
    assert S.BYSTANDER_IP not in r.stdout
    html = open(rep["path"], encoding="utf-8").read()
    assert "a thumbnail the server made" in html
    assert "Link posted by" in html and "bystander" in html
    assert "No uploader known." in html
    assert S.BYSTANDER_IP not in html
