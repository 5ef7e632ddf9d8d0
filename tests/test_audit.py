"""The audit chain detects edits, deletions, insertions, reordering, and (with an anchor)
truncation -- done the way an attacker with file access would: triggers dropped first."""

from __future__ import annotations

import sqlite3

import pytest

from fsq.ledger import audit
from fsq.ledger.db import connect


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "state.db"
    conn = connect(path)
    for i in range(1, 11):
        audit.append(conn, "test.event", f"incident:{i % 3}", {"i": i, "text": "é✓"})
    return path, conn


def attacker(path) -> sqlite3.Connection:
    c = sqlite3.connect(str(path), isolation_level=None)
    c.execute("DROP TRIGGER audit_no_update")
    c.execute("DROP TRIGGER audit_no_delete")
    return c


def test_intact_chain_verifies(db):
    _, conn = db
    r = audit.verify(conn)
    assert r.ok and r.rows == 10 and r.head == audit.head(conn)


def test_triggers_refuse_update_and_delete(db):
    _, conn = db
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET action='x' WHERE seq=3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq=10")


def test_edited_row_detected_at_its_seq(db):
    path, conn = db
    attacker(path).execute("UPDATE audit SET details='{\"i\":99}' WHERE seq=4")
    r = audit.verify(conn)
    assert not r.ok and r.bad_seq == 4 and "altered" in r.problem


def test_edit_with_recomputed_own_hash_breaks_next_link(db):
    path, conn = db
    a = attacker(path)
    row = a.execute("SELECT * FROM audit WHERE seq=5").fetchone()
    new_hash = audit.row_hash(row[8], 5, row[1], row[2], row[3], row[4], "forged", row[6],
                              row[7])
    a.execute("UPDATE audit SET action='forged', hash=? WHERE seq=5", (new_hash,))
    r = audit.verify(conn)
    assert not r.ok and r.bad_seq == 6 and "link" in r.problem


def test_deleted_row_detected(db):
    path, conn = db
    attacker(path).execute("DELETE FROM audit WHERE seq=7")
    r = audit.verify(conn)
    assert not r.ok and r.bad_seq == 7 and "missing" in r.problem


def test_inserted_row_detected(db):
    path, conn = db
    a = attacker(path)
    # shift rows 6..10 up by one (from the top, to keep seq unique) and insert a fake seq 6
    for s in range(10, 5, -1):
        a.execute("UPDATE audit SET seq=? WHERE seq=?", (s + 1, s))
    prev = a.execute("SELECT hash FROM audit WHERE seq=5").fetchone()[0]
    h = audit.row_hash(prev, 6, "2026-01-01T00:00:00.000000Z", "x@y", "0", "c", "fake", "s",
                       "{}")
    a.execute("INSERT INTO audit VALUES (6,'2026-01-01T00:00:00.000000Z','x@y','0','c','fake',"
              "'s','{}',?,?)", (prev, h))
    r = audit.verify(conn)
    assert not r.ok and r.bad_seq == 7


def test_reordered_rows_detected(db):
    path, conn = db
    a = attacker(path)
    a.execute("UPDATE audit SET seq=-1 WHERE seq=3")
    a.execute("UPDATE audit SET seq=3 WHERE seq=4")
    a.execute("UPDATE audit SET seq=4 WHERE seq=-1")
    r = audit.verify(conn)
    assert not r.ok and r.bad_seq == 3


def test_truncated_tail_needs_anchor(db):
    path, conn = db
    anchor = audit.head(conn)
    attacker(path).execute("DELETE FROM audit WHERE seq >= 9")
    assert audit.verify(conn).ok  # a shorter chain is still a valid chain...
    r = audit.verify(conn, anchor=anchor)
    assert not r.ok and r.bad_seq == 10 and "truncated" in r.problem


def test_rewritten_log_fails_anchor(db):
    path, conn = db
    anchor = "5:" + conn.execute("SELECT hash FROM audit WHERE seq=5").fetchone()[0]
    a = attacker(path)
    a.execute("DELETE FROM audit")
    # attacker rebuilds a fully consistent but different chain
    fresh = connect(path)
    for i in range(10):
        audit.append(fresh, "rewritten", "x", {"i": i})
    assert audit.verify(fresh).ok
    r = audit.verify(fresh, anchor=anchor)
    assert not r.ok and r.bad_seq == 5 and "anchor" in r.problem


def test_cli_verify_exit_codes(db, fsq):
    path, conn = db
    anchor = audit.head(conn)
    ok = fsq(["audit", "verify", "--db", str(path), "--anchor", anchor])
    assert ok.exit_code == 0 and "intact" in ok.stdout
    attacker(path).execute("UPDATE audit SET subject='x' WHERE seq=2")
    bad = fsq(["audit", "verify", "--db", str(path)])
    assert bad.exit_code == 4 and "row 2" in bad.stderr
    badj = fsq(["audit", "verify", "--db", str(path), "--json"])
    assert badj.exit_code == 4 and '"bad_seq": 2' in badj.stdout
    head = fsq(["audit", "head", "--db", str(path)])
    assert head.stdout.strip() == audit.head(conn)
    malformed = fsq(["audit", "verify", "--db", str(path), "--anchor", "nonsense"])
    assert malformed.exit_code == 2
