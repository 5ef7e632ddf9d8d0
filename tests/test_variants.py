"""Each image decided once: pict-rs variants and motion files take their original's verdict
(fsq.engine.variants), against a real PostgreSQL pict-rs repo (tests/data/pictrs_0_5.sql) and
the tiny model.

The store: original A (the model says clean), its two variants; original B (listed in a hash
list: flagged), its two variants and its motion still; a variant C1 whose original is in the
repo but not in the store. Variants sort before their originals, so the scan meets each one
before the original it depends on.
"""

from __future__ import annotations

import hashlib
import json
import socket

import psycopg
import pytest

from fsq.engine.variants import original_decision
from fsq.ledger import state
from fsq.ledger.db import connect
from fsq.lemmy.pictrs_repo import encode_hash
from fsq.lemmy.variants import links_from_rows
from tests.fixtures.images import jpeg_bytes, png_bytes
from tests.fixtures.model import concepts_file
from tests.lemmy_seed import load_schema

pytestmark = pytest.mark.postgres

PASS = "correct horse battery staple"

A = "aa/01/a0000000000a.jpeg"
B = "bb/01/b0000000000b.jpeg"
C = "cc/01/c0000000000c.jpeg"            # in the repo, not in the store
A1, A2 = "00/a1/000000000a01.webp", "00/a2/000000000a02.png"
B1, B2 = "00/b1/000000000b01.webp", "00/b2/000000000b02.png"
BM = "00/bm/000000000b0m.jpeg"             # B's motion still
C1 = "00/c1/000000000c01.png"
ORIGINALS = {A: jpeg_bytes(96, 64, seed=11), B: jpeg_bytes(96, 64, seed=12),
             C: jpeg_bytes(96, 64, seed=13)}
DERIVED = {A1: png_bytes(48, 32, seed=21), A2: png_bytes(24, 16, seed=22),
           B1: png_bytes(48, 32, seed=23), B2: png_bytes(24, 16, seed=24),
           BM: jpeg_bytes(96, 64, seed=25), C1: png_bytes(48, 32, seed=26)}


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def seed_repo(url: str) -> None:
    load_schema(url, "pictrs_0_5.sql")
    h = {k: encode_hash(sha(v), len(v), 1) for k, v in ORIGINALS.items()}
    with psycopg.connect(url, autocommit=True) as c:
        for ident in (A, B, C):
            c.execute("INSERT INTO hashes (hash, identifier, motion_identifier) "
                      "VALUES (%s, %s, %s)", (h[ident], ident, BM if ident == B else None))
        for orig, var, ident in ((A, "thumbnail/256/webp", A1), (A, "resize/64/png", A2),
                                 (B, "thumbnail/256/webp", B1), (B, "resize/64/png", B2),
                                 (C, "thumbnail/256/webp", C1)):
            c.execute("INSERT INTO variants (hash, variant, identifier) VALUES (%s, %s, %s)",
                      (h[orig], var, ident))


@pytest.fixture
def site(tmp_path, pg_db, fsq, tiny_model):
    store = tmp_path / "pictrs" / "files"
    for key, data in {**ORIGINALS, **DERIVED}.items():
        if key == C:
            continue
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        (store / key).write_bytes(data)
    seed_repo(pg_db)
    listed = tmp_path / "bad.txt"
    listed.write_text(sha(ORIGINALS[B]) + "\n")
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    assert fsq(["init", "--passphrase-file", str(pw)]).exit_code == 0
    cfg, ckpt = tiny_model
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg), "FSQ_PRETRAINED": str(ckpt),
           "FSQ_CONCEPTS": str(concepts_file(tmp_path, 2.0)),  # the model flags nothing
           "FSQ_HASH_LISTS": str(listed), "FSQ_PICTRS_DATABASE_URL": pg_db}
    return store, env


def verdicts() -> dict[str, dict]:
    conn = connect("fsq.db")
    out = {}
    for r in conn.execute("SELECT o.key, o.status, v.* FROM objects o "
                          "JOIN verdicts v ON v.id = o.verdict_id"):
        out[r["key"]] = {**dict(r), "details": json.loads(r["details"])}
    conn.close()
    return out


