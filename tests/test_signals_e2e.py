"""Known-content matching end to end, through the real CLI (issue 15 "Done when"):

* an incident added to `confirmed` with `fsq hashes add --incident` catches a resized,
  re-encoded and cropped copy under another key, by PDQ, with the distance recorded, under a
  concept set where the model flags nothing;
* a released image re-encoded is clean by the `safe` bank under a concept set where the model
  flags everything;
* `fsq hashes rematch` flags clean objects that match a new bank entry without reading them;
* `fsq serve` rejects such a copy too.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

from PIL import Image

from fsq.ledger.db import connect
from fsq.synth import synthetic_image
from tests.fixtures.model import concepts_file
from tests.test_signals_pdq import PDQ_DATA

PASS = "correct horse battery staple 15"


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def resized_reencoded_cropped(data: bytes) -> bytes:
    """5% of the picture cut away (a border, 1.3% per side), shrunk to 60%, JPEG quality 60."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    k = math.sqrt(0.95)
    cw, ch = round(w * k), round(h * k)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    return jpeg(im.resize((int(cw * 0.6), int(ch * 0.6)), Image.Resampling.LANCZOS), 60)


def put(store: Path, key: str, data: bytes) -> None:
    p = store / key
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def verdicts() -> dict[str, dict]:
    conn = connect("fsq.db")
    out = {}
    for r in conn.execute("SELECT o.key, o.status, v.method, v.reason, v.details FROM objects o "
                          "JOIN verdicts v ON v.id = o.verdict_id"):
        out[r["key"]] = {"status": r["status"], "method": r["method"], "reason": r["reason"],
                         "details": json.loads(r["details"])}
    return out


