"""Issue 14 end to end: videos and animations sampled frame by frame, appended data found and
its embedded images classified, through the real scanner (CLI) and the real upload server.

The model cannot be told "flag only this frame" with random weights, so the frame-level
claims use an injected classifier (a stand-in for the model only: colour in, decision out)
driven by the real Scanner, real decode pool, real SQLite; the CLI tests use the tiny model
with never-flag / always-flag concept sets."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests
from PIL import Image

from fsq.classify.rule import Decision
from fsq.ledger.db import connect, migrate
from fsq.pipeline import ScanConfig, Scanner
from fsq.sources.base import open_source
from tests.fixtures.model import concepts_file
from tests.test_media_video import RED, make_video
from tests.test_scan import scan_args

av = pytest.importorskip("av")
REPO = Path(__file__).resolve().parents[1]


def _png(colour=(20, 120, 200), size=(64, 64)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, colour).save(b, "PNG")
    return b.getvalue()


def _jpeg(colour=(200, 200, 40), size=(96, 64), **kw) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, colour).save(b, "JPEG", quality=90, **kw)
    return b.getvalue()


def _zip() -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("notes.txt", "x" * 500)
    return b.getvalue()


def _gif(n: int, red_at: int | None = None, fmt: str = "GIF") -> bytes:
    # Distinct frames (an encoder merges identical neighbours), never red but at ``red_at``.
    frames = [Image.new("RGB", (32, 32), RED if i == red_at else
                        ((i * 37) % 120, (i * 11) % 256, 90)) for i in range(n)]
    b = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(b, fmt, save_all=True, append_images=frames[1:], duration=20, loop=0,
                   **extra)
    assert Image.open(io.BytesIO(b.getvalue())).n_frames == n
    return b.getvalue()


class RedFrames:
    """A stand-in for the model: a frame 'flags' when it is mostly red. preprocess() gets the
    decoded RGB frame, exactly what the real classifier gets."""

    model_id = "test/red-frames"

    def __init__(self) -> None:
        self.frames_seen = 0

    def preprocess(self, img):
        r, g, b = img.convert("RGB").resize((1, 1)).getpixel((0, 0))
        return (r, g, b)

    def classify_items(self, items):
        out = []
        for frames in items:
            per, best = [], None
            for j, (r, g, b) in enumerate(frames):
                self.frames_seen += 1
                red = r > 150 and g < 90 and b < 90
                d = Decision(flagged=red, underage_count=int(red), lewd_fired=[],
                             fired=[{"text": "red"}] if red else [], adjustments=[],
                             scores={"red": r / 255}, adjusted={"red": r / 255},
                             severity="balanced", underage_max=r / 255)
                per.append({"index": j, "flagged": red, "fired": ["red"] if red else [],
                            "underage_max": round(r / 255, 5)})
                if best is None or d.rank_key() > best[0].rank_key():
                    best = (d, j)
            best[0].per_frame = per
            out.append(best)
        return out


def _scan_in_process(store: Path, clf, **cfg) -> dict[str, dict]:
    conn = connect("fsq.db")
    migrate(conn)
    from fsq.config import load_settings
    source = open_source(f"file://{store}", load_settings({}))
    scanner = Scanner(conn, source, ScanConfig(dry_run=True, **cfg),
                      classifier_factory=lambda: clf, db_path="fsq.db")
    s = scanner.run_pass()
    assert s.status == "finished"
    rows = {}
    for r in conn.execute("SELECT o.key, o.status, o.reason, v.method, v.details FROM objects o "
                          "LEFT JOIN verdicts v ON v.id = o.verdict_id"):
        rows[r["key"]] = {"status": r["status"], "reason": r["reason"], "method": r["method"],
                          "details": json.loads(r["details"] or "{}")}
    return rows


def test_videos_and_animations_frame_by_frame(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "odd.mp4").write_bytes(make_video(tmp_path / "a.mp4", seconds=6, odd_at=3.0))
    (store / "between.webm").write_bytes(make_video(tmp_path / "b.webm", fmt="webm",
                                                    codec="libvpx-vp9", seconds=5, odd_at=2.4))
    (store / "clean.mp4").write_bytes(make_video(tmp_path / "c.mp4", seconds=4))
    (store / "anim200.gif").write_bytes(_gif(200))
    (store / "anim200-red.gif").write_bytes(_gif(200, red_at=199))
    (store / "anim200.webp").write_bytes(_gif(200, red_at=120, fmt="WEBP"))
    clf = RedFrames()
    rows = _scan_in_process(store, clf)

    odd = rows["odd.mp4"]
    assert odd["status"] == "flagged" and odd["method"] == "clip"
    assert odd["details"]["frame_label"] == "3.00 s" and "(at 3.00 s)" in odd["reason"]
    times = odd["details"]["frame_times"]
    assert times[0] == 0.0 and max(times) >= 5.0            # the whole duration is covered
    fired = [f["label"] for f in odd["details"]["frames"] if f["flagged"]]
    assert fired == ["3.00 s"]

    between = rows["between.webm"]
    assert between["status"] == "flagged" and between["details"]["frame_label"] == "2.40 s"
    assert any("scene changes kept at 2.40 s" in n for n in between["details"]["decode_notes"])

    assert rows["clean.mp4"]["status"] == "clean"
    assert rows["clean.mp4"]["details"]["frame_times"] == [0.0, 1.0, 2.0, 3.0]

    sampled = rows["anim200.gif"]["details"]["frames_sampled"]
    assert rows["anim200.gif"]["status"] == "clean"
    assert len(sampled) == 32 and sampled[0] == 0 and sampled[-1] == 199   # spread over all
    assert rows["anim200-red.gif"]["status"] == "flagged"
    assert rows["anim200-red.gif"]["details"]["frame_label"] == "frame 199"
    webp = rows["anim200.webp"]["details"]["frames_sampled"]
    assert len(webp) == 32 and webp[0] == 0 and webp[-1] == 199
    # Frame 120 is not one of the 32 spread samples: a single odd frame between samples of
    # an animation is not guaranteed to be seen (unlike video, no scene detection here).
    assert (120 in webp) == (rows["anim200.webp"]["status"] == "flagged")
    # Frames are model batch items: far fewer model calls than frames (batch of 8 by default).
    assert clf.frames_seen >= 32 * 2 + len(times)


def test_appended_images_are_classified_and_flag_the_file(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    hidden = _png(RED)
    (store / "flower.jpg").write_bytes(_jpeg() + hidden)       # "embed csam.png inside it"
    (store / "plain.jpg").write_bytes(_jpeg())
    rows = _scan_in_process(store, RedFrames(), appended_data="record")
    f = rows["flower.jpg"]
    # The outer JPEG is yellow; only the embedded PNG is red: the file flags because of it.
    assert f["status"] == "flagged" and f["method"] == "clip"
    assert f["details"]["frame_label"].startswith("appended png at byte ")
    assert f["details"]["appended"]["trailing"] == len(hidden)
    assert rows["plain.jpg"]["status"] == "clean" and "appended" not in rows["plain.jpg"][
        "details"]


def _run_cli(args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSQ_")}
    env.update({"PYTHONPATH": str(REPO), **(env_extra or {})})
    p = subprocess.run([sys.executable, "-m", "fsq", *args], env=env, capture_output=True,
                       text=True, timeout=300)
    return p


def _objects(db="fsq.db"):
    conn = connect(db)
    return {r["key"]: r for r in conn.execute(
        "SELECT o.key, o.status, o.reason, v.method, v.details FROM objects o "
        "LEFT JOIN verdicts v ON v.id = o.verdict_id")}


def _exif_jpeg() -> bytes:
    """A camera-style JPEG: EXIF with an embedded thumbnail (Pillow writes the thumbnail
    inside APP1 when given exif bytes that carry one; we build the APP1 ourselves)."""
    import struct
    thumb = _jpeg((10, 10, 10), (32, 24))
    tiff = b"MM\x00*\x00\x00\x00\x08\x00\x00"
    payload = b"Exif\x00\x00" + tiff + thumb
    body = _jpeg((50, 160, 60), (120, 80))
    return body[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + body[2:]


def test_cli_polyglots_hostile_videos_and_the_setting(tmp_path, tiny_model):
    store = tmp_path / "store"
    store.mkdir()
    webp = io.BytesIO()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(webp, "WEBP")
    files = {
        "jpg+png.jpg": _jpeg() + _png(),
        "png+zip.png": _png() + _zip(),
        "jpg+jpg.jpg": _jpeg() + _jpeg((9, 9, 200)),
        "webp+data.webp": webp.getvalue() + b"PK\x03\x04" + os.urandom(300),
        "camera.jpg": _exif_jpeg(),
        "clip.mp4": make_video(tmp_path / "v.mp4", seconds=3),
        "cut.mp4": make_video(tmp_path / "w.mp4", seconds=3)[:1500],
    }
    # A video whose sample table claims 10^6 frames, and a WebM with a bogus segment size.
    big = bytearray(make_video(tmp_path / "x.mp4", seconds=2))
    i = big.find(b"stts")
    big[i + 12:i + 16] = (1_000_000).to_bytes(4, "big")
    files["million.mp4"] = bytes(big)
    webm = bytearray(make_video(tmp_path / "y.webm", fmt="webm", codec="libvpx-vp9", seconds=2))
    seg = webm.find(b"\x18\x53\x80\x67")
    webm[seg + 4:seg + 12] = b"\x01\x00\x00\x00\x7f\xff\xff\xff"
    files["bogus.webm"] = bytes(webm)
    for k, v in files.items():
        (store / k).write_bytes(v)

    never = concepts_file(tmp_path, 2.0)
    p = _run_cli(scan_args(store, tiny_model, never, "--dry-run"))
    assert p.returncode == 0, p.stderr
    rows = _objects()
    for key, kind in (("jpg+png.jpg", "png"), ("png+zip.png", "zip"), ("jpg+jpg.jpg", "jpeg"),
                      ("webp+data.webp", "zip")):
        r = rows[key]
        assert r["status"] == "flagged" and r["method"] == "container", (key, dict(r))
        assert r["reason"].startswith("suspicious: appended data (") and kind in r["reason"]
    d = json.loads(rows["jpg+png.jpg"]["details"])
    assert d["appended"]["trailing"] == len(_png())
    assert d["appended"]["classified"] == [{"kind": "png", "offset": len(_jpeg()),
                                            "frames": 1}]
    assert rows["camera.jpg"]["status"] == "clean", dict(rows["camera.jpg"])
    assert rows["clip.mp4"]["status"] == "clean"
    assert json.loads(rows["clip.mp4"]["details"])["frame_times"] == [0.0, 1.0, 2.0]
    assert rows["million.mp4"]["status"] == "unreadable"
    assert "declares 1000000 frames" in rows["million.mp4"]["reason"]
    assert rows["cut.mp4"]["status"] == "unreadable" and "video" in rows["cut.mp4"]["reason"]
    assert rows["bogus.webm"]["status"] in ("clean", "unreadable"), dict(rows["bogus.webm"])

    # FSQ_APPENDED_DATA=record: recorded beside a clean verdict, not flagged.
    p = _run_cli(scan_args(store, tiny_model, never, "--dry-run", "--rescan"),
                 {"FSQ_APPENDED_DATA": "record"})
    assert p.returncode == 0, p.stderr
    r = _objects()["png+zip.png"]
    assert r["status"] == "clean" and "FSQ_APPENDED_DATA=record" in r["reason"]


def test_cli_all_flag_video_records_its_frames(tmp_path, tiny_model):
    store = tmp_path / "store"
    store.mkdir()
    (store / "v.webm").write_bytes(make_video(tmp_path / "v.webm", fmt="webm",
                                              codec="libvpx-vp9", seconds=3))
    p = _run_cli(scan_args(store, tiny_model, concepts_file(tmp_path, -1.0), "--dry-run"))
    assert p.returncode == 0, p.stderr
    r = _objects()["v.webm"]
    d = json.loads(r["details"])
    assert r["status"] == "flagged" and r["method"] == "clip"
    assert [f["label"] for f in d["frames"]] == ["0.00 s", "1.00 s", "2.00 s"]
    assert all(f["flagged"] for f in d["frames"])


def test_serve_classifies_a_video_upload_before_answering(tmp_path, tiny_model, fsq):
    from tests.test_serve import PASS, serving, settings_for
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    assert fsq(["init", "--passphrase-file", str(pw)]).exit_code == 0
    video = make_video(tmp_path / "u.mp4", seconds=2)
    polyglot = _jpeg() + _png()
    settings = settings_for(tiny_model, concepts_file(tmp_path, 2.0))
    with serving(settings) as srv:
        url = f"http://127.0.0.1:{srv.port}/validate"
        r = requests.post(url, data=video, headers={"Content-Type": "video/mp4"}, timeout=60)
        assert r.status_code == 200, r.text
        r = requests.post(url, data=polyglot, headers={"Content-Type": "image/jpeg"},
                          timeout=60)
        assert r.status_code == 406, r.text          # appended data: sealed for review
    rows = _objects()
    kinds = {r["method"] for r in rows.values()}
    assert "container" in kinds
    vid = [r for r in rows.values() if r["status"] == "clean"]
    assert vid and json.loads(vid[0]["details"])["frame_times"] == [0.0, 1.0]


def test_appended_data_is_quarantined_under_the_default_policy(tmp_path, tiny_model):
    store = tmp_path / "store"
    store.mkdir()
    (store / "flower.jpg").write_bytes(_jpeg() + _zip())
    (store / "plain.jpg").write_bytes(_jpeg((1, 200, 1)))
    (tmp_path / "pw").write_text("media test passphrase\n")
    p = _run_cli(["init", "--passphrase-file", str(tmp_path / "pw")])
    assert p.returncode == 0, p.stderr
    p = _run_cli(scan_args(store, tiny_model, concepts_file(tmp_path, 2.0)))
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["flagged"] == 1 and s["quarantined"] == 1
    assert not (store / "flower.jpg").exists() and (store / "plain.jpg").exists()
    r = _objects()["flower.jpg"]
    assert r["status"] == "quarantined" and r["method"] == "container"
    p = _run_cli(["vault", "verify", "--json"])
    assert p.returncode == 0, p.stderr


_HUGE_VIDEO = """
import sys, av
with av.open(sys.argv[1], "w", format="mp4") as out:
    s = out.add_stream("libx264", rate=1, options={"preset": "ultrafast"})
    s.width = s.height = 15360
    s.pix_fmt = "yuv420p"
    f = av.VideoFrame(15360, 15360, "yuv420p")
    for p in f.planes:
        p.update(bytes(p.buffer_size))
    for p in s.encode(f):
        out.mux(p)
    for p in s.encode():
        out.mux(p)