def scan(fsq, env, *extra):
    r = fsq(["scan", "--all", "--json", *extra], env=env)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_variants_inherit_and_a_flagged_original_takes_them_into_its_incident(site, fsq):
    store, env = site
    s = scan(fsq, env)
    assert s["status"] == "finished" and s["errors"] == 0
    # Only A and the orphaned variant C1 went through the model; five files inherited.
    assert s["classified"] == 2 and s["inherited"] == 5, s
    assert s["flagged"] == 4 and s["quarantined"] == 4 and s["clean"] == 4
    v = verdicts()
    # A variant inherits its original's clean model verdict, traceably.
    for key in (A1, A2):
        assert v[key]["method"] == "variant-of" and v[key]["outcome"] == "clean"
        d = v[key]["details"]
        assert d["original_verdict"] == v[A]["id"] and v[A]["method"] == "clip"
        assert d["original_sha256"] == sha(ORIGINALS[A]) and d["original_identifier"] == A
        assert d["role"] == "variant" and v[key]["settings_digest"] == v[A]["settings_digest"]
    assert v[A1]["details"]["variant"] == "thumbnail/256/webp"
    # A flagged original: its variants and motion file are flagged into ITS incident.
    assert v[B]["method"] == "hash-list"
    for key, role in ((B1, "variant"), (B2, "variant"), (BM, "motion")):
        assert v[key]["method"] == "variant-of" and v[key]["outcome"] == "flagged", key
        assert v[key]["details"]["role"] == role
        assert v[key]["details"]["original_verdict"] == v[B]["id"]
    # The variant whose original is not in the store was scanned like any file.
    assert v[C1]["method"] == "clip"
    conn = connect("fsq.db")
    (inc,) = conn.execute("SELECT * FROM incidents").fetchall()
    assert inc["sha256"] == sha(ORIGINALS[B]) and inc["state"] == "quarantined"
    entries = conn.execute("SELECT key, sha256, state FROM vault_entries WHERE incident_id=?",
                           (inc["id"],)).fetchall()
    assert {(e["key"], e["sha256"], e["state"]) for e in entries} == {
        (k, sha(b), "done") for k, b in ((B, ORIGINALS[B]), (B1, DERIVED[B1]),
                                         (B2, DERIVED[B2]), (BM, DERIVED[BM]))}
    members = {r["sha256"]: r["role"] for r in conn.execute("SELECT * FROM incident_content")}
    assert members == {sha(DERIVED[B1]): "variant", sha(DERIVED[B2]): "variant",
                       sha(DERIVED[BM]): "motion"}
    conn.close()
    for key in (B, B1, B2, BM):
        assert not (store / key).exists(), key     # evidence: sealed and removed
    for key in (A, A1, A2, C1):
        assert (store / key).exists(), key
    # The incident lists every storage key it holds; the audit chain is intact.
    r = fsq(["incident", "show", str(inc["id"]), "--json"], env=env)
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert {k["key"] for k in shown["storage_keys"]} == {B, B1, B2, BM}
    assert fsq(["audit", "verify"], env=env).exit_code == 0


def test_without_linkage_every_file_is_classified(site, fsq):
    _, env = site
    s = scan(fsq, {**env, "FSQ_VARIANT_LINKAGE": "off"}, "--dry-run")
    assert s["classified"] == 7 and s["inherited"] == 0 and s["flagged"] == 1, s
    assert all(v["method"] != "variant-of" for v in verdicts().values())


def test_dry_run_then_apply_seals_variants_into_the_originals_incident(site, fsq):
    store, env = site
    s = scan(fsq, env, "--dry-run")
    assert s["flagged"] == 4 and s["inherited"] == 5 and s["dry_run"], s
    assert all((store / k).exists() for k in (B, B1, B2, BM))   # dry run: nothing moved
    r = fsq(["apply", "--json"], env=env)
    assert r.exit_code == 0, r.output
    conn = connect("fsq.db")
    (inc,) = conn.execute("SELECT * FROM incidents").fetchall()
    keys = {e["key"] for e in conn.execute("SELECT key FROM vault_entries WHERE state='done' "
                                           "AND incident_id=?", (inc["id"],))}
    assert keys == {B, B1, B2, BM}
    conn.close()


def test_repo_out_of_reach_scans_every_file(site, fsq):
    _, env = site
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]   # closed again: nothing listens there
    r = fsq(["scan", "--all", "--json", "--dry-run"],
            env={**env, "FSQ_PICTRS_DATABASE_URL":
                 f"postgresql://u:hunter2pw@127.0.0.1:{port}/pictrs"})
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["status"] == "finished" and s["classified"] == 7 and s["inherited"] == 0, s
    assert "hunter2pw" not in r.output


def test_released_incident_releases_its_variants(site, fsq, tmp_path):
    store, env = site
    scan(fsq, env)
    conn = connect("fsq.db")
    (inc,) = conn.execute("SELECT id FROM incidents").fetchall()
    conn.close()
    r = fsq(["release", str(inc["id"]), "--reason", "false positive", "--passphrase-file",
             str(tmp_path / "pass.txt")], env=env)
    assert r.exit_code == 0, r.output
    assert all((store / k).exists() for k in (B, B1, B2, BM))
    s = scan(fsq, env, "--rescan", "--dry-run")
    assert s["flagged"] == 0, s       # the variants are allowlisted with their original
    v = verdicts()
    assert {v[k]["method"] for k in (B, B1, B2, BM)} == {"allowlist"}


# --- what may be inherited: a state database an attacker may have written ----------------------

ORIG = "ab" * 32


def _verdict(conn, outcome, method, sha256=ORIG, details=None, digest=None) -> int:
    with conn:
        return state.insert_verdict(conn, sha256, state.VerdictRecord(
            outcome, method, "x", details=details, settings_digest=digest))


