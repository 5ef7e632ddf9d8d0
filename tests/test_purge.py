"""Holds, clearance and purge end to end through the real CLI, with a real vault directory and
real SQLite (issue 4). FSQ_RETENTION_DAYS=0 unless a test says otherwise.

Incidents are made the way an admin would: a synthetic pict-rs store, `fsq init`, then
`fsq scan --all` with a known-hash list naming every image, so everything is flagged and
quarantined without the model.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from fsq.synth import make_store
from tests.fixtures.images import run_cli, run_proc


# --- helpers -----------------------------------------------------------------------------------

def ok(args: list[str], code: int = 0, **kw):
    r = run_cli(args, **kw)
    assert r.exit_code == code, (args, r.exit_code, r.output)
    return r


def js(args: list[str], code: int = 0):
    return json.loads(ok([*args, "--json"], code).stdout)


def vault_files(work: Path) -> dict[str, str]:
    """name -> sha256 of every file in the vault directory."""
    d = work / "quarantine"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def entries_of(work: Path, incident: int) -> list[str]:
    conn = sqlite3.connect(work / "fsq.db")
    try:
        return [r[0] for r in conn.execute("SELECT id FROM vault_entries WHERE incident_id=?",
                                           (incident,))]
    finally:
        conn.close()


def names(entry_ids: list[str]) -> set[str]:
    return {f"{e}.{k}" for e in entry_ids for k in ("key", "blob")}


def audit_events(action: str, subject: str | None = None) -> list[dict]:
    rows = js(["audit", "log", "--limit", "100000",
               *(["--subject", subject] if subject else [])])
    return [r for r in rows if r["action"] == action]


def details(event: dict) -> dict:
    d = event["details"]
    return json.loads(d) if isinstance(d, str) else d


@pytest.fixture
def quarantined(tmp_path, _isolated_env, monkeypatch):
    """Four quarantined incidents, ids 1-4 (vault in ./quarantine, db ./fsq.db)."""
    work = _isolated_env
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")
    root = tmp_path / "pictrs" / "files"
    keys = make_store(root, 4, seed=11, megapixels=(0.01, 0.03))
    shas = [hashlib.sha256((root / k).read_bytes()).hexdigest() for k in keys]
    (tmp_path / "known.txt").write_text("\n".join(shas) + "\n")
    (tmp_path / "pass").write_text("correct horse battery staple\n")
    (tmp_path / "pass").chmod(0o600)
    ok(["init", "--passphrase-file", str(tmp_path / "pass")])
    # clear, hold lift and purge unlock the custodian key with the same passphrase.
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", "correct horse battery staple")
    ok(["scan", "--all", "--source", f"file://{root}", "--hash-list",
        str(tmp_path / "known.txt")])
    rows = js(["incidents"])
    assert [r["display_state"] for r in rows] == ["quarantined"] * 4
    assert len(vault_files(work)) == 8
    return work


# --- the acceptance scenario -------------------------------------------------------------------

def test_purge_destroys_exactly_the_cleared_unheld_incident(quarantined):
    work = quarantined
    ok(["hold", "add", "2", "--kind", "litigation", "--reason", "case 23-cv-0815"])
    ok(["clear", "2", "--by", "A. Admin", "--reason", "reported, year over"])
    ok(["clear", "3", "--by", "A. Admin", "--reason", "reported, year over",
        "--reference", "TICKET-88"])
    ok(["incident", "mark-reported", "4", "--reference", "CyberTipline 123456789"])
    before = vault_files(work)

    # Dry run: says what would go and why each other incident stays; changes nothing.
    dry = js(["purge", "--after-clearance", "--dry-run"])
    by_id = {r["incident"]: r for r in dry["results"]}
    assert by_id[3]["status"] == "would-purge"
    assert by_id[1]["status"] == "kept" and by_id[1]["reasons"] == ["no clearance"]
    assert by_id[2]["status"] == "kept" and by_id[2]["reasons"] == ["hold 1 (litigation) active"]
    assert by_id[4]["reasons"] == ["no clearance"]
    human = ok(["purge", "--after-clearance", "--dry-run"]).stdout
    assert "hold 1 (litigation) active" in human and "no clearance" in human
    assert "would purge 1, kept 3" in human
    assert vault_files(work) == before
    assert js(["incidents"])[2]["display_state"] == "cleared"

    res = js(["purge", "--after-clearance"])
    assert res["purged"] == [3]
    gone = names(entries_of(work, 3))
    after = vault_files(work)
    assert not gone & set(after), "vault files of the purged incident remain"
    assert after == {n: h for n, h in before.items() if n not in gone}, \
        "other vault files changed"
    ok(["vault", "verify"])

    states = {r["id"]: r for r in js(["incidents"])}
    assert states[3]["display_state"] == "purged" and states[3]["vault_entries"] == 0
    assert states[2]["display_state"] == "held"
    assert states[4]["display_state"] == "reported"
    assert states[1]["display_state"] == "quarantined"
    assert states[1]["retention_end"] is not None and states[3]["retention_end"] is None

    v = ok(["audit", "verify"])
    assert "intact" in v.stdout
    purged = audit_events("purged", "incident:3")
    assert len(purged) == 1
    trace = details(purged[0])
    sha3 = states[3]["sha256"]
    assert trace["sha256"] == sha3 and len(trace["md5"]) == 32
    assert trace["cleared_by"] == "A. Admin" and trace["clear_reference"] == "TICKET-88"
    assert trace["mode"] == "clearance" and trace["quarantined_at"] and trace["purged_at"]
    assert sorted(trace["entries_shredded"]) == sorted(entries_of(work, 3))
    assert len(audit_events("purge.started", "incident:3")) == 1
    show = js(["incident", "show", "3"])
    assert show["purge_reason"].startswith("cleared by A. Admin")
    assert all(e["state"] == "purged" for e in show["entries"])
    assert {o["status"] for o in show["storage_keys"]} == {"purged"}

    # A second purge does nothing.
    audit_rows = len(js(["audit", "log", "--limit", "100000"]))
    again = js(["purge", "--after-clearance"])
    assert again["purged"] == [] and vault_files(work) == after
    assert len(audit_events("purged")) == 1
    assert len(js(["audit", "log", "--limit", "100000"])) == audit_rows  # nothing to record

    # Lifting the hold unblocks the cleared incident 2.
    lifted = js(["hold", "lift", "1", "--reason", "case closed"])
    assert lifted["status"] == "lifted" and lifted["was"] == "active"
    assert js(["purge", "--after-clearance"])["purged"] == [2]
    assert not names(entries_of(work, 2)) & set(vault_files(work))
    ok(["audit", "verify"])


def test_hold_until_in_the_past_no_longer_blocks(quarantined):
    soon = (datetime.now(timezone.utc) + timedelta(seconds=1.5)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    h = js(["hold", "add", "1", "--kind", "voluntary", "--reason", "keep a bit", "--until",
            soon])
    assert h["status"] == "active"
    ok(["clear", "1", "--by", "B", "--reason", "done"])
    assert js(["purge", "--after-clearance"])["purged"] == []
    time.sleep(1.6)
    assert js(["hold", "list"])[0]["status"] == "expired"
    assert js(["incidents"])[0]["display_state"] == "cleared"
    assert js(["purge", "--after-clearance"])["purged"] == [1]


def test_retention_blocks_until_it_runs_out(quarantined, monkeypatch):
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "365")
    ok(["clear", "1", "--by", "C", "--reason", "false alarm? no: reported, keep a year"])
    r = js(["purge", "--after-clearance", "--dry-run"])["results"][0]
    assert r["status"] == "kept" and r["reasons"][0].startswith("retention until ")
    assert js(["purge", "--after-clearance"])["purged"] == []
    # The report time starts the clock: reported 366 days ago means retention is over.
    long_ago = (datetime.now(timezone.utc) - timedelta(days=366)).strftime("%Y-%m-%dT%H:%M:%SZ")
    res = js(["incident", "mark-reported", "1", "--reference", "CT-1", "--at", long_ago])
    assert res["retention_end"] < datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert js(["purge", "--after-clearance"])["purged"] == [1]
    reported = audit_events("incident.reported", "incident:1")
    assert details(reported[0])["reference"] == "CT-1"


# --- destruction requests ----------------------------------------------------------------------

def test_destruction_request_destroys_one_incident_now(quarantined, monkeypatch):
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "365")  # retention and clearance do not matter
    work = quarantined
    before = vault_files(work)
    ok(["hold", "add", "2", "--kind", "law-enforcement", "--reason", "2703(f) request"])
    # Without --yes (and no terminal): refused, nothing deleted.
    r = ok(["purge", "--incident", "1", "--destruction-request", "FBI-DR-1"], 2)
    assert "--yes" in r.stderr and vault_files(work) == before
    # A hold is not overridden by a destruction request.
    r = ok(["purge", "--incident", "2", "--destruction-request", "FBI-DR-2", "--yes"], 2)
    assert "hold 1 (law-enforcement)" in r.stderr and vault_files(work) == before
    dry = js(["purge", "--incident", "1", "--destruction-request", "FBI-DR-1", "--dry-run"])
    assert dry["results"][0]["status"] == "would-purge" and vault_files(work) == before

    res = js(["purge", "--incident", "1", "--destruction-request", "FBI-DR-1", "--yes"])
    assert res["purged"] == [1]
    assert not names(entries_of(work, 1)) & set(vault_files(work))
    trace = details(audit_events("purged", "incident:1")[0])
    assert trace["mode"] == "destruction-request" and trace["destruction_request"] == "FBI-DR-1"
    assert trace["cleared_by"] is None
    # Again: a clear message, not a crash, and nothing more happens.
    r = ok(["purge", "--incident", "1", "--destruction-request", "FBI-DR-1", "--yes"])
    assert "already purged" in r.stdout
    assert len(audit_events("purged")) == 1
    # After lifting the hold (citing the request) the held one can go.
    ok(["hold", "lift", "1", "--reason", "superseded by destruction request FBI-DR-2"])
    assert js(["purge", "--incident", "2", "--destruction-request", "FBI-DR-2",
               "--yes"])["purged"] == [2]
    ok(["audit", "verify"])


# --- failure paths: clear messages, nothing lost -----------------------------------------------

def test_bad_input_is_a_clear_error_and_loses_nothing(quarantined):
    work = quarantined
    before = vault_files(work)
    r = ok(["purge", "--incident", "99", "--destruction-request", "X", "--yes"], 2)
    assert "no incident 99" in r.stderr and "Traceback" not in r.output
    assert "choose one" in ok(["purge"], 2).stderr
    assert "choose one" in ok(["purge", "--after-clearance", "--incident", "1"], 2).stderr
    assert "--destruction-request" in ok(["purge", "--incident", "1", "--yes"], 2).stderr
    assert "goes with --incident" in ok(["purge", "--after-clearance",
                                         "--destruction-request", "X"], 2).stderr
    assert "no incident 42" in ok(["clear", "42", "--by", "x", "--reason", "y"], 2).stderr
    assert "no incident 42" in ok(["hold", "add", "42", "--kind", "litigation",
                                   "--reason", "x"], 2).stderr
    assert "in the past" in ok(["hold", "add", "1", "--kind", "litigation", "--reason", "x",
                                "--until", "2020-01-01"], 2).stderr
    assert "not a date" in ok(["hold", "add", "1", "--kind", "litigation", "--reason", "x",
                               "--until", "soon"], 2).stderr
    assert ok(["hold", "add", "1", "--kind", "bogus", "--reason", "x"], 2).exit_code == 2
    assert "must not be empty" in ok(["hold", "add", "1", "--kind", "voluntary",
                                      "--reason", " "], 2).stderr
    assert "no hold 9" in ok(["hold", "lift", "9", "--reason", "x"], 2).stderr
    assert "not a hold number" in ok(["hold", "lift", "abc", "--reason", "x"], 2).stderr
    assert "in the future" in ok(["incident", "mark-reported", "1", "--reference", "x",
                                  "--at", "2999-01-01"], 2).stderr
    ok(["hold", "add", "1", "--kind", "voluntary", "--reason", "x"])
    ok(["hold", "lift", "1", "--reason", "done"])
    assert "already lifted" in ok(["hold", "lift", "1", "--reason", "again"], 2).stderr
    ok(["clear", "1", "--by", "x", "--reason", "y"])
    assert "already cleared" in ok(["clear", "1", "--by", "x", "--reason", "y"], 2).stderr
    assert vault_files(work) == before  # nothing above destroyed anything
    # Purged incidents cannot be held, cleared or reported again.
    assert js(["purge", "--after-clearance"])["purged"] == [1]
    for args in (["hold", "add", "1", "--kind", "litigation", "--reason", "x"],
                 ["clear", "1", "--by", "x", "--reason", "y"],
                 ["incident", "mark-reported", "1", "--reference", "x"]):
        r = ok(args, 2)
        assert "was purged on" in r.stderr, r.stderr
    r = ok(["purge", "--incident", "1", "--destruction-request", "X", "--yes", "--json"])
    assert json.loads(r.stdout)["results"][0]["status"] == "already-purged"
    ok(["audit", "verify"])


def test_edited_database_cannot_authorise_destruction(quarantined):
    """The clearance and holds must match the tamper-evident audit log."""
    work = quarantined
    before = vault_files(work)
    conn = sqlite3.connect(work / "fsq.db")
    with conn:  # a clearance nobody gave
        conn.execute("UPDATE incidents SET cleared_at=?, cleared_by='x', clear_reason='y', "
                     "state='cleared' WHERE id=1",
                     (datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),))
    r = run_cli(["purge", "--after-clearance", "--json"])
    assert r.exit_code == 4, r.output
    res = json.loads(r.stdout)["results"]
    assert res[0]["status"] == "refused" and "audit log" in res[0]["reasons"][0]
    assert vault_files(work) == before

    ok(["hold", "add", "2", "--kind", "litigation", "--reason", "x"])
    ok(["clear", "2", "--by", "x", "--reason", "y"])
    with conn:  # a hold quietly removed
        conn.execute("DELETE FROM holds WHERE id=1")
    conn.close()
    r = run_cli(["purge", "--after-clearance", "--json"])
    assert r.exit_code == 4
    res = {x["incident"]: x for x in json.loads(r.stdout)["results"]}
    assert res[2]["status"] == "refused" and "hold 1" in res[2]["reasons"][0]
    assert vault_files(work) == before
    assert audit_events("purge.refused")


# --- crash safety ------------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["purge-after-started", "purge-after-key", "purge-after-blob",
                                   "purge-after-entry", "purge-before-final"])
def test_sigkill_during_purge_resumes_safely(quarantined, point):
    work = quarantined
    ok(["clear", "2", "--by", "D", "--reason", "done"])
    before = vault_files(work)
    mine = names(entries_of(work, 2))
    p = run_proc(["purge", "--after-clearance"], env={"FSQ_TESTONLY_CRASH_AT": point},
                 cwd=str(work))
    assert p.returncode == -9, (p.returncode, p.stdout, p.stderr)
    assert js(["incidents"])[1]["display_state"] == "purging"
    left = set(vault_files(work))
    if point == "purge-after-key":  # crypto-shred order: the wrapped key goes first
        assert not any(n.endswith(".key") for n in mine & left)
        assert any(n.endswith(".blob") for n in mine & left)
    # Nothing else was touched, and a dry run says the purge will be finished.
    assert {n: h for n, h in vault_files(work).items() if n not in mine} == \
        {n: h for n, h in before.items() if n not in mine}
    dry = js(["purge", "--after-clearance", "--dry-run"])
    assert {r["incident"]: r["status"] for r in dry["results"]}[2] == "would-finish"

    res = js(["purge", "--after-clearance"])
    assert res["purged"] == [2] and res["results"][0]["resumed"] is True
    assert not mine & set(vault_files(work))
    assert vault_files(work) == {n: h for n, h in before.items() if n not in mine}
    assert len(audit_events("purged", "incident:2")) == 1
    assert len(audit_events("purge.started", "incident:2")) == 1
    ok(["audit", "verify"])
    ok(["vault", "verify"])
    assert js(["purge", "--after-clearance"])["purged"] == []


# --- pict-rs cleanup ---------------------------------------------------------------------------

class FakePictrs:
    """pict-rs's internal purge endpoint as documented: X-Api-Token, 401 on a wrong key."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.calls: list[tuple[str, str, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                u = urlsplit(self.path)
                alias = parse_qs(u.query).get("alias", [""])[0]
                fake.calls.append((u.path, alias, self.headers.get("X-Api-Token")))
                if self.headers.get("X-Api-Token") != fake.key:
                    return self._send(401, {"msg": "Invalid API Key", "code": "invalid-api-key"})
                if u.path != "/internal/purge":
                    return self._send(404, {"msg": "Not found", "code": "not-found"})
                return self._send(200, {"msg": "ok", "aliases": [alias]})

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pictrs():
    fake = FakePictrs("s3cr3t-api-key")
    yield fake
    fake.close()