def test_confirmed_copy_flagged_by_pdq_and_released_copy_clean_by_safe(tmp_path, fsq,
                                                                        tiny_model):
    store = tmp_path / "pictrs" / "files"
    bridge = (PDQ_DATA / "bridge-mods" / "aaa-orig.jpg").read_bytes()
    scene = jpeg(synthetic_image(random.Random(11), 640, 480))
    put(store, "00/a0/bridge.jpeg", bridge)
    put(store, "01/a1/scene.jpeg", scene)
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    assert fsq(["init", "--passphrase-file", str(pw)]).exit_code == 0
    cfg, ckpt = tiny_model
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg), "FSQ_PRETRAINED": str(ckpt)}
    flag_all = {**env, "FSQ_CONCEPTS": str(concepts_file(tmp_path, -1.0))}
    flag_none = {**env, "FSQ_CONCEPTS": str(concepts_file(tmp_path, 2.0))}

    # 1. Both flagged by the model and quarantined; their PDQ is recorded.
    r = fsq(["scan", "--all", "--json"], env=flag_all)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quarantined"] == 2
    conn = connect("fsq.db")
    inc = {r["key"]: r["incident_id"] for r in conn.execute(
        "SELECT key, incident_id FROM vault_entries")}
    assert conn.execute("SELECT COUNT(*) FROM content_pdq WHERE quality >= 50"
                        ).fetchone()[0] == 2

    # 2. The bridge is confirmed: its hashes go into `confirmed`.
    r = fsq(["hashes", "add", "--incident", str(inc["00/a0/bridge.jpeg"]), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["by_type"] == {"sha256": 1, "md5": 1, "pdq": 1}

    # 3. The scene was a false positive: release puts it into `safe`.
    r = fsq(["release", str(inc["01/a1/scene.jpeg"]), "--reason", "a drawing",
             "--passphrase-file", str(pw)])
    assert r.exit_code == 0, r.output
    safe = json.loads(fsq(["hashes", "list", "--bank", "safe", "--json"]).stdout)
    assert {e["signal_type"] for e in safe} == {"sha256", "pdq"}
    assert {e["origin"] for e in safe} == {f"release:{inc['01/a1/scene.jpeg']}"}

    # 4. A modified copy of the bridge under another key, and an unrelated image; the model
    #    flags nothing under this concept set.
    put(store, "02/b2/copy.jpeg", resized_reencoded_cropped(bridge))
    put(store, "03/b3/other.jpeg", jpeg(synthetic_image(random.Random(12), 640, 480)))
    r = fsq(["scan", "--all", "--dry-run", "--json"], env=flag_none)
    assert r.exit_code == 0, r.output
    v = verdicts()
    copy = v["02/b2/copy.jpeg"]
    assert copy["status"] == "flagged" and copy["method"] == "pdq", copy
    d = copy["details"]
    assert d["bank"] == "confirmed" and 0 < d["distance"] <= 31 and d["threshold"] == 31
    assert d["matched"] == safe_or_confirmed_pdq(fsq, "confirmed")
    print(f"\nPDQ distance of the resized + re-encoded + cropped copy: {d['distance']}")
    assert v["03/b3/other.jpeg"]["status"] == "clean"
    assert v["03/b3/other.jpeg"]["method"] == "clip"
    conn = connect("fsq.db")
    flagged = [json.loads(e["details"]) for e in conn.execute(
        "SELECT details FROM audit WHERE action='flagged'")]
    (ev,) = [e for e in flagged if e["key"] == "02/b2/copy.jpeg"]
    assert ev["method"] == "pdq" and "confirmed" in ev["reason"]

    # 5. The released image, re-encoded, under a concept set that flags everything: clean by
    #    the safe bank; a new unrelated image is flagged by the model (the set does flag).
    put(store, "04/b4/scene-again.jpeg",
        jpeg(Image.open(io.BytesIO(scene)).convert("RGB"), 70))
    put(store, "05/b5/new.jpeg", jpeg(synthetic_image(random.Random(13), 640, 480)))
    r = fsq(["scan", "--all", "--dry-run", "--json"], env=flag_all)
    assert r.exit_code == 0, r.output
    v = verdicts()
    again = v["04/b4/scene-again.jpeg"]
    assert (again["status"], again["method"], again["details"]["bank"]) == (
        "clean", "pdq", "safe"), again
    assert again["details"]["distance"] <= 10
    assert (v["05/b5/new.jpeg"]["status"], v["05/b5/new.jpeg"]["method"]) == (
        "flagged", "clip")


def safe_or_confirmed_pdq(fsq, bank: str) -> str:
    rows = json.loads(fsq(["hashes", "list", "--bank", bank, "--json"]).stdout)
    (value,) = [e["signal_value"] for e in rows if e["signal_type"] == "pdq"]
    return value


def test_rematch_flags_clean_objects_from_stored_pdq_without_reading_them(tmp_path, fsq,
                                                                          tiny_model):
    store = tmp_path / "files"
    bridge = (PDQ_DATA / "bridge-mods" / "aaa-orig.jpg").read_bytes()
    put(store, "a/bridge.jpeg", bridge)
    put(store, "b/other.jpeg", jpeg(synthetic_image(random.Random(5), 640, 480)))
    cfg, ckpt = tiny_model
    env = {"FSQ_SOURCE": f"file://{store}", "FSQ_MODEL": str(cfg), "FSQ_PRETRAINED": str(ckpt),
           "FSQ_CONCEPTS": str(concepts_file(tmp_path, 2.0))}
    r = fsq(["scan", "--all", "--dry-run", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout)["clean"] == 2, r.output
    # A partner's list holds a PDQ of a modified copy (computed by hand, as an admin would).
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(resized_reencoded_cropped(bridge))
    listing = fsq(["hashes", "compute", "--csv", str(copy)]).stdout
    lst = tmp_path / "partner.csv"
    lst.write_text("\n".join(l for l in listing.splitlines() if not l.startswith(("sha", "md5"))))
    assert fsq(["hashes", "import", str(lst), "--bank", "partner"]).exit_code == 0
    for p in store.rglob("*.jpeg"):
        p.unlink()   # rematch must not need the files
    r = fsq(["hashes", "rematch", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    dry = json.loads(r.stdout)
    assert dry["flagged"] == 0 and [m["key"] for m in dry["matches"]] == ["a/bridge.jpeg"]
    assert verdicts()["a/bridge.jpeg"]["status"] == "clean"
    r = fsq(["hashes", "rematch", "--json"])
    res = json.loads(r.stdout)
    (m,) = res["matches"]
    assert (m["key"], m["method"], m["bank"]) == ("a/bridge.jpeg", "pdq", "partner")
    assert m["incident"] is not None and 0 < m["distance"] <= 31
    v = verdicts()
    assert v["a/bridge.jpeg"]["status"] == "flagged" and v["a/bridge.jpeg"]["details"]["rematch"]
    assert v["b/other.jpeg"]["status"] == "clean"
    assert json.loads(fsq(["hashes", "rematch", "--json"]).stdout)["matches"] == []
    assert fsq(["audit", "verify"]).exit_code == 0


def test_serve_rejects_a_copy_of_confirmed_content(tmp_path, fsq, tiny_model):
    from tests.test_serve import db_rows, post, serving, settings_for
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    assert fsq(["init", "--passphrase-file", str(pw)]).exit_code == 0
    orig = tmp_path / "bridge.jpg"
    orig.write_bytes((PDQ_DATA / "bridge-mods" / "aaa-orig.jpg").read_bytes())
    assert fsq(["hashes", "add", "--bank", "confirmed", str(orig)]).exit_code == 0
    settings = settings_for(tiny_model, concepts_file(tmp_path, 2.0))
    with serving(settings) as s:
        status, _ = post(s.port, "/validate", resized_reencoded_cropped(orig.read_bytes()),
                         ctype="image/jpeg")
        assert status == 406
        status, _ = post(s.port, "/validate", jpeg(synthetic_image(random.Random(9), 400, 300)),
                         ctype="image/jpeg")
        assert status == 200
    rows = db_rows("SELECT v.outcome, v.method, v.details FROM objects o JOIN verdicts v "
                   "ON v.id = o.verdict_id ORDER BY o.id")
    assert [(r["outcome"], r["method"]) for r in rows] == [("flagged", "pdq"), ("clean", "clip")]
    assert json.loads(rows[0]["details"])["bank"] == "confirmed"
    assert db_rows("SELECT COUNT(*) FROM vault_entries")[0][0] == 1   # sealed before the 406