def test_only_real_decisions_are_inherited(tmp_path):
    conn = connect(tmp_path / "s.db")
    assert original_decision(conn, ORIG) is None                      # not decided yet
    _verdict(conn, "unreadable", "decode")
    assert original_decision(conn, ORIG) is None                      # not a decision
    _verdict(conn, "clean", "variant-of", details={"original_verdict": 1})
    assert original_decision(conn, ORIG) is None                      # no chains
    _verdict(conn, "clean", "attestation")
    assert original_decision(conn, ORIG) is None                      # a peer's word
    _verdict(conn, "clean", "cache", details={"reused_verdict": 999})
    assert original_decision(conn, ORIG) is None                      # reuse of nothing
    vid = _verdict(conn, "clean", "clip", digest="d1")
    assert original_decision(conn, ORIG, settings_digest="d2") is None  # other settings
    p = original_decision(conn, ORIG, settings_digest="d1")
    assert p.outcome == "clean" and p.verdict["id"] == vid
    assert original_decision(conn, ORIG, settings_digest="d1", after_verdict=vid) is None
    cache = _verdict(conn, "clean", "cache", details={"reused_verdict": vid}, digest="d1")
    p = original_decision(conn, ORIG, settings_digest="d1")
    assert p.verdict["id"] == vid and cache != vid                    # named: the real one
    # An open incident wins over any later clean verdict.
    with conn:
        flag = state.insert_verdict(conn, ORIG, state.VerdictRecord("flagged", "clip", "f"))
        iid, _ = state.ensure_incident(conn, sha256=ORIG, md5=None, size=1, media_type=None,
                                       width=None, height=None, verdict_id=flag)
    _verdict(conn, "clean", "clip", digest="d1")
    p = original_decision(conn, ORIG, settings_digest="d1")
    assert p.outcome == "flagged" and p.incident_id == iid and p.verdict["id"] == flag
    # Released content is never flagged again.
    with conn:
        state.allowlist_add(conn, ORIG, "released", iid)
    assert original_decision(conn, ORIG).outcome == "clean"
    conn.close()


def test_ambiguous_repo_rows_give_no_link():
    h = encode_hash(ORIG, 10, 1)
    rows = [("x/1.png", "variant", "thumbnail/1/png", h, "o/1.jpeg"),
            ("x/2.png", "variant", "t", h, "o/1.jpeg"), ("x/2.png", "original", None, h, "x/2.png"),
            ("x/3.png", "variant", "t", h, "x/3.png"),            # a variant of itself
            ("x/4.png", "variant", "t", "not-a-pictrs-hash", "o/1.jpeg"),
            ("x/5.png", "motion", None, h, "o/1.jpeg")]
    links = links_from_rows(["x/1.png", "x/2.png", "x/3.png", "x/4.png", "files/x/5.png",
                             "x/6.png"], rows)
    assert set(links) == {"x/1.png", "files/x/5.png"}
    assert links["x/1.png"].original_sha256 == ORIG and links["x/1.png"].derived
    assert links["files/x/5.png"].role == "motion"


def test_rescan_variants_wait_for_their_originals_new_verdict(site, fsq, tmp_path):
    """Under --rescan a variant never takes the verdict its original had before the pass:
    A was clean; now A is in the hash list, and its variants (listed before A) follow it."""
    _, env = site
    scan(fsq, env, "--dry-run")
    listed = tmp_path / "bad2.txt"
    listed.write_text(sha(ORIGINALS[A]) + "\n")
    s = scan(fsq, {**env, "FSQ_HASH_LISTS": str(listed)}, "--dry-run", "--rescan")
    v = verdicts()
    assert v[A]["method"] == "hash-list"
    for key in (A1, A2):
        assert (v[key]["method"], v[key]["outcome"]) == ("variant-of", "flagged"), key
        assert v[key]["details"]["original_verdict"] == v[A]["id"]
    assert s["inherited"] == 5, s


def test_rescore_flags_the_variants_of_an_original_it_flags(site, fsq, tmp_path):
    """`fsq rescore` re-decides originals from their stored embeddings; the variants that had
    inherited the clean verdict follow it into its incident and are quarantined with it."""
    store, env = site
    scan(fsq, env)                                   # A clean (model), A1/A2 inherit clean
    r = fsq(["rescore", "--concepts", str(concepts_file(tmp_path, -1.0)), "--json"], env=env)
    assert r.exit_code == 0, r.output
    v = verdicts()
    assert v[A]["method"] == "rescore"
    conn = connect("fsq.db")
    inc = conn.execute("SELECT * FROM incidents WHERE sha256=?", (sha(ORIGINALS[A]),)
                       ).fetchone()
    entries = {e["key"] for e in conn.execute("SELECT key FROM vault_entries WHERE "
                                              "incident_id=? AND state='done'", (inc["id"],))}
    conn.close()
    for key in (A1, A2):
        assert (v[key]["method"], v[key]["outcome"]) == ("variant-of", "flagged"), key
        assert v[key]["details"]["original_verdict"] == v[A]["id"]
    assert {A, A1, A2} <= entries and not (store / A1).exists()