def _learn_aliases(work: Path, incident: int, aliases: list[str]) -> None:
    from fsq.lemmy.pictrs_api import VIA_API, cache_put
    from fsq.ledger.db import connect
    conn = connect(work / "fsq.db")
    key = conn.execute("SELECT key FROM vault_entries WHERE incident_id=?",
                       (incident,)).fetchone()[0]
    cache_put(conn, [(key, a) for a in aliases], VIA_API)
    conn.close()


def test_pictrs_purge_on_purge(quarantined, pictrs, monkeypatch):
    work = quarantined
    _learn_aliases(work, 1, ["a1b2c3.png"])
    ok(["clear", "1", "--by", "E", "--reason", "done"])
    ok(["clear", "2", "--by", "E", "--reason", "done"])
    monkeypatch.setenv("FSQ_PICTRS_PURGE_ON_PURGE", "true")
    # Enabled but not configured: a configuration error before anything is destroyed.
    before = vault_files(work)
    assert "FSQ_PICTRS_URL" in ok(["purge", "--after-clearance"], 2).stderr
    assert vault_files(work) == before

    monkeypatch.setenv("FSQ_PICTRS_URL", pictrs.url)
    monkeypatch.setenv("FSQ_PICTRS_API_KEY", "s3cr3t-api-key")
    r = run_cli(["purge", "--after-clearance", "--json"])
    assert r.exit_code == 0, r.output
    res = {x["incident"]: x for x in json.loads(r.stdout)["results"]}
    assert res[1]["pictrs"]["purged"] == ["a1b2c3.png"] and res[1]["pictrs"]["error"] is None
    assert res[2]["pictrs"]["note"]  # no aliases known: nothing asked
    assert pictrs.calls == [("/internal/purge", "a1b2c3.png", "s3cr3t-api-key")]
    assert details(audit_events("purge.pictrs", "incident:1")[0])["aliases"] == ["a1b2c3.png"]
    assert "s3cr3t-api-key" not in r.output


