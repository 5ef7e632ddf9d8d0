"""Hash banks, list formats and the matching rules (fsq.signals), through the real CLI where
an admin would use it."""

from __future__ import annotations

import hashlib
import io
import json
import random

import pytest

from fsq.ledger import audit
from fsq.ledger.db import connect
from fsq.signals import banks, formats
from fsq.signals.match import PdqMatcher, exact_match
from fsq.signals.pdq import FrameHash
from fsq.synth import synthetic_image

PDQ_A = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"
SHA = "b5b0799616df52d475a3968dc7e54f1d0724c912244ffa6175bc786375dd7298"
MD5 = "d35c785545392755e7e4164457657269"


def flip(hex_value: str, k: int) -> str:
    """hex_value with its first k bits inverted."""
    n = int(hex_value, 16) ^ (((1 << k) - 1) << (256 - k))
    return f"{n:064x}"


def audited(conn, action: str) -> list[dict]:
    return [{**dict(e), "details": json.loads(e["details"])}
            for e in audit.events(conn) if e["action"] == action]


def hma_csv() -> str:
    return ("signal_type,signal_value,note\n"
            f"pdq,{PDQ_A},bridge\n"
            f"sha256,{SHA},\n"
            f"md5,{MD5},\n"
            f"video_md5,{'ab' * 16},a video\n")