"""


def test_huge_frame_video_is_unreadable_and_memory_stays_bounded(tmp_path, tiny_model):
    """A 15360x15360 H.264 video (236 MP per frame, ~0.7 MB on disk) beside a normal one:
    refused from its header by FSQ_MAX_PIXELS, the scan goes on, peak RSS stays bounded."""
    from tests.test_hostile_decode import _scan_proc
    store = tmp_path / "store"
    store.mkdir()
    # Made in a child process: the encoder needs ~1.4 GB, which pytest need not keep.
    subprocess.run([sys.executable, "-c", _HUGE_VIDEO, str(store / "huge.mp4")], check=True,
                   timeout=120)
    (store / "small.webm").write_bytes(make_video(tmp_path / "s.webm", fmt="webm",
                                                  codec="libvpx-vp9", seconds=2))
    rc, s, err, peak_mb, took = _scan_proc(store, tiny_model, concepts_file(tmp_path, 2.0), {})
    assert rc == 0, err
    assert s["unreadable"] == 1 and s["clean"] == 1
    r = _objects()["huge.mp4"]
    assert r["status"] == "unreadable"
    assert "limit: 15360x15360 frames (h264) exceed FSQ_MAX_PIXELS" in r["reason"]
    assert peak_mb < 1536, peak_mb
    print(f"peak RSS of the scan with a 15360x15360 video: {peak_mb:.0f} MB, {took:.1f} s")