def test_pictrs_failure_is_reported_and_the_purge_stands(quarantined, pictrs, monkeypatch):
    work = quarantined
    _learn_aliases(work, 3, ["zz9.webp"])
    ok(["clear", "3", "--by", "F", "--reason", "done"])
    monkeypatch.setenv("FSQ_PICTRS_PURGE_ON_PURGE", "true")
    monkeypatch.setenv("FSQ_PICTRS_URL", pictrs.url)
    monkeypatch.setenv("FSQ_PICTRS_API_KEY", "wrong-key-here")
    r = run_cli(["purge", "--after-clearance"])
    assert r.exit_code == 3, r.output
    assert "pict-rs cleanup FAILED" in r.stdout and "401" in r.stdout
    assert "wrong-key-here" not in r.output
    assert js(["incidents"])[2]["display_state"] == "purged"
    assert not names(entries_of(work, 3)) & set(vault_files(work))
    assert audit_events("purged", "incident:3")
    assert audit_events("purge.pictrs_failed", "incident:3")
    ok(["audit", "verify"])


# --- display -----------------------------------------------------------------------------------

def test_incidents_show_states_and_retention_end(quarantined, monkeypatch):
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "365")
    ok(["incident", "mark-reported", "1", "--reference", "CT-9", "--at", "2026-01-01T10:00:00Z"])
    ok(["hold", "add", "2", "--kind", "statutory", "--reason", "x", "--until", "2999-01-01"])
    ok(["clear", "3", "--by", "G", "--reason", "y"])
    rows = {r["id"]: r for r in js(["incidents"])}
    assert rows[1]["display_state"] == "reported" and rows[1]["state"] == "reported"
    assert rows[1]["retention_end"] == "2027-01-01T10:00:00.000000Z"
    assert rows[2]["display_state"] == "held" and rows[2]["active_holds"] == [1]
    assert rows[3]["display_state"] == "cleared"
    assert rows[4]["display_state"] == "quarantined"
    text = ok(["incidents"]).stdout
    assert "RETENTION_END" in text and "2027-01-01" in text and "held" in text
    assert [r["id"] for r in js(["incidents", "--state", "held"])] == [2]
    show = ok(["incident", "show", "2"]).stdout
    assert "hold 1 (statutory, active) until 2999-01-01T23:59:59.999999Z" in show


