"""Chain of custody against a database writer (issue 12): signed decisions, bound vault entries.

The attacker here can write the state database file (sqlite3, even fsq's own ``audit.append``
for correctly chained rows) but has no passphrase. Each attack is made on the real DB file,
then the real CLI runs as a separate process (``python -m fsq``) so the exit code is the
process's; every refusal must leave the vault byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fsq.ledger import audit
from fsq.synth import make_store
from tests.fixtures.images import run_cli, run_proc

PASS = "correct horse battery staple"


def ok(args, code=0):
    r = run_cli(args)
    assert r.exit_code == code, (args, r.exit_code, r.output)
    return r


def js(args, code=0):
    return json.loads(ok([*args, "--json"], code).stdout)


def proc(args, code, work):
    p = run_proc(args, cwd=str(work), timeout=120)
    assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
    return p


def vault_files(work: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((work / "quarantine").iterdir())}


def now_iso(delta_days: float = 0) -> str:
    t = datetime.now(timezone.utc) + timedelta(days=delta_days)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def db(work: Path) -> sqlite3.Connection:
    return sqlite3.connect(work / "fsq.db", isolation_level=None)


@pytest.fixture
def work(tmp_path, _isolated_env, monkeypatch):
    """Three quarantined incidents (1-3), retention 365 days, passphrase in the environment."""
    w = _isolated_env
    root = tmp_path / "pictrs" / "files"
    keys = make_store(root, 3, seed=21, megapixels=(0.01, 0.02))
    (tmp_path / "known.txt").write_text("".join(
        hashlib.sha256((root / k).read_bytes()).hexdigest() + "\n" for k in keys))
    (tmp_path / "pass").write_text(PASS + "\n")
    (tmp_path / "pass").chmod(0o600)
    ok(["init", "--passphrase-file", str(tmp_path / "pass")])
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", PASS)
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "365")
    ok(["scan", "--all", "--source", f"file://{root}", "--hash-list",
        str(tmp_path / "known.txt")])
    assert len(vault_files(w)) == 6
    return w


def refused(work: Path, incident: int, words: str) -> None:
    before = vault_files(work)
    p = proc(["purge", "--after-clearance", "--json"], 4, work)
    res = {r["incident"]: r for r in json.loads(p.stdout)["results"]}
    assert res[incident]["status"] == "refused", res[incident]
    assert words in res[incident]["reasons"][0], res[incident]["reasons"]
    assert vault_files(work) == before, "a refused purge destroyed something"
    assert not [r for r in res.values() if r["status"] == "purged"]


# --- the three early-destruction attacks -----------------------------------------------------

def test_edited_quarantined_at_cannot_shorten_retention(work):
    ok(["clear", "1", "--by", "A. Admin", "--reason", "reported, year over"])
    assert js(["purge", "--after-clearance"])["purged"] == []       # 365 days left: kept
    with db(work) as c:
        c.execute("UPDATE incidents SET quarantined_at='2020-01-01T00:00:00.000000Z' "
                  "WHERE id=1")
    ok(["audit", "verify"])                                         # the chain is intact...
    refused(work, 1, "quarantined_at in the database")              # ...but purge refuses
    # reported_at edited the same way (the report time starts the clock).
    with db(work) as c:
        c.execute("UPDATE incidents SET quarantined_at=(SELECT json_extract(details,'$.at') "
                  "FROM audit WHERE action='quarantined' AND subject='incident:1'), "
                  "reported_at='2020-01-01T00:00:00.000000Z' WHERE id=1")
    refused(work, 1, "reported_at in the database")


def test_backdated_report_event_appended_does_not_shorten_retention(work):
    ok(["clear", "1", "--by", "A. Admin", "--reason", "year over"])
    with db(work) as c:  # a correctly chained incident.reported, plus the matching column
        c.execute("BEGIN IMMEDIATE")
        audit.append(c, "incident.reported", "incident:1",
                     {"reference": "forged", "reported_at": "2020-01-01T00:00:00.000000Z"})
        c.execute("UPDATE incidents SET reported_at='2020-01-01T00:00:00.000000Z', "
                  "state='cleared' WHERE id=1")
        c.execute("COMMIT")
    ok(["audit", "verify"])
    refused(work, 1, "differs from its signed record (retention_start)")


def test_forged_clearance_with_chained_audit_row_is_refused(work, monkeypatch):
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")  # only the signature stands in the way
    with db(work) as c:
        c.execute("BEGIN IMMEDIATE")
        c.execute("UPDATE incidents SET cleared_at=?, cleared_by='x', clear_reason='y', "
                  "state='cleared' WHERE id=2", (now_iso(),))
        audit.append(c, "incident.cleared", "incident:2", {"by": "x", "reason": "y",
                                                            "reference": None})
        c.execute("COMMIT")
    ok(["audit", "verify"])
    refused(work, 2, "is not signed by the custodian")
    dry = json.loads(proc(["purge", "--after-clearance", "--dry-run", "--json"], 4,
                          work).stdout)["results"]
    assert {r["incident"]: r["status"] for r in dry}[2] == "refused"   # the rehearsal says so
    # A real signature copied from another incident's clearance does not fit either.
    ok(["hold", "add", "3", "--kind", "voluntary", "--reason", "keep it out of this purge"])
    ok(["clear", "3", "--by", "x", "--reason", "y"])
    with db(work) as c:
        c.execute("INSERT INTO custody_signatures (kind, incident_id, hold_id, record, "
                  "signature, fingerprint, created_at) SELECT kind, 2, hold_id, record, "
                  "signature, fingerprint, created_at FROM custody_signatures "
                  "WHERE incident_id=3")
    refused(work, 2, "differs from its signed record (incident)")
    # An edited record with the old signature: the signature no longer verifies.
    with db(work) as c:
        rec = json.loads(c.execute("SELECT record FROM custody_signatures WHERE incident_id=2"
                                   ).fetchone()[0])
        rec.update(incident=2, by="x", reason="y")
        c.execute("UPDATE custody_signatures SET record=? WHERE incident_id=2",
                  (audit.canonical_json(rec),))
    refused(work, 2, "does not verify")


def test_forged_hold_lift_is_refused(work, monkeypatch):
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")
    ok(["hold", "add", "1", "--kind", "litigation", "--reason", "case 23-cv-0815"])
    ok(["clear", "1", "--by", "A. Admin", "--reason", "done"])
    assert js(["purge", "--after-clearance"])["purged"] == []       # held
    with db(work) as c:
        c.execute("BEGIN IMMEDIATE")
        c.execute("UPDATE holds SET lifted_at=?, lifted_by='x', lift_reason='y' WHERE id=1",
                  (now_iso(),))
        audit.append(c, "hold.lifted", "incident:1", {"hold": 1, "kind": "litigation",
                                                      "reason": "y", "by": "x"})
        c.execute("COMMIT")
    ok(["audit", "verify"])
    refused(work, 1, "the lift of hold 1 is not signed by the custodian")
    # A destruction request does not get through a forged lift either.
    before = vault_files(work)
    p = proc(["purge", "--incident", "1", "--destruction-request", "DR-1", "--yes", "--json"],
             4, work)
    assert "lift of hold 1" in p.stdout and vault_files(work) == before
    # The real lift (signed) works.
    with db(work) as c:
        c.execute("UPDATE holds SET lifted_at=NULL, lifted_by=NULL, lift_reason=NULL")
    ok(["hold", "lift", "1", "--reason", "case closed"])
    assert js(["purge", "--after-clearance"])["purged"] == [1]
    ok(["audit", "verify"])


def test_legitimate_flow_signs_and_purges(work, monkeypatch):
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")
    c = ok(["clear", "1", "--by", "A. Admin", "--reason", "done", "--json"])
    ev = [e for e in js(["audit", "log", "--subject", "incident:1"])
          if e["action"] == "incident.cleared"][0]["details"]
    assert ev["signature"] and ev["fingerprint"] and ev["retention_start"]
    assert json.loads(c.stdout)["purge_eligible"] is True
    res = js(["purge", "--incident", "2", "--destruction-request", "FBI-DR-9", "--yes"])
    assert res["purged"] == [2]
    started = [e for e in js(["audit", "log", "--subject", "incident:2"])
               if e["action"] == "purge.started"][0]["details"]
    assert started["signature"]
    with db(work) as conn:
        kinds = {r[0] for r in conn.execute("SELECT kind FROM custody_signatures")}
    assert kinds == {"clearance", "destruction", "purge-start"}
    assert js(["purge", "--after-clearance"])["purged"] == [1]


def test_purge_needs_the_passphrase(work, monkeypatch):
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")
    ok(["clear", "1", "--by", "A", "--reason", "done"])
    monkeypatch.delenv("FSQ_VAULT_PASSPHRASE")
    before = vault_files(work)
    r = ok(["purge", "--after-clearance"], 2)
    assert "no vault passphrase" in r.stderr and vault_files(work) == before
    assert "no vault passphrase" in ok(["clear", "2", "--by", "A", "--reason", "x"], 2).stderr
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", "Xq9-not-it")
    assert "wrong passphrase" in ok(["purge", "--after-clearance"], 2).stderr
    assert js(["purge", "--after-clearance", "--dry-run"])["results"][0]["status"] == \
        "would-purge"                                               # dry run needs none
    assert vault_files(work) == before


def test_old_database_re_sign_migration(work, monkeypatch):
    """A clearance made before signatures existed: purge refuses and names the command;
    `fsq custody re-sign` signs it once (after checking it against the audit log)."""
    from fsq.custody.holds import clear_incident
    from fsq.ledger.db import connect
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")
    conn = connect(str(work / "fsq.db"))
    clear_incident(conn, 1, by="Old Admin", reason="cleared in 2026")     # unsigned
    conn.close()
    refused(work, 1, "fsq custody re-sign")
    dry = js(["custody", "re-sign", "--dry-run"])
    assert [(u["kind"], u["incident"]) for u in dry["unsigned"]] == [("clearance", 1)]
    assert "--yes" in ok(["custody", "re-sign"], 2).stderr
    assert [s["incident"] for s in js(["custody", "re-sign", "--yes"])["signed"]] == [1]
    assert "nothing to do" in ok(["custody", "re-sign", "--yes"]).stdout
    assert js(["purge", "--after-clearance"])["purged"] == [1]


def test_custodian_init_for_an_existing_install(work, monkeypatch):
    monkeypatch.setenv("FSQ_RETENTION_DAYS", "0")
    for name in ("custodian.key", "custodian.pub"):
        (work / "keys" / name).rename(work / name)
    r = ok(["clear", "1", "--by", "A", "--reason", "x"], 2)
    assert "fsq key custodian-init" in r.stderr
    out = js(["key", "custodian-init"])
    assert (work / "keys" / "custodian.key").stat().st_mode & 0o777 == 0o600
    assert "already exists" in ok(["key", "custodian-init"], 2).stderr
    # The audit log pinned the first custodian key: the replacement does not verify.
    ok(["clear", "1", "--by", "A", "--reason", "x"])
    refused(work, 1, "not the one the audit log recorded")
    assert out["fingerprint"]


def test_mark_reported_after_clearance_re_signs(work, monkeypatch):
    ok(["clear", "1", "--by", "A", "--reason", "x"])
    long_ago = (datetime.now(timezone.utc) - timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ok(["incident", "mark-reported", "1", "--reference", "CT-1", "--at", long_ago])
    assert js(["purge", "--after-clearance"])["purged"] == [1]


# --- vault entries bound to their incident -------------------------------------------------------

def test_moved_vault_entry_is_an_integrity_failure(work, tmp_path):
    src = tmp_path / "pictrs" / "files"
    with db(work) as c:
        e1 = c.execute("SELECT id, key FROM vault_entries WHERE incident_id=1").fetchone()
        c.execute("UPDATE vault_entries SET incident_id=2 WHERE id=?", (e1[0],))
    before = vault_files(work)
    listing = sorted(p.name for p in src.rglob("*") if p.is_file())
    p = proc(["vault", "verify", "--deep"], 4, work)
    assert e1[0] in p.stdout + p.stderr and "incident_id" in p.stdout + p.stderr
    p = proc(["release", "2", "--reason", "false positive"], 4, work)
    assert e1[0] in p.stderr and "incident_id" in p.stderr
    assert sorted(p.name for p in src.rglob("*") if p.is_file()) == listing, \
        "release restored something"
    assert vault_files(work) == before
    # Purge of the incident the entry was moved to would destroy incident 1's evidence.
    ok(["clear", "2", "--by", "A", "--reason", "x"])
    with db(work) as c:
        c.execute("UPDATE incidents SET state='cleared' WHERE id=2")
    run = run_proc(["purge", "--incident", "2", "--destruction-request", "DR-2", "--yes",
                    "--json"], cwd=str(work), timeout=120)
    assert run.returncode == 4 and e1[0] in run.stdout and vault_files(work) == before


def test_change_passphrase_re_encrypts_the_custodian_key(work, tmp_path, monkeypatch):
    from fsq.custody.custodian import unlock
    from fsq.secrets import Secret
    (tmp_path / "new").write_text("a brand new passphrase\n")
    monkeypatch.delenv("FSQ_VAULT_PASSPHRASE")
    r = ok(["key", "change-passphrase", "--passphrase-file", str(tmp_path / "pass"),
            "--new-passphrase-file", str(tmp_path / "new")])
    assert "custodian.key" in r.stdout
    assert unlock(work / "keys" / "custodian.key", Secret("a brand new passphrase")).fingerprint
    with pytest.raises(Exception, match="wrong passphrase"):
        unlock(work / "keys" / "custodian.key", Secret(PASS))
    raw = (work / "keys" / "custodian.key").read_text()
    assert json.loads(raw)["format"] == "fsq-custodian-private-key"
    monkeypatch.setenv("FSQ_VAULT_PASSPHRASE", "a brand new passphrase")
    ok(["clear", "1", "--by", "A", "--reason", "x"])


def test_altered_custodian_files_are_integrity_errors(work):
    pub = work / "keys" / "custodian.pub"
    text = pub.read_text().splitlines()
    magic, ver, key, fp = text[-1].split()
    pub.write_text("\n".join(text[:-1] + [f"{magic} {ver} {key} 0000-0000-0000-0000"]) + "\n")
    assert ok(["custody", "re-sign", "--dry-run"], 4).stderr.startswith("fsq: error: custodian")
    priv = work / "keys" / "custodian.key"
    doc = json.loads(priv.read_text())
    doc["ciphertext"] = doc["ciphertext"][:-4] + ("AAAA" if doc["ciphertext"][-4:] != "AAAA"
                                                   else "BBBB")
    priv.write_text(json.dumps(doc))
    assert "altered" in ok(["clear", "1", "--by", "A", "--reason", "x"], 4).stderr


def test_forged_purge_journal_is_not_resumed(work, tmp_path):
    """state='purging' plus a chained purge.started naming the entries: resuming a purge
    shreds without the other checks, so its journal must be signed."""
    with db(work) as c:
        entries = [r[0] for r in c.execute("SELECT id FROM vault_entries WHERE incident_id=1")]
        c.execute("BEGIN IMMEDIATE")
        c.execute("UPDATE incidents SET state='purging', purge_reason='x' WHERE id=1")
        audit.append(c, "purge.started", "incident:1",
                     {"mode": "clearance", "entries": entries, "reason": "x"})
        c.execute("COMMIT")
    ok(["audit", "verify"])
    refused(work, 1, "the interrupted purge of incident 1 is not signed by the custodian")
    # A real destruction request for incident 2 still goes ahead; incident 1 stays whole.
    p = proc(["purge", "--incident", "2", "--destruction-request", "DR-3", "--yes"], 4, work)
    assert "interrupted purge of incident 1" in p.stdout
    left = set(vault_files(work))
    assert {f"{e}.{k}" for e in entries for k in ("key", "blob")} <= left and len(left) == 4
