"""Reports are versioned: <id>.html is the newest report with the most linkage. A report made
while Lemmy's PostgreSQL is down is written beside the complete one, never over it; a report
that replaces <id>.html keeps the previous one as <id>.<timestamp>.html. Real CLI, real
PostgreSQL."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from fsq.ledger import audit
from fsq.ledger.db import connect
from tests import lemmy_seed as S
from tests.test_report import make_incident


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.postgres
def test_report_with_less_linkage_is_written_beside_not_over(pg_new_db, fsq_proc):
    conn = connect("fsq.db")
    iid = make_incident(conn)
    conn.close()
    lemmy, repo = pg_new_db(), pg_new_db()
    S.seed_lemmy(lemmy, "0.19")
    S.seed_pictrs(repo)
    up = {"FSQ_LEMMY_DATABASE_URL": lemmy, "FSQ_PICTRS_DATABASE_URL": repo,
          "FSQ_INSTANCE_URL": S.INSTANCE_URL}
    down = {**up, "FSQ_LEMMY_DATABASE_URL":
            f"postgresql://lemmy:pw@127.0.0.1:{_closed_port()}/lemmy"}
    reports = Path("reports")
    current = reports / f"{iid}.html"

    r = fsq_proc(["report", str(iid), "--json"], env=up)
    assert r.returncode == 0, r.stderr
    complete = current.read_bytes()
    assert b"203.0.113.7" in complete  # the uploader's login IP: Lemmy's DB answered

    # Lemmy's PostgreSQL is down: the new report lacks the uploader and IPs
    r = fsq_proc(["report", str(iid), "--json"], env=down)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["reports"][0]
    assert doc["current"] is False and doc["linkage_lost"] == ["lemmy-db"]
    assert "less linkage than the current" in r.stderr and "kept" in r.stderr
    beside = Path(doc["path"])
    assert beside.parent == reports and beside.name.startswith(f"{iid}.")
    assert beside.name != current.name
    assert current.read_bytes() == complete  # untouched
    assert b"203.0.113.7" not in beside.read_bytes()
    assert sorted(p.name for p in reports.iterdir()) == sorted([current.name, beside.name])

    # Lemmy is back: the new complete report becomes <id>.html, the previous one is kept
    r = fsq_proc(["report", str(iid), "--json"], env=up)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["reports"][0]
    assert doc["current"] is True and Path(doc["path"]).name == current.name
    kept = reports / doc["previous_kept_as"]
    assert kept.read_bytes() == complete
    assert b"203.0.113.7" in current.read_bytes()
    names = sorted(p.name for p in reports.iterdir())
    assert len(names) == 3 and current.name in names and kept.name in names
    assert all(n == current.name or n.startswith(f"{iid}.20") for n in names)

    conn = connect("fsq.db")
    evs = [json.loads(e["details"]) for e in audit.events(conn, subject=f"incident:{iid}")
           if e["action"] == "report.generated"]
    conn.close()
    assert [e["file"] for e in evs] == [current.name, beside.name, current.name]
    assert evs[1]["linkage_lost"] == ["lemmy-db"] and evs[2]["previous_kept_as"] == kept.name
    assert fsq_proc(["audit", "verify"]).returncode == 0


def test_same_linkage_replaces_and_keeps_every_version(fsq_proc):
    conn = connect("fsq.db")
    iid = make_incident(conn)
    conn.close()
    for _ in range(3):
        assert fsq_proc(["report", str(iid)]).returncode == 0
    names = sorted(p.name for p in Path("reports").iterdir())
    assert len(names) == 3 and f"{iid}.html" in names  # two kept versions, same second is ok