# --- object lock (S3 vault on a real moto endpoint) --------------------------------------------

def test_object_lock_blocks_purge_and_leaves_the_incident_whole(tmp_path, _isolated_env, s3,
                                                                 monkeypatch):
    bucket = s3.make_bucket(object_lock=True)
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FSQ_VAULT", f"s3://{bucket}/vault")
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")
    root = tmp_path / "pictrs" / "files"
    keys = make_store(root, 2, seed=5, megapixels=(0.01, 0.02))
    (tmp_path / "known.txt").write_text("".join(
        hashlib.sha256((root / k).read_bytes()).hexdigest() + "\n" for k in keys))
    (tmp_path / "pass").write_text("purge test passphrase\n")
    (tmp_path / "pass").chmod(0o600)
    ok(["init", "--passphrase-file", str(tmp_path / "pass")])
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", "purge test passphrase")
    ok(["scan", "--all", "--source", f"file://{root}", "--hash-list",
        str(tmp_path / "known.txt")])
    before = {k: s3.client.get_object(Bucket=bucket, Key=k)["Body"].read()
              for k in s3.keys(bucket)}
    assert len(before) == 4

    until = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%d")
    h = js(["hold", "add", "1", "--kind", "law-enforcement", "--reason", "2703(f)",
            "--until", until])
    assert h["object_lock"]["entries"] == 1 and h["object_lock"]["errors"] == []
    assert h["object_lock"]["locked_until"].startswith(until)
    lifted = js(["hold", "lift", "1", "--reason", "request withdrawn"])
    assert lifted["object_lock_until"].startswith(until)  # WORM: cannot be shortened
    ok(["clear", "1", "--by", "H", "--reason", "done"])
    ok(["clear", "2", "--by", "H", "--reason", "done"])

    res = js(["purge", "--after-clearance"])  # blocked is not a failure of the run
    by_id = {r["incident"]: r for r in res["results"]}
    assert by_id[1]["status"] == "blocked"
    assert by_id[1]["reasons"][0].startswith(f"object lock until {until}")
    assert by_id[2]["status"] == "purged"
    rows = {r["id"]: r for r in js(["incidents"])}
    assert rows[1]["state"] == "cleared" and rows[1]["vault_entries"] == 1  # left whole
    left = {k: s3.client.get_object(Bucket=bucket, Key=k)["Body"].read()
            for k in s3.keys(bucket)}
    mine = {f"vault/{n}" for n in names(entries_of(_isolated_env, 1))}
    assert set(left) == mine and all(left[k] == before[k] for k in mine)
    assert not any(s3.all_versions(bucket, f"vault/{n}")
                   for n in names(entries_of(_isolated_env, 2)))
    assert audit_events("purge.blocked", "incident:1")
    r = ok(["purge", "--incident", "1", "--destruction-request", "DR-7", "--yes"], 3)
    assert "BLOCKED" in r.stdout
    assert js(["incidents"])[0]["state"] == "cleared"
    ok(["audit", "verify"])