def test_import_export_roundtrip_in_hma_naming(fsq, tmp_path):
    src = tmp_path / "list.csv"
    src.write_text(hma_csv())
    r = fsq(["hashes", "import", str(src), "--bank", "partner", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["added"] == 4 and res["by_type"] == {"pdq": 1, "sha256": 1, "md5": 1,
                                                     "video_md5": 1}
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"out.{fmt}"
        r = fsq(["hashes", "export", "--bank", "partner", "--format", fmt, "-o", str(out)])
        assert r.exit_code == 0, r.output
        if fmt == "csv":
            assert out.read_text().splitlines()[0].startswith("signal_type,signal_value")
        again = fsq(["hashes", "import", str(out), "--bank", f"copy-{fmt}", "--json"])
        assert again.exit_code == 0, again.output
        got = {(s.signal_type, s.signal_value, s.note) for s in formats.parse(out.read_text())}
        want = {(s.signal_type, s.signal_value, s.note) for s in formats.parse(hma_csv())}
        assert got == want
    listed = json.loads(fsq(["hashes", "list", "--json"]).stdout)
    assert {b["name"]: b["signals"] for b in listed} == {
        "confirmed": 0, "safe": 0, "partner": 4, "copy-csv": 4, "copy-jsonl": 4}
    conn = connect("fsq.db")
    (ev,) = [e for e in audited(conn, "hashes.imported") if e["subject"] == "bank:partner"]
    assert ev["details"]["file_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_threatexchange_hash_output_lines_are_accepted():
    sigs = formats.parse(f"# from `threatexchange hash`\npdq {PDQ_A.upper()}\n\nmd5 {MD5}\n")
    assert [(s.signal_type, s.signal_value) for s in sigs] == [("pdq", PDQ_A), ("md5", MD5)]


def test_malformed_lines_are_reported_with_numbers_and_nothing_is_imported(fsq, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("signal_type,signal_value\n"
                   f"pdq,{PDQ_A}\n"              # line 2: fine
                   f"pdq,{PDQ_A[:-2]}zz\n"        # line 3: bad hex
                   f"sha256,{SHA[:40]}\n"         # line 4: wrong length
                   f"photodna,{SHA}\n"            # line 5: unknown type
                   '{"signal_type": "md5",\n')   # line 6: broken JSON
    r = fsq(["hashes", "import", str(bad), "--bank", "partner"])
    assert r.exit_code == 2
    for n, what in ((3, "not hex"), (4, "40 hex digits"), (5, "unknown signal type"),
                    (6, "not valid JSON")):
        assert f"line {n}: " in r.stderr and what in r.stderr, r.stderr
    assert "line 2" not in r.stderr and "nothing imported" in r.stderr
    conn = connect("fsq.db")
    assert conn.execute("SELECT COUNT(*) FROM bank_signals").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM banks WHERE name='partner'").fetchone()[0] == 0


def test_import_is_one_transaction(tmp_path, monkeypatch):
    """A failure halfway through the inserts leaves the bank as it was."""
    conn = connect("fsq.db")
    sigs = formats.parse(hma_csv())
    real = banks._insert

    def failing(conn, bank, signals, origin, incident_id):
        real(conn, bank, signals[:2], origin, incident_id)
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(banks, "_insert", failing)
    with pytest.raises(RuntimeError):
        banks.import_signals(conn, "partner", sigs, file_name="x", file_sha256="0" * 64)
    assert conn.execute("SELECT COUNT(*) FROM bank_signals").fetchone()[0] == 0
    assert banks.get_bank(conn, "partner") is None


def test_remove_by_file_and_id_is_audited(fsq, tmp_path):
    src = tmp_path / "list.csv"
    src.write_text(hma_csv())
    assert fsq(["hashes", "import", str(src), "--bank", "partner"]).exit_code == 0
    gone = tmp_path / "withdrawn.csv"
    gone.write_text(f"sha256,{SHA}\n")
    r = fsq(["hashes", "remove", str(gone), "--bank", "partner", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["removed"] == 1, r.output
    entries = json.loads(fsq(["hashes", "list", "--bank", "partner", "--json"]).stdout)
    assert len(entries) == 3 and SHA not in {e["signal_value"] for e in entries}
    r = fsq(["hashes", "remove", "--bank", "partner", "--id", str(entries[0]["id"])])
    assert r.exit_code == 0 and "1 removed" in r.stdout
    assert fsq(["hashes", "remove", "--bank", "partner"]).exit_code == 2  # nothing chosen
    assert fsq(["hashes", "remove", "--bank", "nope", "--all"]).exit_code == 2  # a missing bank: usage (2)
    r = fsq(["hashes", "remove", "--bank", "partner", "--all", "--json"])
    assert json.loads(r.stdout)["removed"] == 2
    conn = connect("fsq.db")
    removed = audited(conn, "hashes.removed")
    assert len(removed) == 3
    assert removed[0]["details"]["file_sha256"] == hashlib.sha256(gone.read_bytes()).hexdigest()
    assert banks.get_bank(conn, "partner") is None        # an emptied imported bank goes
    assert banks.get_bank(conn, "confirmed") is not None


def test_bad_bank_names_and_safe_bank_refuses_md5(fsq, tmp_path):
    src = tmp_path / "list.csv"
    src.write_text(hma_csv())
    r = fsq(["hashes", "import", str(src), "--bank", "../etc"])
    assert r.exit_code == 2 and "not valid" in r.stderr
    r = fsq(["hashes", "import", str(src), "--bank", "safe", "--json"])
    assert r.exit_code == 0
    res = json.loads(r.stdout)
    assert res["added"] == 2 and res["refused_md5_in_safe"] == 2
    conn = connect("fsq.db")
    # an md5 never vouches for content (collisions can be made); sha256 does
    assert exact_match(conn, "0" * 64, MD5) is None
    v = exact_match(conn, SHA, MD5)
    assert v.outcome == "clean" and v.method == "sha256" and v.details["bank"] == "safe"


def test_exact_matches_flag_with_bank_and_entry(tmp_path):
    conn = connect("fsq.db")
    banks.import_signals(conn, "partner", formats.parse(hma_csv()), file_name="l",
                         file_sha256="0" * 64)
    v = exact_match(conn, "1" * 64, MD5)
    assert (v.outcome, v.method, v.details["bank"], v.details["matched"]) == (
        "flagged", "md5", "partner", MD5)
    v = exact_match(conn, "1" * 64, "ab" * 16)
    assert v.method == "md5" and v.details["signal_type"] == "video_md5"
    assert exact_match(conn, "1" * 64, "2" * 32) is None


def _bank(conn, name, values, kind="unsafe"):
    banks.import_signals(conn, name, [formats.Signal("pdq", v, 100) for v in values],
                         file_name=name, file_sha256="0" * 64)
    if kind == "safe":
        conn.execute("UPDATE banks SET kind='safe' WHERE name=?", (name,))


def test_matching_rules():
    conn = connect("fsq.db")
    _bank(conn, "confirmed", [PDQ_A])
    safe_value = flip(PDQ_A, 200)
    banks.import_signals(conn, "safe", [formats.Signal("pdq", safe_value, 100)],
                         file_name="s", file_sha256="0" * 64)
    m = PdqMatcher.load(conn, distance=31, safe_distance=10)
    near = FrameHash(0, flip(PDQ_A, 31), 100)
    hit = m.match([near])
    assert (hit.bank, hit.kind, hit.distance, hit.matched) == ("confirmed", "unsafe", 31,
                                                               PDQ_A)
    assert m.match([FrameHash(0, flip(PDQ_A, 32), 100)]) is None
    # quality below 50 is never matched, even at distance 0
    assert m.match([FrameHash(0, PDQ_A, 49)]) is None
    # any frame of an animation near an unsafe entry flags it
    far = FrameHash(1, flip(PDQ_A, 128), 100)
    assert m.match([far, near]).frame.frame == 0
    # safe: every frame must be within the strict distance
    s_near = FrameHash(0, flip(safe_value, 10), 100)
    assert m.match([s_near]).kind == "safe"
    assert m.match([FrameHash(0, flip(safe_value, 11), 100)]) is None
    assert m.match([s_near, far]) is None
    assert m.match([s_near, FrameHash(1, safe_value, 20)]) is None   # low-quality frame
    # new entries are picked up by refresh; removal too
    assert m.match([FrameHash(0, "0" * 64, 100)]) is None
    banks.import_signals(conn, "partner", [formats.Signal("pdq", "0" * 64, None)],
                         file_name="p", file_sha256="1" * 64)
    m.refresh(conn)
    assert m.match([FrameHash(0, "0" * 64, 100)]).bank == "partner"
    banks.remove_signals(conn, "partner", everything=True)
    m.refresh(conn)
    assert m.match([FrameHash(0, "0" * 64, 100)]) is None


def test_compute_prints_hashes_and_an_importable_list(fsq, tmp_path):
    img = tmp_path / "pic.jpg"
    buf = io.BytesIO()
    synthetic_image(random.Random(3), 500, 400).save(buf, "JPEG")
    img.write_bytes(buf.getvalue())
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    r = fsq(["hashes", "compute", str(img), str(junk), "--json"])
    assert r.exit_code == 0, r.output
    a, b = json.loads(r.stdout)
    assert a["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    assert len(a["pdq"]) == 1 and len(a["pdq"][0]["pdq"]) == 64
    assert b["pdq"] == [] and "not an image" in b["unreadable"]
    text = fsq(["hashes", "compute", "--csv", str(img)]).stdout
    assert {s.signal_type for s in formats.parse(text)} == {"sha256", "md5", "pdq"}
    human = fsq(["hashes", "compute", str(img)]).stdout
    assert f"pdq      {a['pdq'][0]['pdq']}  quality {a['pdq'][0]['quality']}" in human
    missing = fsq(["hashes", "compute", str(tmp_path / "nope.jpg")])
    assert missing.exit_code == 1 and "cannot read" in missing.stderr


def test_add_files_and_incident_errors(fsq, tmp_path):
    img = tmp_path / "logo.png"
    buf = io.BytesIO()
    synthetic_image(random.Random(4), 300, 300).save(buf, "PNG")
    img.write_bytes(buf.getvalue())
    r = fsq(["hashes", "add", "--safe", str(img), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["by_type"] == {"sha256": 1, "pdq": 1}   # no md5 in safe
    assert fsq(["hashes", "add", "--incident", "5"]).exit_code == 2      # no such incident
    assert fsq(["hashes", "add"]).exit_code == 2
    assert fsq(["hashes", "add", "--safe", "--bank", "confirmed", str(img)]).exit_code == 2
    conn = connect("fsq.db")
    assert len(audited(conn, "hashes.added")) == 1


def test_hostile_list_text(fsq, tmp_path):
    """Control characters in notes are neutralised; NUL bytes and non-UTF-8 are refused."""
    sigs = formats.parse(f'{{"signal_type": "md5", "signal_value": "{MD5}", '
                         f'"note": "\\u001b[31mred\\r\\nfake line"}}\n')
    assert sigs[0].note == "?[31mred??fake line"
    nul = tmp_path / "nul.csv"
    nul.write_bytes(f"md5,{MD5}\nmd5,{MD5[:-1]}\x00\n".encode())
    r = fsq(["hashes", "import", str(nul), "--bank", "partner"])
    assert r.exit_code == 2 and "line 2: " in r.stderr
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"md5," + MD5.encode() + b",caf\xe9\n")
    r = fsq(["hashes", "import", str(latin), "--bank", "partner"])
    assert r.exit_code == 2 and "not UTF-8" in r.stderr
    assert connect("fsq.db").execute("SELECT COUNT(*) FROM bank_signals").fetchone()[0] == 0


def test_hand_edited_bank_rows_do_not_stop_matching():
    """Someone with write access to the DB puts junk into bank_signals: it is skipped."""
    conn = connect("fsq.db")
    banks.import_signals(conn, "partner", [formats.Signal("pdq", PDQ_A, 100)],
                         file_name="p", file_sha256="0" * 64)
    for junk in ("zz" * 32, "ab" * 10, "ab" * 40):
        conn.execute("INSERT INTO bank_signals (bank, signal_type, signal_value, origin, "
                     "added_at) VALUES ('partner', 'pdq', ?, 'hand', 'x')", (junk,))
    m = PdqMatcher.load(conn)
    assert m.size == 1 and m.match([FrameHash(0, PDQ_A, 100)]).distance == 0


def test_partly_examined_file_is_never_vouched_for_by_safe():
    from types import SimpleNamespace

    from fsq.signals.match import check_decoded
    from fsq.signals.pdq import hash_image
    im = synthetic_image(random.Random(8), 400, 300)
    value, q = hash_image(im)
    conn = connect("fsq.db")
    banks.import_signals(conn, "safe", [formats.Signal("pdq", value, q)], file_name="s",
                         file_sha256="0" * 64)
    m = PdqMatcher.load(conn)

    def decoded(incomplete):
        return SimpleNamespace(frames=[im.copy()], sampled=[0], media_type="image/png",
                               width=400, height=300, n_frames=1, incomplete=incomplete)

    frames, v = check_decoded(m, decoded(None))
    assert v.outcome == "clean" and v.method == "pdq" and frames[0].pdq == value
    assert check_decoded(m, decoded("pixel budget reached"))[1] is None
