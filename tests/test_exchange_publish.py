"""Publishing: which local decisions become statements, supersession, revocation, what the
feed serves (model verdicts only when the admin opted in)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fsq.errors import NotFound, UsageError
from fsq.exchange import dsse, publish
from fsq.exchange.publish import Publisher
from fsq.ledger import audit
from fsq.ledger.db import connect
from fsq.timeutil import iso

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def conn():
    c = connect("fsq.db")
    for i, sha in enumerate((A, B, C), 1):
        c.execute("INSERT INTO incidents (id, sha256, md5, state, created_at) VALUES "
                  "(?,?,?, 'quarantined', ?)", (i, sha, f"{i}" * 32, iso()))
    yield c
    c.close()


@pytest.fixture
def pub():
    return Publisher(key=Ed25519PrivateKey.generate(), instance="https://a.example")


def payloads(conn, include_model=False):
    recs, cursor, more = publish.feed_page(conn, since=0, limit=100,
                                           include_model=include_model)
    return [json.loads(base64.b64decode(r["dsse"]["payload"])) for r in recs]


def test_console_decision_and_audit_decisions_become_statements(conn, pub):
    publish.on_human_decision(conn, 1, "safe", "reviewer-1")
    audit.append(conn, "incident.reported", "incident:2", {"sha256": B, "md5": "2" * 32})
    res = publish.publish(conn, pub)
    got = {p["sha256"]: p["verdict"] for p in res["published"]}
    assert got == {A: "safe", B: "unsafe"}
    sts = payloads(conn)
    assert all(dsse.verify(r["dsse"], pub.key.public_key()) for r in
               publish.feed_page(conn, since=0, limit=10, include_model=False)[0])
    assert {s["subject"][0]["digest"]["md5"] for s in sts} == {"1" * 32, "2" * 32}
    assert "reviewer-1" not in json.dumps(sts)
    with pytest.raises(UsageError):
        publish.on_human_decision(conn, 1, "maybe", "x")
    with pytest.raises(NotFound):
        publish.on_human_decision(conn, 99, "safe", "x")


def test_changed_decision_supersedes_and_revoke(conn, pub):
    publish.on_human_decision(conn, 1, "safe", "r")
    first = publish.publish(conn, pub)["published"][0]["statement"]
    publish.on_human_decision(conn, 1, "unsafe", "r")
    second = publish.publish(conn, pub)["published"][0]
    assert second["verdict"] == "unsafe" and second["supersedes"] == first
    rev = publish.revoke(conn, pub, A)
    assert rev["revoked"] == second["statement"]
    last = payloads(conn)[-1]["predicate"]
    assert last["verdict"] == "unknown" and last["supersedes"] == second["statement"]
    with pytest.raises(UsageError, match="already revoked"):
        publish.revoke(conn, pub, A)
    with pytest.raises(UsageError, match="superseded"):
        publish.revoke(conn, pub, first)
    with pytest.raises(NotFound):
        publish.revoke(conn, pub, C)
    # Nothing pending: publishing again signs nothing (the revocation stands).
    assert publish.publish(conn, pub)["published"] == []


def test_dry_run_signs_nothing(conn, pub):
    publish.on_human_decision(conn, 1, "safe", "r")
    res = publish.publish_or_rehearse(conn, pub, dry_run=True)
    assert res["dry_run"] and len(res["published"]) == 1
    assert publish.list_statements(conn) == []
    assert len(publish.publish(conn, pub)["published"]) == 1


def test_model_verdicts_only_when_opted_in_and_human_wins(conn, pub):
    for sha, outcome in ((B, "flagged"), (C, "clean")):
        conn.execute("INSERT INTO verdicts (sha256, created_at, outcome, method, model_id, "
                     "concepts_digest, details) VALUES (?,?,?, 'clip', 'ViT-L-14/openai', 'cd',"
                     " ?)", (sha, iso(), outcome, json.dumps({"scores": {"child": 0.21}})))
    publish.on_human_decision(conn, 2, "safe", "r")       # a person overrides the model on B
    assert {p["sha256"] for p in publish.publish(conn, pub)["published"]} == {B}
    pub.include_model = True
    res = publish.publish(conn, pub)["published"]
    assert [(p["sha256"], p["method"], p["verdict"]) for p in res] == [(C, "model", "safe")]
    assert [s["predicate"]["method"] for s in payloads(conn)] == ["human"]
    model = [s for s in payloads(conn, include_model=True) if s["predicate"]["method"] ==
             "model"]
    assert model[0]["predicate"]["model"] == {"id": "ViT-L-14/openai", "concepts_digest": "cd",
                                              "scores": {"child": 0.21}}


def test_feed_pages_and_cursor_skips_hidden(conn, pub):
    for i in (1, 2, 3):
        publish.on_human_decision(conn, i, "unsafe", "r")
    publish.publish(conn, pub)
    recs, cursor, more = publish.feed_page(conn, since=0, limit=2, include_model=False)
    assert [r["cursor"] for r in recs] == ["1", "2"] and cursor == 2 and more
    recs, cursor, more = publish.feed_page(conn, since=2, limit=2, include_model=False)
    assert [r["cursor"] for r in recs] == ["3"] and not more
    assert publish.feed_page(conn, since=3, limit=2, include_model=False) == ([], 3, False)
